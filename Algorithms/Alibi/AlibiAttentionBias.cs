using ComposerSharp.Models;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// ALiBi's linear attention biases as the <see cref="IAttentionBiasProvider"/> of a <see cref="TransformerBackbone"/>
/// (Press, Smith and Lewis 2021): head h adds <c>−m_h·|i − j|</c> to the score of query i and key j, with the
/// padding and causal masks folded in as −∞ (see <see cref="AlibiBias.Build"/>). <see cref="Functional.ApplyAlibi"/>
/// puts one in each backbone in place of its position embedding. Source: Composer's composer/algorithms/alibi.
/// </summary>
public sealed class AlibiAttentionBias : IAttentionBiasProvider
{
    private readonly double[] _slopes;

    /// <summary>Creates the provider for a model with <paramref name="heads"/> attention heads (slopes from <see cref="AlibiBias.Slopes"/>).</summary>
    /// <param name="heads">Number of attention heads, at least 1.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="heads"/> is below 1.</exception>
    public AlibiAttentionBias(int heads) => _slopes = AlibiBias.Slopes(heads);

    /// <summary>The head slopes m_h, head 0 first (the paper's 1/2, 1/4, …, 1/256 for 8 heads).</summary>
    public IReadOnlyList<double> Slopes => _slopes;

    /// <summary>ALiBi's bias (<see cref="AlibiBias.Build"/>): Float32 [1 or B, heads, T_q, T_k].</summary>
    /// <exception cref="ArgumentException"><paramref name="heads"/> is not the number of slopes, or a key mask of another length.</exception>
    public Tensor Build(int heads, long queryStart, long queryLength, long keyLength, bool causal, Tensor? keyMask, Device device)
    {
        if (heads != _slopes.Length)
        {
            throw new ArgumentException($"The ALiBi biases were made for {_slopes.Length} heads but the model has {heads}.", nameof(heads));
        }

        return AlibiBias.Build(_slopes, queryStart, queryLength, keyLength, causal, keyMask, device);
    }
}
