using ComposerSharp.Events;

namespace ComposerSharp.Data;

/// <summary>A map-style dataset: <see cref="Count"/> samples addressed by index (PyTorch's <c>Dataset</c>).</summary>
/// <typeparam name="TSample">One sample, e.g. a <c>long[]</c> of token ids or a (token ids, label) pair.</typeparam>
public interface IDataset<out TSample>
{
    /// <summary>Number of samples.</summary>
    long Count { get; }

    /// <summary>The sample at <paramref name="index"/> (0 ≤ index &lt; <see cref="Count"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is out of range.</exception>
    TSample this[long index] { get; }
}

/// <summary>
/// Sample order for one epoch: a permutation of 0 … n−1 that depends only on (seed, epoch), so that epoch k is
/// shuffled the same way in every run with the same seed and differently from epoch k+1 (PyTorch's
/// <c>DistributedSampler.set_epoch</c> contract). Uses SplitMix64 and Fisher–Yates, so the order is the same on
/// every platform and .NET version.
/// </summary>
public static class EpochSampler
{
    /// <summary>The order of samples in <paramref name="epoch"/>: shuffled, or 0 … n−1 when <paramref name="shuffle"/> is false.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> or <paramref name="epoch"/> is negative.</exception>
    public static long[] Order(long count, long seed, long epoch, bool shuffle)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        var order = new long[count];
        for (long i = 0; i < count; i++)
        {
            order[i] = i;
        }

        if (!shuffle)
        {
            return order;
        }

        ulong state = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)epoch * 0xD1B54A32D192ED03UL);
        for (long i = count - 1; i > 0; i--)
        {
            long j = (long)(Next(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }

        return order;
    }

    private static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>
/// Batches a dataset for the Trainer: a fixed batch size, a per-epoch shuffle seeded from <see cref="Seed"/>,
/// <c>drop_last</c>, and a resumable position (<see cref="GetEpoch"/> can start at any batch of any epoch without
/// building the skipped batches). The collate function turns a list of samples into a <see cref="Batch"/> of
/// tensors; it runs when the enumeration reaches the batch, inside whatever dispose scope is open then.
/// </summary>
/// <typeparam name="TSample">The dataset's sample type.</typeparam>
public sealed class DataLoader<TSample> : IDataLoader
{
    private readonly IDataset<TSample> _dataset;
    private readonly Func<IReadOnlyList<TSample>, Batch> _collate;

    /// <summary>Creates a loader.</summary>
    /// <param name="dataset">The samples.</param>
    /// <param name="batchSize">Samples per batch (≥ 1).</param>
    /// <param name="collate">Builds a batch of tensors from samples.</param>
    /// <param name="shuffle">Shuffle each epoch (seeded by <paramref name="seed"/> and the epoch number).</param>
    /// <param name="dropLast">Drop the last batch when it has fewer than <paramref name="batchSize"/> samples.</param>
    /// <param name="seed">Seed of the shuffle.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive.</exception>
    public DataLoader(IDataset<TSample> dataset, int batchSize, Func<IReadOnlyList<TSample>, Batch> collate, bool shuffle = false, bool dropLast = false, long seed = 0)
    {
        _dataset = dataset ?? throw new ArgumentNullException(nameof(dataset));
        _collate = collate ?? throw new ArgumentNullException(nameof(collate));
        if (batchSize <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "Batch size must be at least 1.");
        }

        BatchSize = batchSize;
        Shuffle = shuffle;
        DropLast = dropLast;
        Seed = seed;
    }

    /// <summary>Samples per batch.</summary>
    public int BatchSize { get; }

    /// <summary>Whether each epoch is shuffled.</summary>
    public bool Shuffle { get; }

    /// <summary>Whether an incomplete last batch is dropped.</summary>
    public bool DropLast { get; }

    /// <summary>Seed of the per-epoch shuffle.</summary>
    public long Seed { get; }

    /// <summary>The dataset.</summary>
    public IDataset<TSample> Dataset => _dataset;

    /// <inheritdoc/>
    public long? BatchesPerEpoch => DropLast ? _dataset.Count / BatchSize : (_dataset.Count + BatchSize - 1) / BatchSize;

    /// <inheritdoc/>
    public long? SamplesPerEpoch => DropLast ? _dataset.Count / BatchSize * BatchSize : _dataset.Count;

    /// <inheritdoc/>
    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(skipBatches);
        return Iterate(epoch, skipBatches);
    }

    private IEnumerable<Batch> Iterate(long epoch, long skipBatches)
    {
        long[] order = EpochSampler.Order(_dataset.Count, Seed, epoch, Shuffle);
        long batches = BatchesPerEpoch!.Value;
        for (long b = skipBatches; b < batches; b++)
        {
            long start = b * BatchSize;
            int length = (int)Math.Min(BatchSize, order.LongLength - start);
            var samples = new TSample[length];
            for (int i = 0; i < length; i++)
            {
                samples[i] = _dataset[order[start + i]];
            }

            yield return _collate(samples);
        }
    }
}

/// <summary>A dataset over an in-memory list.</summary>
/// <typeparam name="TSample">Sample type.</typeparam>
public sealed class ListDataset<TSample> : IDataset<TSample>
{
    private readonly IReadOnlyList<TSample> _items;

    /// <summary>Wraps <paramref name="items"/> (not copied).</summary>
    public ListDataset(IReadOnlyList<TSample> items) => _items = items ?? throw new ArgumentNullException(nameof(items));

    /// <inheritdoc/>
    public long Count => _items.Count;

    /// <inheritdoc/>
    public TSample this[long index] => index >= 0 && index < _items.Count
        ? _items[(int)index]
        : throw new ArgumentOutOfRangeException(nameof(index), index, $"Index must be in [0, {_items.Count}).");
}
