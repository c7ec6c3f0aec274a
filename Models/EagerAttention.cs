using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// Scaled dot-product attention written out as separate ops, softmax(q·kᵀ/√d + mask)·v with dropout on the
/// attention weights: the "eager" attention of Hugging Face's <c>BertSelfAttention</c> and of PyTorch before
/// <c>scaled_dot_product_attention</c> existed. <see cref="MultiHeadSelfAttention"/> uses it instead of libtorch's
/// <c>scaled_dot_product_attention</c> for BFloat16 on the CPU when gradients are recorded (training under
/// amp_bf16; see <see cref="Preferred"/>), because there libtorch 2.10 is slow: with dropout its CPU flash kernel does not apply and the math
/// fallback converts q, k and v to Float32 and runs every op of the attention in Float32; without dropout the flash
/// kernel's backward is slow at BERT's shapes. Measured by the benchmark part <c>peer-modules</c> (AMD EPYC, 2
/// threads, [16, 4, 128, 64], dropout 0.1): forward+backward 42 ms with <c>scaled_dot_product_attention</c>, 18 ms
/// written out (benchmarks/README.md, change log). Numerics: the scores and the attention weights are BFloat16
/// (each rounded once, as under PyTorch eager autocast), where the math fallback keeps them in Float32; the tests
/// compare both paths with a float64 reference. Reads whether the mask leaves a query no key to the host (a
/// reduction over the mask; CPU only, so no device synchronisation).
/// </summary>
public static class EagerAttention
{
    /// <summary>
    /// Whether <see cref="Attend"/> is the faster choice: a BFloat16 query on the CPU with gradient recording on (or in the no-grad first pass of an activation-checkpointed unit, whose recomputation must take the same path), and
    /// either attention dropout (libtorch's flash kernel does not take dropout, and its math fallback materialises
    /// the [B, heads, T, S] scores too, in Float32) or at most 512 keys (no dropout: the flash kernel would avoid the
    /// T × S scores, whose memory matters only for long sequences, but its backward is slower at BERT's lengths).
    /// Float16 keeps <c>scaled_dot_product_attention</c> (its Float32 math avoids Float16 score overflow), and so do
    /// Float32 (measured no faster written out) and inference (the flash kernel's forward is the faster one).
    /// </summary>
    /// <param name="query">[B, heads, T, head_dim].</param>
    /// <param name="keyLength">S, the number of keys.</param>
    /// <param name="dropout">The attention dropout probability of this call (0 in eval mode).</param>
    public static bool Preferred(Tensor query, long keyLength, double dropout)
    {
        ArgumentNullException.ThrowIfNull(query);
        return query.dtype == ScalarType.BFloat16 && query.device_type == DeviceType.CPU && (torch.is_grad_enabled() || ComposerSharp.Core.ActivationCheckpoint.IsFirstPass) && (dropout > 0 || keyLength <= 512);
    }

    /// <summary>Attention of queries over keys and values.</summary>
    /// <param name="query">[B, heads, T, head_dim].</param>
    /// <param name="key">[B, heads, S, head_dim], the dtype of the query.</param>
    /// <param name="value">[B, heads, S, head_dim], the dtype of the query.</param>
    /// <param name="mask">
    /// Null; Bool broadcastable to [B, heads, T, S], true where a query may attend to a key; or a floating additive
    /// bias in the query's dtype (−∞ where it may not). The same contract as <c>scaled_dot_product_attention</c>'s
    /// <c>attn_mask</c>.
    /// </param>
    /// <param name="dropout">Dropout probability on the attention weights (0: none).</param>
    /// <param name="causal">Query i attends to keys ≤ i (top-left aligned when S ≠ T, as <c>scaled_dot_product_attention</c>'s <c>is_causal</c>); only with a null <paramref name="mask"/>.</param>
    /// <returns>[B, heads, T, head_dim] in the query's dtype; zeros for a query the mask lets attend to no key (as <c>scaled_dot_product_attention</c>).</returns>
    public static Tensor Attend(Tensor query, Tensor key, Tensor value, Tensor? mask, double dropout, bool causal)
    {
        using var scope = torch.NewDisposeScope();
        long t = query.shape[^2], s = key.shape[^2];
        Tensor scores = torch.matmul(query, key.transpose(-2, -1)).mul_(1.0 / Math.Sqrt(query.shape[^1]));
        if (causal && mask is null)
        {
            mask = torch.ones(t, s, dtype: ScalarType.Bool, device: query.device).tril();
        }

        // A query that may attend to no key at all gets zeros, as scaled_dot_product_attention's safe softmax gives
        // (softmax over all −∞ would be NaN, and NaN would reach the gradients). Such rows are found on the mask,
        // which is small for padding masks; they then attend to every key and their output is zeroed.
        Tensor? blind = null;
        if (mask is not null)
        {
            Tensor none = (mask.dtype == ScalarType.Bool ? mask.logical_not() : mask.isneginf()).all(-1, keepdim: true);
            if (none.any().item<bool>())
            {
                blind = none;
                mask = mask.dtype == ScalarType.Bool ? mask.logical_or(none) : mask.masked_fill(none, 0);
            }

            scores = mask.dtype == ScalarType.Bool ? scores.masked_fill_(mask.logical_not(), double.NegativeInfinity) : scores.add_(mask);
        }

        Tensor weights = scores.softmax(-1);
        if (dropout > 0)
        {
            weights = UniformDropout.Apply(weights, dropout);
        }

        Tensor output = torch.matmul(weights, value);
        return (blind is null ? output : output.masked_fill(blind, 0)).MoveToOuterDisposeScope();
    }
}
