namespace ComposerSharp.Models;

/// <summary>
/// An extension point of <see cref="TransformerBlock"/> (<see cref="TransformerBlock.ResidualPolicy"/>): decides, in
/// each forward, whether the whole block is skipped (its input returned) and by what factor its two residual
/// branches (attention and feed-forward) are scaled before they are added. Algorithms supply the implementation
/// (e.g. StochasticDepth's layer drop, <c>LayerDrop</c> in ComposerSharp.Algorithms), so the block does not know the
/// algorithm; Composer's StochasticDepth reaches the same end by replacing the target modules with stochastic ones
/// (composer/algorithms/stochastic_depth). No policy: the block always runs, branches unscaled.
/// </summary>
public interface IResidualBranchPolicy
{
    /// <summary>
    /// Whether this forward skips the block. Called once per training or evaluation forward (not by the
    /// key/value-cached forward), inside the block's dispose scope, so it may draw from libtorch's generator.
    /// </summary>
    /// <param name="training">The block's training flag.</param>
    /// <returns>True: the block returns its input unchanged.</returns>
    bool SkipBlock(bool training);

    /// <summary>The factor on both residual branches when the block runs: 1 leaves them unchanged (and adds no multiplication).</summary>
    /// <param name="training">The block's training flag; the key/value-cached forward passes false.</param>
    /// <returns>A finite factor, usually in [0, 1].</returns>
    double BranchScale(bool training);
}
