using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Estimates the time left in training (Composer's <c>RuntimeEstimator</c>) and logs it as
/// <c>time/remaining_estimate</c> in <see cref="TimeUnit"/> at every BatchEnd after the first
/// <see cref="SkipBatches"/> (which include start-up costs): remaining = (training seconds since the first counted
/// batch, minus evaluation seconds) / (fraction of the max duration done since then) × (fraction left), plus, for
/// each evaluation label, its mean duration times the evaluations still expected at the observed frequency.
/// </summary>
public sealed class RuntimeEstimator : Callback
{
    private readonly TimeProvider _clock;
    private readonly double _divider;
    private readonly Dictionary<string, List<double>> _evalSecondsPerLabel = new();
    private readonly Dictionary<string, double> _evalFrequencyPerLabel = new();
    private int _batchesLeftToSkip;
    private bool _enabled = true;
    private long? _startTicks;
    private double _startFraction;
    private long? _trainBatchesPerEpoch;
    private double _totalEvalSeconds;

    /// <summary>Creates the estimator.</summary>
    /// <param name="skipBatches">Batches to ignore at the start (≥ 0).</param>
    /// <param name="timeUnit"><c>seconds</c>, <c>minutes</c>, <c>hours</c> (default) or <c>days</c>.</param>
    /// <param name="clock">Source of wall-clock time; the system clock by default.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="skipBatches"/> is negative.</exception>
    /// <exception cref="ArgumentException">An unknown time unit.</exception>
    public RuntimeEstimator(int skipBatches = 1, string timeUnit = "hours", TimeProvider? clock = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(skipBatches);
        _batchesLeftToSkip = skipBatches;
        SkipBatches = skipBatches;
        TimeUnit = timeUnit;
        _divider = WallClockUnit.SecondsPer(timeUnit, nameof(timeUnit));
        _clock = clock ?? TimeProvider.System;
    }

    /// <summary>Batches ignored at the start.</summary>
    public int SkipBatches { get; }

    /// <summary>Unit of the estimate.</summary>
    public string TimeUnit { get; }

    /// <summary>The last estimate logged, in <see cref="TimeUnit"/>, or null before the first.</summary>
    public double? LastEstimate { get; private set; }

    /// <inheritdoc/>
    public override void Init(State state, Logger logger) =>
        logger.LogHyperparameters(new Dictionary<string, object?> { ["time/remaining_estimate_unit"] = TimeUnit });

    /// <inheritdoc/>
    public override void BatchStart(State state, Logger logger)
    {
        if (!_enabled || _startTicks is not null || _batchesLeftToSkip > 0)
        {
            return;
        }

        _trainBatchesPerEpoch = state.TrainDataloader?.BatchesPerEpoch;
        double? fraction = ElapsedFraction(state);
        if (fraction is null)
        {
            _enabled = false;
            return;
        }

        _startTicks = _clock.GetTimestamp();
        _startFraction = fraction.Value;
    }

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        if (!_enabled)
        {
            return;
        }

        if (_batchesLeftToSkip > 0)
        {
            _batchesLeftToSkip--;
            return;
        }

        if (_startTicks is not { } start || ElapsedFraction(state) is not { } fraction || fraction <= _startFraction)
        {
            return;
        }

        double elapsed = _clock.GetElapsedTime(start).TotalSeconds - _totalEvalSeconds;
        double remaining = elapsed / (fraction - _startFraction) * (1 - fraction);
        foreach ((string label, List<double> seconds) in _evalSecondsPerLabel)
        {
            double frequency = _evalFrequencyPerLabel[label];
            if (frequency <= 0)
            {
                continue;
            }

            double mean = seconds.Count > 1 ? seconds.Skip(1).Average() : seconds.Average();
            double expected = 1 / frequency * (1 - _startFraction);
            remaining += mean * (expected - seconds.Count);
        }

        LastEstimate = remaining / _divider;
        logger.LogMetric("time/remaining_estimate", LastEstimate.Value);
    }

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger)
    {
        if (!_enabled || _startTicks is null || state.DataloaderLabel is not { } label)
        {
            return;
        }

        double seconds = state.EvalTimestamp.TotalWallClock.TotalSeconds;
        _totalEvalSeconds += seconds;
        if (!_evalSecondsPerLabel.TryGetValue(label, out List<double>? list))
        {
            _evalSecondsPerLabel[label] = list = new List<double>();
        }

        list.Add(seconds);
        double done = (ElapsedFraction(state) ?? _startFraction) - _startFraction;
        _evalFrequencyPerLabel[label] = done / list.Count;
    }

    /// <summary>Fraction of the max duration done; for epoch budgets measured in batches, as Composer does.</summary>
    private double? ElapsedFraction(State state)
    {
        if (state.MaxDuration is not { } max)
        {
            return null;
        }

        if (max.Unit == Core.TimeUnit.Epoch)
        {
            Timestamp ts = state.Timestamp;
            if (ts.Epoch >= 1)
            {
                double batchesPerEpoch = (double)(ts.Batch - ts.BatchInEpoch) / ts.Epoch;
                return ts.Batch / (max.Value * batchesPerEpoch);
            }

            if (_trainBatchesPerEpoch is { } perEpoch)
            {
                return ts.Batch / (max.Value * perEpoch);
            }
        }

        return state.ElapsedDuration?.Value;
    }
}
