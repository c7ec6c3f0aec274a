using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training;

/// <summary>
/// An evaluation dataloader with its label, the metrics to compute on it and how often to run it (Composer's
/// <c>composer.core.Evaluator</c>). Metrics are logged as <c>metrics/&lt;Label&gt;/&lt;Name&gt;</c>.
/// </summary>
public sealed class Evaluator
{
    /// <summary>Creates an evaluator.</summary>
    /// <param name="label">Label used in metric names and <see cref="State.DataloaderLabel"/>, e.g. <c>eval</c>.</param>
    /// <param name="dataloader">The evaluation batches (epoch 0 of the loader is used every time).</param>
    /// <param name="metricNames">Names of the model's eval metrics to compute; all of them when null.</param>
    /// <param name="evalInterval">How often to run during <c>Fit</c>; the Trainer's <c>evalInterval</c> when null.</param>
    /// <param name="subsetNumBatches">Evaluate only the first this many batches; the whole loader when null.</param>
    /// <exception cref="ArgumentException">An empty label, or a non-positive <paramref name="subsetNumBatches"/>.</exception>
    public Evaluator(string label, IDataLoader dataloader, IEnumerable<string>? metricNames = null, Time? evalInterval = null, long? subsetNumBatches = null)
    {
        if (string.IsNullOrWhiteSpace(label))
        {
            throw new ArgumentException("An evaluator needs a non-empty label such as \"eval\".", nameof(label));
        }

        if (subsetNumBatches is <= 0)
        {
            throw new ArgumentException($"subsetNumBatches must be at least 1 (got {subsetNumBatches}); use null for the whole loader.", nameof(subsetNumBatches));
        }

        Label = label;
        Dataloader = dataloader ?? throw new ArgumentNullException(nameof(dataloader));
        MetricNames = metricNames?.ToArray();
        EvalInterval = evalInterval;
        SubsetNumBatches = subsetNumBatches;
    }

    /// <summary>The label.</summary>
    public string Label { get; }

    /// <summary>The batches.</summary>
    public IDataLoader Dataloader { get; }

    /// <summary>Metric names to compute, or null for all of the model's eval metrics.</summary>
    public IReadOnlyList<string>? MetricNames { get; }

    /// <summary>How often to run during <c>Fit</c>, or null for the Trainer's interval.</summary>
    public Time? EvalInterval { get; }

    /// <summary>Maximum batches per evaluation, or null for all.</summary>
    public long? SubsetNumBatches { get; }
}
