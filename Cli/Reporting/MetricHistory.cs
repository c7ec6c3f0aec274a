using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Cli.Reporting;

/// <summary>One logged scalar.</summary>
/// <param name="Step">Optimizer step (batches) at which it was logged.</param>
/// <param name="Name">Metric name, e.g. <c>loss/train/total</c>.</param>
/// <param name="Value">The value.</param>
public sealed record MetricPoint(long Step, string Name, double Value);

/// <summary>
/// A logger destination that keeps, for the CLI's loss plot and summary, the last value of every metric and a
/// bounded series per metric: at most <see cref="MaxPointsPerSeries"/> points, downsampled as the run grows (when a
/// series is full every other point is dropped and from then on only every second one is kept, and so on), so a
/// run of a million steps holds the same few kilobytes per metric as a short one.
/// </summary>
public sealed class MetricHistory : ILoggerDestination
{
    private readonly Dictionary<string, KeptSeries> _series = new(StringComparer.Ordinal);
    private readonly SortedDictionary<string, double> _latest = new(StringComparer.Ordinal);

    /// <summary>Creates a history.</summary>
    /// <param name="maxPointsPerSeries">Points kept per metric (at least 2).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxPointsPerSeries"/> is below 2.</exception>
    public MetricHistory(int maxPointsPerSeries = 2048)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPointsPerSeries, 2);
        MaxPointsPerSeries = maxPointsPerSeries;
    }

    /// <summary>The most points kept per metric.</summary>
    public int MaxPointsPerSeries { get; }

    /// <summary>The names of every metric logged, in the order first seen.</summary>
    public IReadOnlyList<string> Names => _series.Keys.ToList();

    /// <summary>The kept (step, value) points of <paramref name="name"/>, in step order; empty when never logged.</summary>
    public IReadOnlyList<MetricPoint> Series(string name) => _series.TryGetValue(name, out KeptSeries? s) ? s.Points : Array.Empty<MetricPoint>();

    /// <summary>The last value of every metric.</summary>
    public IReadOnlyDictionary<string, double> Latest() => new SortedDictionary<string, double>(_latest, StringComparer.Ordinal);

    /// <summary>
    /// Adds the points of a <c>metrics.jsonl</c> written by earlier processes of a run resumed at batch
    /// <paramref name="resumedBatch"/>: those the checkpoint contains
    /// (<see cref="ComposerSharp.Training.Loggers.JsonLinesLogger.LoggedBeforeResumeAt"/>), so the plot shows the
    /// whole history. Lines that are not metric objects are skipped; a missing file adds nothing.
    /// </summary>
    /// <param name="path">The JSON-lines file (<c>{"step": N, "metrics": {...}}</c> per line).</param>
    /// <param name="resumedBatch">The batch the run resumed at.</param>
    public void LoadEarlier(string path, long resumedBatch)
    {
        if (!File.Exists(path))
        {
            return;
        }

        foreach (string line in File.ReadLines(path))
        {
            try
            {
                using var doc = System.Text.Json.JsonDocument.Parse(line);
                System.Text.Json.JsonElement root = doc.RootElement;
                if (!root.TryGetProperty("step", out var stepElement) || !stepElement.TryGetInt64(out long step) ||
                    !root.TryGetProperty("metrics", out var metrics) || metrics.ValueKind != System.Text.Json.JsonValueKind.Object ||
                    !ComposerSharp.Training.Loggers.JsonLinesLogger.LoggedBeforeResumeAt(step, metrics.EnumerateObject().Select(m => m.Name), resumedBatch))
                {
                    continue;
                }

                var values = new Dictionary<string, double>();
                foreach (var m in metrics.EnumerateObject())
                {
                    if (m.Value.ValueKind == System.Text.Json.JsonValueKind.Number)
                    {
                        values[m.Name] = m.Value.GetDouble();
                    }
                }

                LogMetrics(values, step);
            }
            catch (System.Text.Json.JsonException)
            {
                // A line cut short by a crash: skipped.
            }
        }
    }

    /// <inheritdoc/>
    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string name, double value) in metrics)
        {
            _latest[name] = value;
            if (!_series.TryGetValue(name, out KeptSeries? s))
            {
                _series[name] = s = new KeptSeries();
            }

            s.Add(new MetricPoint(step, name, value), MaxPointsPerSeries);
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

    /// <summary>One metric's kept points: every <c>stride</c>-th point logged.</summary>
    private sealed class KeptSeries
    {
        private readonly List<MetricPoint> _points = new();
        private long _seen;
        private long _stride = 1;

        public IReadOnlyList<MetricPoint> Points => _points;

        public void Add(MetricPoint point, int capacity)
        {
            if (_seen++ % _stride != 0)
            {
                return;
            }

            _points.Add(point);
            if (_points.Count <= capacity)
            {
                return;
            }

            // Keep the points at even positions (logged at multiples of 2·stride) and double the stride.
            int kept = 0;
            for (int i = 0; i < _points.Count; i += 2)
            {
                _points[kept++] = _points[i];
            }

            _points.RemoveRange(kept, _points.Count - kept);
            _stride *= 2;
        }
    }
}
