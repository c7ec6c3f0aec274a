using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// ALiBi's attention biases (Press, Smith and Lewis 2021, "Train Short, Test Long: Attention with Linear Biases
/// Enables Input Length Extrapolation", §3): instead of adding position embeddings, head h adds
/// <c>−m_h·|i − j|</c> to the score of query i and key j, with head slopes <c>m_h</c> a geometric sequence.
/// Used by <see cref="AlibiAttentionBias"/>, which <see cref="Functional.ApplyAlibi"/> puts in each <c>TransformerBackbone</c>; the layout of the bias follows Composer's
/// composer/algorithms/alibi/attention_surgery_functions/utils.py (<c>register_alibi</c>).
/// </summary>
public static class AlibiBias
{
    /// <summary>
    /// The head slopes. For n a power of two: <c>m_h = 2^(−8h/n)</c>, h = 1 … n (the paper's 1/2, 1/4, …, 1/256 for
    /// 8 heads). Otherwise the slopes of the largest power of two p &lt; n, followed by every other slope of 2p
    /// (the odd-numbered ones) until there are n, as the paper's reference code does.
    /// </summary>
    /// <param name="heads">Number of attention heads, at least 1.</param>
    /// <returns>n slopes in (0, 1), head 0 first.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="heads"/> is below 1.</exception>
    public static double[] Slopes(int heads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        if ((heads & (heads - 1)) == 0)
        {
            return Enumerable.Range(1, heads).Select(h => Math.Pow(2.0, -8.0 * h / heads)).ToArray();
        }

        int p = 1 << (int)Math.Floor(Math.Log2(heads));
        double[] extra = Slopes(2 * p);
        return Slopes(p).Concat(extra.Where((_, i) => i % 2 == 0).Take(heads - p)).ToArray();
    }

    /// <summary>
    /// The additive attention bias for queries at positions <c>queryStart … queryStart + queryLength − 1</c> over keys at
    /// <c>0 … keyLength − 1</c>: <c>−m_h·|i − j|</c>, and −∞ where a query may not attend (a padded key; with
    /// <paramref name="causal"/>, a later key). A query always sees its own position, so no row is all −∞.
    /// </summary>
    /// <param name="slopes">The head slopes (see <see cref="Slopes"/>).</param>
    /// <param name="queryStart">Position of the first query (earlier positions cached; 0 otherwise).</param>
    /// <param name="queryLength">Number of queries T_q.</param>
    /// <param name="keyLength">Number of keys T_k.</param>
    /// <param name="causal">Hide keys after the query.</param>
    /// <param name="keyMask">Null, or [B, T_k] non-zero for real tokens.</param>
    /// <param name="device">Device of the result.</param>
    /// <returns>Float32 [1 or B, heads, T_q, T_k].</returns>
    /// <exception cref="ArgumentException">No slopes, or a key mask of another length.</exception>
    public static Tensor Build(IReadOnlyList<double> slopes, long queryStart, long queryLength, long keyLength, bool causal, Tensor? keyMask, Device device)
    {
        ArgumentNullException.ThrowIfNull(slopes);
        if (slopes.Count == 0)
        {
            throw new ArgumentException("ALiBi needs at least one head slope.", nameof(slopes));
        }

        if (keyMask is not null && (keyMask.Dimensions != 2 || keyMask.shape[1] != keyLength))
        {
            throw new ArgumentException($"The key mask must be [B, {keyLength}]; got [{string.Join(", ", keyMask.shape)}].", nameof(keyMask));
        }

        using var scope = torch.NewDisposeScope();
        Tensor q = torch.arange(queryStart, queryStart + queryLength, dtype: ScalarType.Int64, device: device).unsqueeze(1);
        Tensor k = torch.arange(keyLength, dtype: ScalarType.Int64, device: device).unsqueeze(0);
        Tensor distance = (q - k).abs().to(ScalarType.Float32);                          // [T_q, T_k]
        Tensor m = torch.tensor(slopes.ToArray(), dtype: ScalarType.Float32, device: device).view(-1, 1, 1);
        Tensor bias = (-m * distance).unsqueeze(0);                                     // [1, heads, T_q, T_k]

        Tensor allowed = torch.ones(1, 1, queryLength, keyLength, dtype: ScalarType.Bool, device: device);
        if (keyMask is not null)
        {
            allowed = keyMask.ne(0).view(keyMask.shape[0], 1, 1, keyLength);
        }

        if (causal)
        {
            allowed = allowed.logical_and(k.le(q));
        }

        if (keyMask is not null || causal)
        {
            allowed = allowed.logical_or(k.eq(q));
            Tensor hidden = torch.zeros(allowed.shape, dtype: ScalarType.Float32, device: device).masked_fill(allowed.logical_not(), double.NegativeInfinity);
            bias = bias + hidden; // broadcasts [1, heads, ...] and [B, 1, ...] to [B, heads, T_q, T_k]
        }

        return bias.MoveToOuterDisposeScope();
    }
}
