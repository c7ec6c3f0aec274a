using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// The keys and values of the positions a causal decoder has already processed, one pair per layer
/// (Hugging Face's <c>past_key_values</c>), so that incremental decoding
/// (<see cref="TransformerBackbone.ForwardCached"/>) computes attention for new positions only. Each tensor is
/// [B, heads, Length, head_dim] in the projections' dtype. The cache owns its tensors (outside every dispose scope);
/// dispose it when the sequence is finished.
/// </summary>
public sealed class KeyValueCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;
    private readonly long[] _lengths;

    /// <summary>An empty cache for a model of <paramref name="numLayers"/> blocks.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numLayers"/> is not positive.</exception>
    public KeyValueCache(int numLayers)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numLayers);
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
        _lengths = new long[numLayers];
    }

    /// <summary>Number of layers the cache serves.</summary>
    public int NumLayers => _keys.Length;

    /// <summary>Positions held (of the last layer updated, which equals every layer's between forward calls).</summary>
    public long Length => _lengths[^1];

    /// <summary>
    /// Appends the new keys and values [B, heads, T_new, head_dim] of <paramref name="layer"/> and returns the full
    /// keys and values (owned by the cache) and the number of positions that were cached before.
    /// </summary>
    internal (Tensor Keys, Tensor Values, long Past) Append(int layer, Tensor keys, Tensor values)
    {
        long past = _lengths[layer];
        Tensor fullKeys = _keys[layer] is { } k ? torch.cat(new[] { k, keys }, 2) : keys.contiguous();
        Tensor fullValues = _values[layer] is { } v ? torch.cat(new[] { v, values }, 2) : values.contiguous();
        _keys[layer]?.Dispose();
        _values[layer]?.Dispose();
        _keys[layer] = fullKeys.DetachFromDisposeScope();
        _values[layer] = fullValues.DetachFromDisposeScope();
        _lengths[layer] = past + keys.shape[2];
        return (_keys[layer]!, _values[layer]!, past);
    }

    /// <summary>
    /// The shape of the keys cached for <paramref name="layer"/>, [B, heads, Length, head_dim] (heads: the key/value
    /// heads, fewer than the query heads under grouped-query attention), or an empty array when nothing is cached.
    /// </summary>
    /// <exception cref="IndexOutOfRangeException"><paramref name="layer"/> is outside [0, NumLayers).</exception>
    public long[] KeyShape(int layer) => _keys[layer]?.shape ?? Array.Empty<long>();

    /// <summary>Frees the cached tensors; the cache is empty afterwards.</summary>
    public void Dispose()
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
            _lengths[i] = 0;
        }
    }
}
