using System.Globalization;
using System.Text;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Writes metrics through Microsoft.Extensions.Logging (Composer's <c>ConsoleLogger</c>, with an
/// <see cref="ILogger"/> instead of a stream, so the host decides where lines go). Metrics logged during a batch
/// are gathered and written as one line at BatchEnd when the batch count is a multiple of the interval (or at
/// EpochEnd for an interval in epochs); evaluation metrics are written at EvalEnd and hyperparameters when they
/// are logged. Lines look like <c>[train][epoch=1][batch=16/32]</c> (batch within the epoch) <c>: loss/train/total: 0.4312, time/batch: 15</c>.
/// </summary>
public sealed class ConsoleLogger : LoggerDestination
{
    private readonly ILogger _logger;
    private readonly SortedDictionary<string, double> _pending = new(StringComparer.Ordinal);

    /// <summary>Creates the logger.</summary>
    /// <param name="logger">Where lines go (information level).</param>
    /// <param name="logInterval">Every this many batches (<c>ba</c>) or epochs (<c>ep</c>, or an integer); 1 batch by default.</param>
    /// <exception cref="ArgumentException">An interval not in <c>ba</c> or <c>ep</c>, or zero.</exception>
    public ConsoleLogger(ILogger logger, Time? logInterval = null)
    {
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
        LogInterval = logInterval ?? Time.FromBatch(1);
        if (LogInterval.Unit is not (TimeUnit.Batch or TimeUnit.Epoch) || LogInterval.Value < 1)
        {
            throw new ArgumentException($"Console log interval '{LogInterval}' must be a positive number of batches ('ba') or epochs ('ep').", nameof(logInterval));
        }
    }

    /// <summary>How often training metrics are written.</summary>
    public Time LogInterval { get; }

    /// <inheritdoc/>
    public override void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string name, double value) in metrics)
        {
            _pending[name] = value;
        }
    }

    /// <inheritdoc/>
    public override void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
        var sb = new StringBuilder("Hyperparameters: ");
        sb.AppendJoin(", ", hyperparameters.Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key}={kv.Value}")));
        _logger.LogInformation("{Line}", sb.ToString());
    }

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        if (LogInterval.Unit == TimeUnit.Batch && state.Timestamp.Batch % (long)LogInterval.Value == 0)
        {
            Flush(state, state.Timestamp.BatchInEpoch, state.TrainDataloader?.BatchesPerEpoch);
        }

        _pending.Clear();
    }

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger)
    {
        if (LogInterval.Unit == TimeUnit.Epoch && state.Timestamp.Epoch % (long)LogInterval.Value == 0)
        {
            Flush(state, state.TrainDataloader?.BatchesPerEpoch ?? state.Timestamp.Batch, state.TrainDataloader?.BatchesPerEpoch);
        }

        _pending.Clear();
    }

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => Flush(state, state.EvalTimestamp.Batch, state.DataloaderLength);

    /// <inheritdoc/>
    public override void FitEnd(State state, Logger logger) => Flush(state, state.Timestamp.Batch, null);

    private void Flush(State state, long batch, long? batchesPerEpoch)
    {
        if (_pending.Count == 0)
        {
            return;
        }

        var sb = new StringBuilder();
        string label = state.DataloaderLabel ?? Trainer.TrainLabel;
        sb.Append(CultureInfo.InvariantCulture, $"[{label}][epoch={state.Timestamp.Epoch}][batch={batch}");
        if (batchesPerEpoch is { } total)
        {
            sb.Append(CultureInfo.InvariantCulture, $"/{total}");
        }

        sb.Append("]: ");
        sb.AppendJoin(", ", _pending.Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key}: {kv.Value:G6}")));
        _logger.LogInformation("{Line}", sb.ToString());
        _pending.Clear();
    }
}
