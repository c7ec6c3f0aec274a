using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models;

/// <summary>Cross-entropy over class scores with an ignore index, computed in Float32 whatever the logits' dtype.</summary>
public static class Losses
{
    /// <summary>The label that carries no loss and no metric (PyTorch's <c>cross_entropy</c> default, used by BERT/GPT training code for unmasked and padded positions).</summary>
    public const long IgnoreIndex = -100;

    /// <summary>
    /// Mean cross-entropy (natural log) of <paramref name="logits"/> [..., C] against <paramref name="labels"/> [...]
    /// over the positions whose label is not <see cref="IgnoreIndex"/>. The logits are cast to Float32 first, so
    /// BFloat16/Float16 logits from autocast give a Float32 loss. When every label is ignored the loss is 0 (with zero
    /// gradients) rather than PyTorch's NaN, so a batch without masked tokens cannot poison training.
    /// <para>
    /// <paramref name="labels"/> may instead be target distributions of the logits' shape [..., C] (any floating
    /// dtype), as label smoothing makes them: the loss is then −Σ_c q_c log softmax(x)_c averaged over the positions
    /// whose distribution is not all zero (an all-zero row marks an ignored position, where the hard label was −100).
    /// </para>
    /// </summary>
    /// <returns>A Float32 scalar.</returns>
    /// <exception cref="ArgumentException">The shapes do not match as [..., C] and [...] (or [..., C] for distributions), or hard labels are not Int64.</exception>
    public static Tensor CrossEntropy(Tensor logits, Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(labels);
        using var scope = torch.NewDisposeScope();
        if (labels.is_floating_point())
        {
            return SoftCrossEntropy(logits, labels).MoveToOuterDisposeScope();
        }

        (Tensor flatLogits, Tensor flatLabels) = Flatten(logits, labels);
        Tensor sum = F.cross_entropy(flatLogits, flatLabels, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum);
        Tensor count = flatLabels.ne(IgnoreIndex).sum().clamp_min(1).to(ScalarType.Float32);
        return (sum / count).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Checks that <paramref name="logits"/> is [..., C] and <paramref name="labels"/> is [...] (Int64) and returns them as
    /// Float32 [N, C] and Int64 [N] (owned by the dispose scope open at the call).
    /// </summary>
    /// <exception cref="ArgumentException">The shapes do not match, or labels are not Int64.</exception>
    public static (Tensor Logits, Tensor Labels) Flatten(Tensor logits, Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(labels);
        if (labels.dtype != ScalarType.Int64)
        {
            throw new ArgumentException($"labels must be Int64; got {labels.dtype}.", nameof(labels));
        }

        if (logits.Dimensions != labels.Dimensions + 1 || !logits.shape.Take((int)labels.Dimensions).SequenceEqual(labels.shape))
        {
            throw new ArgumentException(
                $"logits [{string.Join(", ", logits.shape)}] and labels [{string.Join(", ", labels.shape)}] do not match; expected logits [..., C] for labels [...].");
        }

        long classes = logits.shape[^1];
        return (logits.reshape(-1, classes).to(ScalarType.Float32), labels.reshape(-1));
    }

    private static Tensor SoftCrossEntropy(Tensor logits, Tensor targets)
    {
        if (!logits.shape.SequenceEqual(targets.shape))
        {
            throw new ArgumentException(
                $"logits [{string.Join(", ", logits.shape)}] and target distributions [{string.Join(", ", targets.shape)}] do not match; distributions must have the logits' shape [..., C].");
        }

        long classes = logits.shape[^1];
        Tensor flatLogits = logits.reshape(-1, classes).to(ScalarType.Float32);
        Tensor flatTargets = targets.reshape(-1, classes).to(ScalarType.Float32);
        Tensor sum = -(flatTargets * F.log_softmax(flatLogits, 1)).sum();
        Tensor count = flatTargets.ne(0).any(1).sum().clamp_min(1).to(ScalarType.Float32);
        return sum / count;
    }

    /// <summary>The batch's <c>labels</c> tensor.</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>labels</c>.</exception>
    internal static Tensor Labels(Batch batch) => batch["labels"];

    /// <summary>
    /// The number of hard labels in <paramref name="labels"/> that are not <see cref="IgnoreIndex"/>: the count over
    /// which <see cref="CrossEntropy"/> averages (a host read of a device scalar).
    /// </summary>
    /// <returns>A count ≥ 0.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="labels"/> is null.</exception>
    public static long CountLabeled(Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        using var scope = torch.NewDisposeScope();
        return labels.ne(IgnoreIndex).sum().item<long>();
    }
}

/// <summary>
/// Mean cross-entropy (nats per prediction) over every non-ignored label seen since the last reset: the sum of
/// per-position losses divided by their count, so batches weigh by their number of predictions (Composer's
/// <c>LanguageCrossEntropy</c>). Works for token logits [B, T, V] with labels [B, T] and class logits [B, C] with
/// labels [B]; labels −100 are ignored. Logits of any floating dtype are scored in Float32.
/// </summary>
public class CrossEntropyMetric : IReducibleMetric
{
    private double _sum;
    private long _count;

