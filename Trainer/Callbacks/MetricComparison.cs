using ComposerSharp.Core;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// How stopping callbacks compare a monitored metric, with Composer's rule: explicit <c>gt</c>/<c>greater</c> or
/// <c>lt</c>/<c>less</c>, and by default "less is better" for metrics whose name contains <c>loss</c>,
/// <c>error</c> or <c>perplexity</c> and "greater is better" otherwise.
/// </summary>
public static class MetricComparison
{
    /// <summary>The comparison <c>(value, reference) → value is better</c> for <paramref name="monitor"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="comp"/> is not null, gt, greater, lt or less.</exception>
    public static Func<double, double, bool> For(string monitor, string? comp)
    {
        ArgumentNullException.ThrowIfNull(monitor);
        if (comp is null)
        {
            string lower = monitor.ToLowerInvariant();
            bool lessIsBetter = lower.Contains("loss", StringComparison.Ordinal) || lower.Contains("error", StringComparison.Ordinal) || lower.Contains("perplexity", StringComparison.Ordinal);
            return lessIsBetter ? Less : Greater;
        }

        return comp.ToLowerInvariant() switch
        {
            "gt" or "greater" => Greater,
            "lt" or "less" => Less,
            _ => throw new ArgumentException($"Unrecognized comparison '{comp}'; use 'gt', 'greater', 'lt' or 'less'.", nameof(comp)),
        };
    }

    /// <summary>The monitored value of <c>metrics/&lt;label&gt;/&lt;monitor&gt;</c> from <see cref="Core.State.Metrics"/>.</summary>
    /// <exception cref="InvalidOperationException">The metric has not been computed.</exception>
    internal static double Read(Core.State state, string monitor, string label)
    {
        string key = $"metrics/{label}/{monitor}";
        if (!state.Metrics.TryGetValue(key, out double value))
        {
            throw new InvalidOperationException(
                $"Couldn't find the metric '{monitor}' for dataloader label '{label}' ({key}); check that the label is 'train', 'eval' or an evaluator's label and that the model provides the metric.");
        }

        return value;
    }

    private static bool Greater(double a, double b) => a > b;

    private static bool Less(double a, double b) => a < b;
}
