using ComposerSharp.Events;

namespace ComposerSharp.Core;

/// <summary>
/// A destination for metrics and hyperparameters (Composer's <c>LoggerDestination</c>): console, progress bar,
/// metrics file, TensorBoard. It is also a callback, so it sees every event (at Init before other callbacks,
/// otherwise after them).
/// </summary>
public interface ILoggerDestination : ICallback
{
    /// <summary>Records scalar metrics (name → value, e.g. <c>loss/train/total</c>) at optimizer step <paramref name="step"/> (batches).</summary>
    void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step);

    /// <summary>Records run hyperparameters (name → value).</summary>
    void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters);
}

/// <summary>
/// Fans metrics out to every <see cref="ILoggerDestination"/> of a run (Composer's <c>composer.loggers.Logger</c>).
/// Algorithms and callbacks receive it in <see cref="IAlgorithm.Apply"/> and <see cref="ICallback.RunEvent"/>.
/// </summary>
public sealed class Logger
{
    private readonly State _state;

    /// <summary>Creates a logger over <paramref name="destinations"/> that stamps metrics with <paramref name="state"/>'s batch count.</summary>
    public Logger(State state, IEnumerable<ILoggerDestination>? destinations = null)
    {
        _state = state ?? throw new ArgumentNullException(nameof(state));
        Destinations = (destinations ?? Array.Empty<ILoggerDestination>()).ToList();
    }

    /// <summary>The destinations, in the order they receive events.</summary>
    public IReadOnlyList<ILoggerDestination> Destinations { get; }

    /// <summary>Sends metrics to every destination, at step <paramref name="step"/> or, when null, the current batch count.</summary>
    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long? step = null)
    {
        long s = step ?? _state.Timestamp.Batch;
        foreach (ILoggerDestination d in Destinations)
        {
            d.LogMetrics(metrics, s);
        }
    }

    /// <summary>Sends one metric to every destination.</summary>
    public void LogMetric(string name, double value, long? step = null) =>
        LogMetrics(new Dictionary<string, double> { [name] = value }, step);

    /// <summary>Sends hyperparameters to every destination.</summary>
    public void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
        foreach (ILoggerDestination d in Destinations)
        {
            d.LogHyperparameters(hyperparameters);
        }
    }
}
