using ComposerSharp.Models;
using TorchSharp;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Stochastic depth / layer drop (Huang et al. 2016; Fan et al. 2019) at the block level, Composer's
/// <c>stochastic_method: block</c>, as a <see cref="TransformerBlock"/>'s <see cref="TransformerBlock.ResidualPolicy"/>:
/// in training mode the whole block is skipped (the input is returned) with probability <see cref="DropRate"/>,
/// drawn from libtorch's global generator once per forward; in eval mode (and in the key/value-cached forward) both
/// residual branches are scaled by 1 − rate, the expected value in training. Rate 0 changes nothing and draws no
/// random number. Set by <see cref="Functional.ApplyStochasticDepth"/>. Source: Composer's
/// composer/algorithms/stochastic_depth.
/// </summary>
public sealed class LayerDrop : IResidualBranchPolicy
{
    /// <summary>Creates the policy.</summary>
    /// <param name="dropRate">Probability in [0, 1] that a training forward skips the block.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dropRate"/> is outside [0, 1] (or NaN).</exception>
    public LayerDrop(double dropRate)
    {
        if (!(dropRate >= 0 && dropRate <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropRate), dropRate, "The layer drop rate must be a probability in [0, 1].");
        }

        DropRate = dropRate;
    }

    /// <summary>The probability that a training forward skips the block.</summary>
    public double DropRate { get; }

    /// <summary>
    /// The drop rate of <paramref name="block"/>: its <see cref="LayerDrop"/>'s <see cref="DropRate"/>, or 0 when its
    /// <see cref="TransformerBlock.ResidualPolicy"/> is another policy or none.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="block"/> is null.</exception>
    public static double RateOf(TransformerBlock block)
    {
        ArgumentNullException.ThrowIfNull(block);
        return block.ResidualPolicy is LayerDrop drop ? drop.DropRate : 0.0;
    }

    /// <summary>In training, true with probability <see cref="DropRate"/> (one <c>torch.rand(1)</c> draw when the rate is above 0); in eval, false.</summary>
    public bool SkipBlock(bool training) => training && DropRate > 0 && torch.rand(1).item<float>() < DropRate;

    /// <summary>1 in training; 1 − <see cref="DropRate"/> in evaluation.</summary>
    public double BranchScale(bool training) => training ? 1.0 : 1.0 - DropRate;
}
