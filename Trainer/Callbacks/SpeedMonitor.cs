using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Logs training throughput over a sliding window of batches (Composer's <c>SpeedMonitor</c>). At each BatchEnd,
/// once <see cref="WindowSize"/> batches have been seen: <c>throughput/batches_per_sec</c>,
/// <c>throughput/samples_per_sec</c> and, when the batches carry tokens, <c>throughput/tokens_per_sec</c>, each the
/// count over the window divided by the training wall-clock time over the window (evaluation excluded); plus
/// <c>throughput/device/…</c> copies (one device). Every batch: <c>time/batch_wct</c> (seconds the batch took) and
/// <c>time/train</c>, <c>time/val</c>, <c>time/total</c> in <see cref="TimeUnit"/>.
/// </summary>
public sealed class SpeedMonitor : Callback, IStatefulCallback
{
    private readonly Queue<(long Samples, long Tokens, double Seconds)> _history = new();
    private readonly double _divider;
    private double _totalEvalSeconds;

    /// <summary>Creates the monitor.</summary>
    /// <param name="windowSize">Batches in the rolling window (≥ 1).</param>
    /// <param name="timeUnit"><c>seconds</c>, <c>minutes</c>, <c>hours</c> (default) or <c>days</c> for the <c>time/*</c> totals.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="windowSize"/> is below 1.</exception>
    /// <exception cref="ArgumentException">An unknown time unit.</exception>
    public SpeedMonitor(int windowSize = 100, string timeUnit = "hours")
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(windowSize, 1);
        WindowSize = windowSize;
        TimeUnit = timeUnit;
        _divider = WallClockUnit.SecondsPer(timeUnit, nameof(timeUnit));
    }

    /// <summary>Batches in the window.</summary>
    public int WindowSize { get; }

    /// <summary>Unit of the <c>time/*</c> totals.</summary>
    public string TimeUnit { get; }

    /// <inheritdoc/>
    public string StateKey => "composersharp.speed_monitor";

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        Timestamp ts = state.Timestamp;
        _history.Enqueue((ts.Sample, ts.Token, ts.TotalWallClock.TotalSeconds));
        if (_history.Count > WindowSize + 1)
        {
            _history.Dequeue();
        }

        if (_history.Count == WindowSize + 1)
        {
            (long firstSamples, long firstTokens, double firstSeconds) = _history.Peek();
            double elapsed = ts.TotalWallClock.TotalSeconds - firstSeconds;
            if (elapsed > 0)
            {
                double batchesPerSec = WindowSize / elapsed;
                double samplesPerSec = (ts.Sample - firstSamples) / elapsed;
                var metrics = new Dictionary<string, double>
                {
                    ["throughput/batches_per_sec"] = batchesPerSec,
                    ["throughput/samples_per_sec"] = samplesPerSec,
                    ["throughput/device/batches_per_sec"] = batchesPerSec,
                    ["throughput/device/samples_per_sec"] = samplesPerSec,
                };
                long tokens = ts.Token - firstTokens;
                if (tokens > 0)
                {
                    metrics["throughput/tokens_per_sec"] = tokens / elapsed;
                    metrics["throughput/device/tokens_per_sec"] = tokens / elapsed;
                }

                logger.LogMetrics(metrics);
            }
        }

        double train = ts.TotalWallClock.TotalSeconds;
        logger.LogMetrics(new Dictionary<string, double>
        {
            ["time/batch_wct"] = ts.BatchWallClock.TotalSeconds,
            ["time/train"] = train / _divider,
            ["time/val"] = _totalEvalSeconds / _divider,
            ["time/total"] = (train + _totalEvalSeconds) / _divider,
        });
    }

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => _totalEvalSeconds += state.EvalTimestamp.TotalWallClock.TotalSeconds;

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, object?> StateDict() => new Dictionary<string, object?> { ["total_eval_wct"] = _totalEvalSeconds };

    /// <inheritdoc/>
    public void LoadStateDict(IReadOnlyDictionary<string, object?> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (!state.TryGetValue("total_eval_wct", out object? value) || value is null)
        {
            throw new ArgumentException("The SpeedMonitor state has no 'total_eval_wct'.", nameof(state));
        }

        _totalEvalSeconds = Convert.ToDouble(value, CultureInfo.InvariantCulture);
    }
}
