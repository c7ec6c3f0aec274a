using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Base class for logger destinations (Composer's <c>LoggerDestination</c>): a <see cref="Callback"/> that also
/// receives metrics and hyperparameters; both are no-ops unless overridden.
/// </summary>
public abstract class LoggerDestination : Callback, ILoggerDestination
{
    /// <inheritdoc/>
    public virtual void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
    }

    /// <inheritdoc/>
    public virtual void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
    }
}
