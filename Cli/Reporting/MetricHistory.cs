using ComposerSharp.Events;

namespace ComposerSharp.Cli.Reporting;

/// <summary>One logged scalar.</summary>
/// <param name="Step">Optimizer step (batches) at which it was logged.</param>
/// <param name="Name">Metric name, e.g. <c>loss/train/total</c>.</param>
/// <param name="Value">The value.</param>
public sealed record MetricPoint(long Step, string Name, double Value);

/// <summary>
/// A logger destination that keeps every logged scalar in memory (a few bytes each), so that the CLI can draw the
/// loss curves and print the final metrics when the run ends.
/// </summary>
public sealed class MetricHistory : ILoggerDestination
{
    private readonly List<MetricPoint> _points = new();

    /// <summary>Every point logged, in order.</summary>
    public IReadOnlyList<MetricPoint> Points => _points;

    /// <summary>The (step, value) series of <paramref name="name"/>.</summary>
    public IReadOnlyList<MetricPoint> Series(string name) => _points.Where(p => p.Name == name).ToList();

    /// <summary>The last value of every metric.</summary>
    public IReadOnlyDictionary<string, double> Latest()
    {
        var latest = new SortedDictionary<string, double>(StringComparer.Ordinal);
        foreach (MetricPoint p in _points)
        {
            latest[p.Name] = p.Value;
        }

        return latest;
    }

    /// <inheritdoc/>
    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string name, double value) in metrics)
        {
            _points.Add(new MetricPoint(step, name, value));
        }
    }

    /// <inheritdoc/>
    public void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
    }

    /// <inheritdoc/>
    public void RunEvent(Event e, State state, Logger logger)
    {
    }

    /// <inheritdoc/>
    public void Close(State state, Logger logger)
    {
    }
}