    /// <summary>Creates the metric, named <c>CrossEntropy</c>.</summary>
    public CrossEntropyMetric()
        : this("CrossEntropy")
    {
    }

    /// <summary>Creates the metric under another name (for derived metrics).</summary>
    protected CrossEntropyMetric(string name) => Name = name;

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">Logits and <c>labels</c> shapes do not match.</exception>
    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        (Tensor logits, Tensor labels) = Losses.Flatten(outputs, Losses.Labels(batch));
        _sum += F.cross_entropy(logits, labels, ignore_index: Losses.IgnoreIndex, reduction: nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
        _count += labels.ne(Losses.IgnoreIndex).sum().item<long>();
    }

    /// <inheritdoc/>
    public virtual double Compute() => _count == 0 ? double.NaN : _sum / _count;

    /// <inheritdoc/>
    public double[] GetState() => new[] { _sum, _count };

    /// <inheritdoc/>
    public void SetState(double[] state)
    {
        if (state is null || state.Length != 2)
        {
            throw new ArgumentException($"Expected 2 state values, got {state?.Length.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null"}.", nameof(state));
        }
        (_sum, _count) = (state[0], (long)state[1]);
    }

    /// <inheritdoc/>
    public void Reset()
    {
        _sum = 0;
        _count = 0;
    }
}

/// <summary>Perplexity: exp of the mean cross-entropy per prediction (Composer's <c>LanguagePerplexity</c>); labels −100 ignored.</summary>
public sealed class PerplexityMetric : CrossEntropyMetric
{
    /// <summary>Creates the metric, named <c>Perplexity</c>.</summary>
    public PerplexityMetric()
        : base("Perplexity")
    {
    }

    /// <inheritdoc/>
    public override double Compute() => Math.Exp(base.Compute());
}

/// <summary>
/// Accuracy of arg-max predictions over non-ignored labels: correct / counted since the last reset. For class logits
/// [B, C] with labels [B] (named <c>Accuracy</c>) or token logits [B, T, V] with labels [B, T] where −100 marks
/// positions to skip (see <see cref="MaskedAccuracy"/>).
/// </summary>
public class ClassificationAccuracy : IReducibleMetric
{
    private long _correct;
    private long _count;

    /// <summary>Creates the metric, named <c>Accuracy</c>.</summary>
    public ClassificationAccuracy()
        : this("Accuracy")
    {
    }

    /// <summary>Creates the metric under another name (for derived metrics).</summary>
    protected ClassificationAccuracy(string name) => Name = name;

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">Logits and <c>labels</c> shapes do not match.</exception>
    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        (Tensor logits, Tensor labels) = Losses.Flatten(outputs, Losses.Labels(batch));
        Tensor valid = labels.ne(Losses.IgnoreIndex);
        _correct += logits.argmax(-1).eq(labels).logical_and(valid).sum().item<long>();
        _count += valid.sum().item<long>();
    }

