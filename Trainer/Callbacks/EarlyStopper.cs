using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Stops training when a metric has not improved for <see cref="Patience"/> (Composer's <c>EarlyStopper</c>).
/// After each evaluation of <see cref="DataloaderLabel"/> (EvalEnd), or at EpochEnd (and BatchEnd when the patience
/// is in batches) for the <c>train</c> label, the value of <c>metrics/&lt;label&gt;/&lt;monitor&gt;</c> becomes the
/// new best when it is better by the comparison and differs from the best by more than <see cref="MinDelta"/>; when
/// the epochs (or batches) since the best exceed the patience, <see cref="State.StopTraining"/> ends the run after
/// the current batch.
/// </summary>
public sealed class EarlyStopper : Callback, IStatefulCallback
{
    private readonly Func<double, double, bool> _better;
    private double? _best;
    private long _bestEpoch;
    private long _bestBatch;

    /// <summary>Creates the stopper.</summary>
    /// <param name="monitor">Metric name, e.g. <c>Accuracy</c> or <c>CrossEntropy</c>.</param>
    /// <param name="dataloaderLabel">Label whose metric is watched: <c>eval</c>, an evaluator's label, or <c>train</c>.</param>
    /// <param name="comp"><c>gt</c>/<c>greater</c> or <c>lt</c>/<c>less</c>; by Composer's name rule when null (see <see cref="MetricComparison"/>).</param>
    /// <param name="minDelta">Smallest change (absolute value) that counts as an improvement.</param>
    /// <param name="patience">Epochs (<c>ep</c>, or an integer) or batches (<c>ba</c>) without improvement before stopping; 1 epoch by default.</param>
    /// <exception cref="ArgumentException">A patience not in <c>ep</c> or <c>ba</c>, or an unknown comparison.</exception>
    public EarlyStopper(string monitor, string dataloaderLabel, string? comp = null, double minDelta = 0.0, Time? patience = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(monitor);
        ArgumentException.ThrowIfNullOrWhiteSpace(dataloaderLabel);
        Monitor = monitor;
        DataloaderLabel = dataloaderLabel;
        MinDelta = Math.Abs(minDelta);
        Patience = patience ?? Time.FromEpoch(1);
        if (Patience.Unit is not (TimeUnit.Epoch or TimeUnit.Batch))
        {
            throw new ArgumentException($"Patience '{Patience}' must be in epochs ('ep') or batches ('ba').", nameof(patience));
        }

        _better = MetricComparison.For(monitor, comp);
    }

    /// <summary>The monitored metric's name.</summary>
    public string Monitor { get; }

    /// <summary>The dataloader label whose metric is monitored.</summary>
    public string DataloaderLabel { get; }

    /// <summary>Smallest improvement that counts.</summary>
    public double MinDelta { get; }

    /// <summary>How long to wait for an improvement.</summary>
    public Time Patience { get; }

    /// <summary>The best value seen, or null before the first.</summary>
    public double? Best => _best;

    /// <summary>Whether this stopper has called <see cref="State.StopTraining"/>.</summary>
    public bool Stopped { get; private set; }

    /// <inheritdoc/>
    public string StateKey => $"composersharp.early_stopper/{DataloaderLabel}/{Monitor}";

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger)
    {
        if (state.DataloaderLabel == DataloaderLabel)
        {
            Update(state);
        }
    }

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger)
    {
        if (state.DataloaderLabel == DataloaderLabel)
        {
            Update(state);
        }
    }

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        if (Patience.Unit == TimeUnit.Batch && state.DataloaderLabel == DataloaderLabel)
        {
            Update(state);
        }
    }

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, object?> StateDict() => new Dictionary<string, object?>
    {
        ["best"] = _best,
        ["best_epoch"] = _bestEpoch,
        ["best_batch"] = _bestBatch,
    };

    /// <inheritdoc/>
    public void LoadStateDict(IReadOnlyDictionary<string, object?> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        _best = state.TryGetValue("best", out object? b) && b is not null ? Convert.ToDouble(b, CultureInfo.InvariantCulture) : null;
        _bestEpoch = state.TryGetValue("best_epoch", out object? e) ? Convert.ToInt64(e, CultureInfo.InvariantCulture) : 0;
        _bestBatch = state.TryGetValue("best_batch", out object? ba) ? Convert.ToInt64(ba, CultureInfo.InvariantCulture) : 0;
    }

    private void Update(State state)
    {
        double value = MetricComparison.Read(state, Monitor, DataloaderLabel);
        if (_best is not { } best || (_better(value, best) && Math.Abs(value - best) > MinDelta))
        {
            _best = value;
            _bestEpoch = state.Timestamp.Epoch;
            _bestBatch = state.Timestamp.Batch;
        }

        long since = Patience.Unit == TimeUnit.Epoch ? state.Timestamp.Epoch - _bestEpoch : state.Timestamp.Batch - _bestBatch;
        if (since > Patience.Value)
        {
            Stopped = true;
            state.StopTraining();
        }
    }
}
