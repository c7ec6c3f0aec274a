using System.Collections;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// One batch of training, evaluation or prediction data: named tensors that share a leading batch dimension
/// (e.g. <c>input_ids</c> Int64 [B, T], <c>attention_mask</c> Int64/Bool [B, T], <c>labels</c> Int64 [B] or [B, T]),
/// with the number of samples and tokens it holds, which the Trainer adds to the <see cref="Timestamp"/>.
/// The tensors are owned by the dispose scope that was open when they were created.
/// </summary>
public sealed class Batch : IReadOnlyDictionary<string, Tensor>
{
    private readonly IReadOnlyDictionary<string, Tensor> _tensors;

    /// <summary>Creates a batch.</summary>
    /// <param name="tensors">Named tensors; every tensor must have the same size in dimension 0.</param>
    /// <param name="numTokens">
    /// Tokens in the batch; when null, the element count of <c>input_ids</c> (B × T for [B, T], padding included),
    /// or 0 when there is no <c>input_ids</c>: the default of Composer's <c>DataSpec.get_num_tokens_in_batch</c>.
    /// Pass e.g. the sum of <c>attention_mask</c> to count only real tokens.
    /// </param>
    /// <exception cref="ArgumentException">No tensors, a scalar tensor, or tensors whose leading sizes differ.</exception>
    public Batch(IReadOnlyDictionary<string, Tensor> tensors, long? numTokens = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        if (tensors.Count == 0)
        {
            throw new ArgumentException("A batch needs at least one tensor.", nameof(tensors));
        }

        long? size = null;
        foreach ((string name, Tensor t) in tensors)
        {
            if (t.Dimensions == 0)
            {
                throw new ArgumentException($"Tensor '{name}' is a scalar; every batch tensor needs a leading batch dimension.", nameof(tensors));
            }

            if (size is not null && t.shape[0] != size)
            {
                throw new ArgumentException($"Tensor '{name}' has {t.shape[0]} rows but an earlier tensor has {size}; batch tensors must share dimension 0.", nameof(tensors));
            }

            size = t.shape[0];
        }

        _tensors = tensors;
        NumSamples = size!.Value;
        NumTokens = numTokens ?? CountTokens(tensors);
    }

    /// <summary>Samples in the batch: the size of dimension 0.</summary>
    public long NumSamples { get; }

    /// <summary>Tokens in the batch (0 for data without tokens).</summary>
    public long NumTokens { get; }

    /// <inheritdoc/>
    public Tensor this[string key] => _tensors.TryGetValue(key, out Tensor? t)
        ? t
        : throw new KeyNotFoundException($"The batch has no tensor '{key}'; it has: {string.Join(", ", _tensors.Keys)}.");

    /// <inheritdoc/>
    public IEnumerable<string> Keys => _tensors.Keys;

    /// <inheritdoc/>
    public IEnumerable<Tensor> Values => _tensors.Values;

    /// <inheritdoc/>
    public int Count => _tensors.Count;

    /// <inheritdoc/>
    public bool ContainsKey(string key) => _tensors.ContainsKey(key);

    /// <inheritdoc/>
    public bool TryGetValue(string key, out Tensor value) => _tensors.TryGetValue(key, out value!);

    /// <inheritdoc/>
    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() => _tensors.GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <summary>The same batch with every tensor moved to <paramref name="device"/> (no copy for tensors already there).</summary>
    public Batch To(Device device)
    {
        var moved = new Dictionary<string, Tensor>(_tensors.Count);
        foreach ((string name, Tensor t) in _tensors)
        {
            moved[name] = t.device == device ? t : t.to(device);
        }

        return new Batch(moved, NumTokens);
    }

    /// <summary>
    /// Splits the batch into microbatches of at most <paramref name="microbatchSize"/> samples along dimension 0
    /// (views, not copies); the last one may be smaller, as with PyTorch's <c>tensor.split</c>. Tokens are recounted
    /// per microbatch with the default rule (see the constructor), so when this batch's token count was given
    /// explicitly, add this batch's <see cref="NumTokens"/> to the timestamp rather than the microbatches' (Composer
    /// counts tokens on the whole batch too).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="microbatchSize"/> is not positive.</exception>
    public IReadOnlyList<Batch> Split(long microbatchSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(microbatchSize);
        if (microbatchSize >= NumSamples)
        {
            return new[] { this };
        }

        var parts = new List<Batch>();
        for (long start = 0; start < NumSamples; start += microbatchSize)
        {
            long length = Math.Min(microbatchSize, NumSamples - start);
            var slice = new Dictionary<string, Tensor>(_tensors.Count);
            foreach ((string name, Tensor t) in _tensors)
            {
                slice[name] = t.narrow(0, start, length);
            }

            parts.Add(new Batch(slice));
        }

        return parts;
    }

    private static long CountTokens(IReadOnlyDictionary<string, Tensor> tensors) =>
        tensors.TryGetValue("input_ids", out Tensor? ids) ? ids.numel() : 0;
}