    /// <inheritdoc/>
    public double Compute() => _count == 0 ? double.NaN : (double)_correct / _count;

    /// <inheritdoc/>
    public double[] GetState() => new double[] { _correct, _count };

    /// <inheritdoc/>
    public void SetState(double[] state)
    {
        if (state is null || state.Length != 2)
        {
            throw new ArgumentException($"Expected 2 state values, got {state?.Length.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null"}.", nameof(state));
        }
        (_correct, _count) = ((long)state[0], (long)state[1]);
    }

    /// <inheritdoc/>
    public void Reset()
    {
        _correct = 0;
        _count = 0;
    }
}

/// <summary>Masked-token accuracy (Composer's <c>MaskedAccuracy</c>, ignore index −100): the accuracy of MLM predictions at the selected positions only.</summary>
public sealed class MaskedAccuracy : ClassificationAccuracy
{
    /// <summary>Creates the metric, named <c>MaskedAccuracy</c>.</summary>
    public MaskedAccuracy()
        : base("MaskedAccuracy")
    {
    }
}

/// <summary>
/// F1 score of one class against the rest (binary F1 when there are two classes): 2·TP / (2·TP + FP + FN) of arg-max
/// predictions over everything since the last reset, for class logits [B, C] and labels [B] (labels −100 ignored).
/// 0 when there is no true or predicted positive (scikit-learn's <c>zero_division=0</c>); NaN before any update.
/// </summary>
public sealed class BinaryF1Score : IReducibleMetric
{
    private long _tp;
    private long _fp;
    private long _fn;
    private long _count;

    /// <summary>Creates the metric, named <c>F1</c>.</summary>
    /// <param name="positiveClass">The class index counted as positive.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="positiveClass"/> is negative.</exception>
    public BinaryF1Score(long positiveClass = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(positiveClass);
        PositiveClass = positiveClass;
    }

    /// <summary>The positive class index.</summary>
    public long PositiveClass { get; }

    /// <inheritdoc/>
    public string Name => "F1";

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">Shapes do not match, or the positive class is not below the number of classes C.</exception>
    public void Update(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        (Tensor logits, Tensor labels) = Losses.Flatten(outputs, Losses.Labels(batch));
        if (PositiveClass >= logits.shape[1])
        {
            throw new ArgumentException($"The positive class {PositiveClass} is not below the number of classes {logits.shape[1]}.", nameof(outputs));
        }

        Tensor valid = labels.ne(Losses.IgnoreIndex);
        Tensor predictedPositive = logits.argmax(-1).eq(PositiveClass).logical_and(valid);
        Tensor actualPositive = labels.eq(PositiveClass);
        _tp += predictedPositive.logical_and(actualPositive).sum().item<long>();
        _fp += predictedPositive.logical_and(actualPositive.logical_not()).sum().item<long>();
        _fn += predictedPositive.logical_not().logical_and(actualPositive).sum().item<long>();
        _count += valid.sum().item<long>();
    }

    /// <inheritdoc/>
    public double[] GetState() => new double[] { _tp, _fp, _fn, _count };

    /// <inheritdoc/>
    public void SetState(double[] state)
    {
        if (state is null || state.Length != 4)
        {
            throw new ArgumentException($"Expected 4 state values, got {state?.Length.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null"}.", nameof(state));
        }
        (_tp, _fp, _fn, _count) = ((long)state[0], (long)state[1], (long)state[2], (long)state[3]);
    }

    /// <inheritdoc/>
    public double Compute()
    {
        if (_count == 0)
        {
            return double.NaN;
        }

        long denominator = 2 * _tp + _fp + _fn;
        return denominator == 0 ? 0.0 : 2.0 * _tp / denominator;
    }

    /// <inheritdoc/>
    public void Reset()
    {
        _tp = 0;
        _fp = 0;
        _fn = 0;
        _count = 0;
    }
}
