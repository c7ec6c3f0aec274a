using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Group normalisation that runs in the autocast low-precision dtype (Composer's <c>LPGroupNorm</c>,
/// composer/algorithms/low_precision_groupnorm). Input <c>[N, C, *]</c> (at least 3 dimensions, as TorchSharp's
/// <c>GroupNorm</c> requires), output the same shape. Same dtype rule and parameter sharing as <see cref="LPLayerNorm"/>.
/// </summary>
/// <remarks>
/// Unlike LayerNorm, libtorch's fused CPU low-precision <c>group_norm</c> is kept for training: measured at
/// [8,320,32,32] with 32 groups, its weight and bias gradients are within 0.4 % (BFloat16) and 0.05 % (Float16) of
/// a float64 reference (<c>tests/Algorithms/LowPrecisionNormGradientTests.cs</c> guards it). The likely
/// reason, not read in libtorch's source: the per-(sample, channel) sums are Float32, and the weight and bias
/// gradients then add only N of them.
/// </remarks>
public sealed class LPGroupNorm : LowPrecisionNorm
{
    private readonly Func<Tensor, Tensor?, Tensor?, Tensor> _norm;

    /// <summary>Creates the low-precision module from <paramref name="original"/>, taking over its parameters.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="original"/> is null.</exception>
    public LPGroupNorm(GroupNorm original)
        : base(nameof(LPGroupNorm), original, original?.weight, original?.bias)
    {
        num_groups = original!.num_groups;
        eps = original.eps;
        affine = original.affine;
        _norm = (x, w, b) => F.group_norm(x, num_groups, w, b, eps);
    }

    /// <summary>Number of channel groups.</summary>
    public long num_groups { get; }

    /// <summary>The value added to the variance for numerical stability.</summary>
    public double eps { get; }

    /// <summary>Whether the original had learnable per-channel affine parameters.</summary>
    public bool affine { get; }

    /// <summary>Normalises <paramref name="input"/> of shape <c>[N, C, *]</c>.</summary>
    /// <exception cref="ArgumentException"><paramref name="input"/> has fewer than 3 dimensions.</exception>
    public override Tensor forward(Tensor input)
    {
        if (input.Dimensions < 3)
        {
            throw new ArgumentException($"Invalid number of dimensions for GroupNorm argument: {input.Dimensions}; expected at least 3 ([N, C, *]).", nameof(input));
        }

        return RunLowPrecision(input, _norm);
    }
}
