using ComposerSharp.Core;
using ComposerSharp.Models;

namespace ComposerSharp.Training;

/// <summary>Metric compute-and-log, shared by training (<see cref="Fit"/>) and evaluation (<see cref="Eval"/>).</summary>
public sealed partial class Trainer
{
    /// <summary>
    /// Computes <paramref name="metrics"/> over every rank (their states summed, then each rank's own restored),
    /// records each value in <see cref="State.Metrics"/> as <c>metrics/&lt;label&gt;/&lt;Name&gt;</c>, with the entries
    /// of an <see cref="IMetricBreakdown"/> as <c>metrics/&lt;label&gt;/&lt;key&gt;</c> right after its value, and logs
    /// them in one call. Without metrics nothing is computed or logged.
    /// </summary>
    /// <returns>What was computed and logged, key → value.</returns>
    private Dictionary<string, double> ComputeAndLogMetrics(string label, IReadOnlyList<IMetric> metrics)
    {
        var computed = new Dictionary<string, double>();
        if (metrics.Count == 0)
        {
            return computed;
        }

        using (_dataParallel.SynchronizeMetrics(metrics)) // Distributed: metric states summed over ranks, then restored
        {
            foreach (IMetric metric in metrics)
            {
                Record($"metrics/{label}/{metric.Name}", metric.Compute());
                if (metric is IMetricBreakdown breakdown)
                {
                    foreach ((string part, double partValue) in breakdown.Breakdown())
                    {
                        Record($"metrics/{label}/{part}", partValue);
                    }
                }
            }
        }

        Logger.LogMetrics(computed);
        return computed;

        void Record(string key, double value)
        {
            computed[key] = value;
            State.Metrics[key] = value;
        }
    }
}
