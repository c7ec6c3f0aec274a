using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// An extension point of <see cref="TransformerBackbone"/>: a source of additive attention biases that encode
/// positions, put in place of the learned position embedding by
/// <see cref="TransformerBackbone.ReplacePositionEmbedding"/>. The backbone builds the bias once per forward and
/// passes it to the self-attention of every block, instead of its boolean padding/causal mask. Algorithms supply the
/// implementation (e.g. ALiBi's linear biases, <c>AlibiAttentionBias</c> in ComposerSharp.Algorithms), so the model
/// code does not know the algorithm; Composer's surgery reaches the same end by replacing Hugging Face attention
/// modules (composer/algorithms/alibi).
/// </summary>
public interface IAttentionBiasProvider
{
    /// <summary>
    /// The additive bias for queries at positions <c>queryStart … queryStart + queryLength − 1</c> over keys at
    /// <c>0 … keyLength − 1</c>, with −∞ wherever a query may not attend (a padded key; with <paramref name="causal"/>,
    /// a later key). A query must always be allowed to see its own position, so no row is all −∞.
    /// </summary>
    /// <param name="heads">Number of attention heads of the model.</param>
    /// <param name="queryStart">Position of the first query (the number of cached positions; 0 without a cache).</param>
    /// <param name="queryLength">Number of queries T_q.</param>
    /// <param name="keyLength">Number of keys T_k.</param>
    /// <param name="causal">Hide keys after each query.</param>
    /// <param name="keyMask">Null, or [B, T_k] (Int64 or Bool), non-zero for real tokens.</param>
    /// <param name="device">Device of the result.</param>
    /// <returns>A floating tensor broadcastable to [B, heads, T_q, T_k] (e.g. Float32 [1 or B, heads, T_q, T_k]); the attention casts it to the query dtype.</returns>
    /// <exception cref="ArgumentException">The provider does not fit <paramref name="heads"/>, or <paramref name="keyMask"/> has another length than <paramref name="keyLength"/>.</exception>
    Tensor Build(int heads, long queryStart, long queryLength, long keyLength, bool causal, Tensor? keyMask, Device device);
}
