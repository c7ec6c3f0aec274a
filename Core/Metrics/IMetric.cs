using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// A metric accumulated over batches (the role torchmetrics' <c>Metric</c> plays in Composer). Implementations keep
/// their running sums as managed numbers, never as tensors, so accumulating over an epoch holds no native memory.
/// </summary>
public interface IMetric
{
    /// <summary>Name used in logs, e.g. <c>Accuracy</c> (logged as <c>metrics/eval/Accuracy</c>).</summary>
    string Name { get; }

    /// <summary>Adds one batch: <paramref name="outputs"/> are the model's outputs for <paramref name="batch"/>.</summary>
    void Update(Tensor outputs, Batch batch);

    /// <summary>The value over everything added since the last <see cref="Reset"/>; NaN when nothing was added.</summary>
    double Compute();

    /// <summary>Forgets everything added.</summary>
    void Reset();
}
