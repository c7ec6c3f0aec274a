using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>The ways <see cref="GradientClipping"/> bounds the gradients (Composer's <c>clipping_type</c> strings).</summary>
public enum ClippingType
{
    /// <summary><c>norm</c>: scales all gradients together so that their global L2 norm is at most the threshold (PyTorch's <c>clip_grad_norm_</c>).</summary>
    Norm,

    /// <summary><c>value</c>: clamps every gradient element to [−threshold, threshold] (PyTorch's <c>clip_grad_value_</c>).</summary>
    Value,

    /// <summary><c>adaptive</c>: adaptive gradient clipping (AGC, Brock et al. 2021): each unit's gradient norm is bounded by threshold × that unit's weight norm.</summary>
    Adaptive,
}

/// <summary>
/// Composer's GradientClipping: at <see cref="Event.AfterTrainBatch"/> (the gradients of the whole batch are
/// accumulated and, under <c>amp_fp16</c>, already divided by the loss scale) bounds the model's gradients before the
/// optimizer step, by global norm, by value, or adaptively (AGC). Method card: Algorithms/GradientClipping/README.md.
/// Source: Composer's composer/algorithms/gradient_clipping; AGC from Brock, De, Smith and Simonyan, "High-Performance
/// Large-Scale Image Recognition Without Normalization", ICML 2021.
/// </summary>
public sealed class GradientClipping : Algorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="ClippingType"/> (<c>norm</c>, <c>value</c> or <c>adaptive</c>).</summary>
    public const string ClippingTypeKey = "clipping_type";

    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="ClippingThreshold"/>.</summary>
    public const string ClippingThresholdKey = "clipping_threshold";

    /// <summary>Creates the algorithm (Composer's <c>GradientClipping(clipping_type, clipping_threshold)</c>).</summary>
    /// <param name="clippingType">How to clip: norm (default here; Composer has no default), value or adaptive.</param>
    /// <param name="clippingThreshold">
    /// The bound: the maximum global L2 norm (norm), the maximum absolute element (value), or the maximum ratio of a
    /// unit's gradient norm to its weight norm (adaptive). Finite and &gt; 0; 1.0 by default.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="clippingThreshold"/> is not finite and positive, or <paramref name="clippingType"/> is not a defined value.</exception>
    public GradientClipping(ClippingType clippingType = ClippingType.Norm, double clippingThreshold = 1.0)
    {
        if (!Enum.IsDefined(clippingType))
        {
            throw new ArgumentOutOfRangeException(nameof(clippingType), clippingType, "clipping_type must be norm, value or adaptive.");
        }

        if (!double.IsFinite(clippingThreshold) || clippingThreshold <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(clippingThreshold), clippingThreshold, "clipping_threshold must be a finite number > 0.");
        }

        ClippingType = clippingType;
        ClippingThreshold = clippingThreshold;
    }

    /// <summary>How the gradients are clipped.</summary>
    public ClippingType ClippingType { get; }

    /// <summary>The clipping bound (see the constructor).</summary>
    public double ClippingThreshold { get; }

    /// <summary><c>gradient_clipping</c>.</summary>
    public override string Name => "gradient_clipping";

    /// <summary>True at <see cref="Event.AfterTrainBatch"/>.</summary>
    public override bool Match(Event e, State state) => e == Event.AfterTrainBatch;

    /// <summary>Clips the gradients of <c>state.Model</c>'s parameters in place. Returns null.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> is null.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ApplyGradientClipping(state.Model.parameters(), ClippingType, ClippingThreshold);
        return null;
    }

    /// <summary><c>clipping_type</c> (snake_case name) and <c>clipping_threshold</c> (round-trip invariant format).</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [ClippingTypeKey] = ToSnakeCase(ClippingType.ToString()),
        [ClippingThresholdKey] = ClippingThreshold.ToString("R", CultureInfo.InvariantCulture),
    });

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Name}(clipping_type={ToSnakeCase(ClippingType.ToString())}, clipping_threshold={ClippingThreshold:R})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or a value that does not parse.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A threshold that is not finite and positive.</exception>
    public static GradientClipping FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, "gradient_clipping", ClippingTypeKey, ClippingThresholdKey);
        return new GradientClipping(
            reader.Enum(ClippingTypeKey, ClippingType.Norm),
            reader.Double(ClippingThresholdKey, 1.0));
    }

    /// <summary>
    /// The functional form (Composer's <c>apply_gradient_clipping</c>): clips the gradients of
    /// <paramref name="parameters"/> in place; parameters without a gradient are skipped.
    /// </summary>
    /// <param name="parameters">The parameters whose <c>.grad</c> to clip (any float dtype and shape).</param>
    /// <param name="clippingType">
    /// Norm: every gradient is multiplied by min(1, threshold / (‖g‖₂ + 1e-6)), ‖g‖₂ the L2 norm of all gradients
    /// together (PyTorch's <c>clip_grad_norm_</c>). Value: each element is clamped to [−threshold, threshold].
    /// Adaptive: see <see cref="AdaptiveClippingCoefficient"/>.
    /// </param>
    /// <param name="clippingThreshold">The bound (&gt; 0).</param>
    /// <exception cref="ArgumentNullException"><paramref name="parameters"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="clippingThreshold"/> is not finite and positive, or an undefined <paramref name="clippingType"/>.</exception>
    public static void ApplyGradientClipping(IEnumerable<Parameter> parameters, ClippingType clippingType, double clippingThreshold)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!double.IsFinite(clippingThreshold) || clippingThreshold <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(clippingThreshold), clippingThreshold, "clipping_threshold must be a finite number > 0.");
        }

        List<Parameter> withGrad = parameters.Where(p => p.grad is not null).ToList();
        if (withGrad.Count == 0)
        {
            return;
        }

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        switch (clippingType)
        {
            case ClippingType.Norm:
                torch.nn.utils.clip_grad_norm_(withGrad, clippingThreshold);
                break;
            case ClippingType.Value:
                foreach (Parameter p in withGrad)
                {
                    p.grad!.clamp_(-clippingThreshold, clippingThreshold);
                }

                break;
            case ClippingType.Adaptive:
                foreach (Parameter p in withGrad)
                {
                    Tensor grad = p.grad!;
                    grad.mul_(AdaptiveClippingCoefficient(p.detach(), grad, clippingThreshold));
                }

                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(clippingType), clippingType, "clipping_type must be norm, value or adaptive.");
        }
    }

    /// <summary>
    /// AGC's coefficient for one parameter (Composer's <c>_get_clipped_gradient_coeff</c>): per unit,
    /// min(1, threshold · ‖W‖ / ‖G‖), with NaN (0/0) taken as 1. Units are the whole tensor for 0-d and 1-d
    /// parameters (biases, norm gains) and each output row (dimension 0) otherwise, the norm taken over the other
    /// dimensions (Brock et al.'s unit-wise norm). As in Composer, and unlike the paper's max(‖W‖, 1e-3), a unit
    /// whose weights are all zero gets coefficient 0 (its gradient is dropped).
    /// </summary>
    /// <param name="weights">The parameter's values, any shape.</param>
    /// <param name="grad">Its gradient, the same shape.</param>
    /// <param name="clippingThreshold">The largest allowed ratio ‖G‖ / ‖W‖.</param>
    /// <returns>A tensor broadcastable to <paramref name="grad"/>: a scalar for ndim ≤ 1, else [out, 1, …, 1]; the gradient's dtype.</returns>
    public static Tensor AdaptiveClippingCoefficient(Tensor weights, Tensor grad, double clippingThreshold)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(grad);
        Tensor wNorm = UnitwiseNorm(weights);
        Tensor gNorm = UnitwiseNorm(grad);
        return wNorm.mul(clippingThreshold).div_(gNorm).nan_to_num_(nan: 1.0).clamp_(max: 1.0).to(grad.dtype);
    }

    /// <summary>Brock et al.'s unit-wise L2 norm: over everything for ndim ≤ 1, else over dimensions 1… with the dimensions kept.</summary>
    private static Tensor UnitwiseNorm(Tensor t) =>
        t.ndim <= 1
            ? torch.linalg.vector_norm(t, 2)
            : torch.linalg.vector_norm(t, 2, Enumerable.Range(1, (int)t.ndim - 1).Select(i => (long)i).ToArray(), keepdim: true);
}
