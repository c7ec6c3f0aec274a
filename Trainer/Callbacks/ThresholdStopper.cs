using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Stops training once a metric passes a threshold (Composer's <c>ThresholdStopper</c>): after each evaluation of
/// <see cref="DataloaderLabel"/> (EvalEnd), at EpochEnd for the <c>train</c> label, and at BatchEnd when
/// <see cref="StopOnBatch"/> is set, <see cref="State.StopTraining"/> is called if
/// <c>comp(metrics/&lt;label&gt;/&lt;monitor&gt;, threshold)</c> holds.
/// </summary>
public sealed class ThresholdStopper : Callback
{
    private readonly Func<double, double, bool> _passes;

    /// <summary>Creates the stopper.</summary>
    /// <param name="monitor">Metric name, e.g. <c>Accuracy</c>.</param>
    /// <param name="dataloaderLabel">Label whose metric is watched.</param>
    /// <param name="threshold">The value to pass.</param>
    /// <param name="comp"><c>gt</c>/<c>greater</c> or <c>lt</c>/<c>less</c>; Composer's name rule when null.</param>
    /// <param name="stopOnBatch">Also check at every BatchEnd (for the <c>train</c> label).</param>
    /// <exception cref="ArgumentException">An unknown comparison or a non-finite threshold.</exception>
    public ThresholdStopper(string monitor, string dataloaderLabel, double threshold, string? comp = null, bool stopOnBatch = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(monitor);
        ArgumentException.ThrowIfNullOrWhiteSpace(dataloaderLabel);
        if (!double.IsFinite(threshold))
        {
            throw new ArgumentException($"The threshold must be a finite number (got {threshold}).", nameof(threshold));
        }

        Monitor = monitor;
        DataloaderLabel = dataloaderLabel;
        Threshold = threshold;
        StopOnBatch = stopOnBatch;
        _passes = MetricComparison.For(monitor, comp);
    }

    /// <summary>The monitored metric's name.</summary>
    public string Monitor { get; }

    /// <summary>The dataloader label whose metric is monitored.</summary>
    public string DataloaderLabel { get; }

    /// <summary>The threshold.</summary>
    public double Threshold { get; }

    /// <summary>Whether the metric is also checked at every BatchEnd.</summary>
    public bool StopOnBatch { get; }

    /// <summary>Whether this stopper has called <see cref="State.StopTraining"/>.</summary>
    public bool Stopped { get; private set; }

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => CheckIfLabel(state);

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger) => CheckIfLabel(state);

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        if (StopOnBatch)
        {
            CheckIfLabel(state);
        }
    }

    private void CheckIfLabel(State state)
    {
        if (state.DataloaderLabel != DataloaderLabel)
        {
            return;
        }

        if (_passes(MetricComparison.Read(state, Monitor, DataloaderLabel), Threshold))
        {
            Stopped = true;
            state.StopTraining();
        }
    }
}
