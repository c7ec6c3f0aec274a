using ComposerSharp.Core;
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

        var rng = new SplitMix64(unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)epoch * 0xD1B54A32D192ED03UL));
        for (long i = count - 1; i > 0; i--)
        {
            long j = (long)(rng.Next() % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }

        return order;
    }
}

/// <summary>Where a batch sits in the data stream, passed to a <see cref="ICollator{TSample}"/>.</summary>
/// <param name="Epoch">The 0-based epoch.</param>
/// <param name="BatchIndex">
/// The 0-based index of the batch within this loader's epoch. It depends on the batch size and, in data-parallel
/// training, on the rank and world size, so random draws must not be keyed on it (see <see cref="ICollator{TSample}"/>).
/// </param>
/// <param name="Seed">The loader's seed (<see cref="DataLoader{TSample}.Seed"/>), the same on every rank.</param>
/// <param name="SampleIndices">
/// The global dataset index of each sample of the batch, in the batch's order (one per sample; the same index on
/// whichever rank, batch or position the sample lands). Null when the caller has none, e.g. a collator called
/// outside a loader; collators that draw random numbers then refuse the batch.
/// </param>
public readonly record struct CollateContext(long Epoch, long BatchIndex, long Seed, IReadOnlyList<long>? SampleIndices = null)
{
    /// <summary>
    /// The global dataset index of sample <paramref name="position"/> of the batch, for keying that sample's random draws.
    /// </summary>
    /// <param name="position">The sample's position in the batch, 0 ≤ position &lt; <paramref name="batchSize"/>.</param>
    /// <param name="batchSize">The number of samples passed to the collator, checked against <see cref="SampleIndices"/>.</param>
    /// <exception cref="ArgumentException"><see cref="SampleIndices"/> is null or does not hold one index per sample.</exception>
    public long SampleIndex(int position, int batchSize)
    {
        if (SampleIndices is null || SampleIndices.Count != batchSize)
        {
            throw new ArgumentException(
                $"A collator that draws random numbers per sample needs the samples' dataset indices: the context has {(SampleIndices is null ? "none" : $"{SampleIndices.Count}")} for a batch of {batchSize} samples.",
                nameof(batchSize));
        }

        return SampleIndices[position];
    }
}

/// <summary>
/// Turns the samples of one batch into a <see cref="Batch"/> of tensors (PyTorch's <c>collate_fn</c>). A collator that
/// draws random numbers (e.g. MLM masking) must key each sample's draws on (its own seed,
/// <see cref="CollateContext.Seed"/>, <see cref="CollateContext.Epoch"/>, the sample's
/// <see cref="CollateContext.SampleIndices">global dataset index</see>) only, never on the batch index, the sample's
/// position in the batch or state carried between calls. Then a sample is transformed the same way whatever the world
/// size, per-rank batch size or batch composition (the elastic determinism of MosaicML Streaming's
/// <c>StreamingDataset</c>), and a loader resumed at (epoch, batch) yields exactly the batches an uninterrupted run
/// would (the <see cref="IDataLoader"/> determinism contract).
/// </summary>
/// <typeparam name="TSample">The dataset's sample type.</typeparam>
public interface ICollator<in TSample>
{
    /// <summary>Builds the batch of <paramref name="samples"/> (at least one) at position <paramref name="context"/>.</summary>
    Batch Collate(IReadOnlyList<TSample> samples, CollateContext context);
}

/// <summary>
/// Batches a dataset for the Trainer: a fixed batch size, a per-epoch shuffle seeded from <see cref="Seed"/>,
/// <c>drop_last</c>, and a resumable position (<see cref="GetEpoch"/> can start at any batch of any epoch without
/// building the skipped batches). The collate function turns a list of samples into a <see cref="Batch"/> of
/// tensors; it runs when the enumeration reaches the batch, inside whatever dispose scope is open then.
/// </summary>
/// <typeparam name="TSample">The dataset's sample type.</typeparam>
public sealed class DataLoader<TSample> : IShardableDataLoader
{
    private readonly IDataset<TSample> _dataset;
    private readonly Func<IReadOnlyList<TSample>, CollateContext, Batch> _collate;

    /// <summary>Creates a loader whose collate function needs no position (deterministic collation, e.g. padding).</summary>
    /// <param name="dataset">The samples.</param>
    /// <param name="batchSize">Samples per batch (≥ 1).</param>
    /// <param name="collate">Builds a batch of tensors from samples.</param>
    /// <param name="shuffle">Shuffle each epoch (seeded by <paramref name="seed"/> and the epoch number).</param>
    /// <param name="dropLast">Drop the last batch when it has fewer than <paramref name="batchSize"/> samples.</param>
    /// <param name="seed">Seed of the shuffle.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive.</exception>
    public DataLoader(IDataset<TSample> dataset, int batchSize, Func<IReadOnlyList<TSample>, Batch> collate, bool shuffle = false, bool dropLast = false, long seed = 0)
        : this(dataset, batchSize, WithoutContext(collate), shuffle, dropLast, seed)
    {
    }

    /// <summary>Creates a loader whose collator sees each batch's position and its samples' dataset indices (for seeded random collation such as MLM masking).</summary>
    /// <param name="dataset">The samples.</param>
    /// <param name="batchSize">Samples per batch (≥ 1).</param>
    /// <param name="collator">Builds a batch of tensors from samples and the batch's <see cref="CollateContext"/>.</param>
    /// <param name="shuffle">Shuffle each epoch (seeded by <paramref name="seed"/> and the epoch number).</param>
    /// <param name="dropLast">Drop the last batch when it has fewer than <paramref name="batchSize"/> samples.</param>
    /// <param name="seed">Seed of the shuffle, also passed to the collator.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive.</exception>
    public DataLoader(IDataset<TSample> dataset, int batchSize, ICollator<TSample> collator, bool shuffle = false, bool dropLast = false, long seed = 0)
        : this(dataset, batchSize, collator is null ? null! : collator.Collate, shuffle, dropLast, seed)
    {
    }

    private DataLoader(IDataset<TSample> dataset, int batchSize, Func<IReadOnlyList<TSample>, CollateContext, Batch> collate, bool shuffle, bool dropLast, long seed)
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

    private DataLoader(DataLoader<TSample> source, DistributedSampler sampler)
        : this(source._dataset, source.BatchSize, source._collate, source.Shuffle, source.DropLast, source.Seed) =>
        Sampler = sampler.Validate();

    /// <summary>The rank's share of each epoch (data-parallel training), or null when this loader yields every sample.</summary>
    public DistributedSampler? Sampler { get; }

    /// <inheritdoc/>
    public IDataLoader WithSampler(DistributedSampler sampler) => new DataLoader<TSample>(this, sampler ?? throw new ArgumentNullException(nameof(sampler)));

    /// <summary>Samples per epoch before batching: the dataset's, or the rank's shard of it.</summary>
    private long EpochCount => Sampler?.NumSamples(_dataset.Count) ?? _dataset.Count;

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
    public long? BatchesPerEpoch => DropLast ? EpochCount / BatchSize : (EpochCount + BatchSize - 1) / BatchSize;

    /// <inheritdoc/>
    public long? SamplesPerEpoch => DropLast ? EpochCount / BatchSize * BatchSize : EpochCount;

    /// <inheritdoc/>
    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        ArgumentOutOfRangeException.ThrowIfNegative(skipBatches);
        return Iterate(epoch, skipBatches);
    }

    private static Func<IReadOnlyList<TSample>, CollateContext, Batch> WithoutContext(Func<IReadOnlyList<TSample>, Batch> collate) =>
        collate is null ? null! : (samples, _) => collate(samples);

    private IEnumerable<Batch> Iterate(long epoch, long skipBatches)
    {
        long[] order = EpochSampler.Order(_dataset.Count, Seed, epoch, Shuffle);
        if (Sampler is { } sampler && order.LongLength > 0)
        {
            order = sampler.Shard(order);
        }
        long batches = BatchesPerEpoch!.Value;
        if (_dataset is IShardedDataset sharded)
        {
            // The streaming datasets fetch shards ahead of this order (predownload) and evict behind it.
            long first = Math.Min(order.LongLength, skipBatches * BatchSize);
            sharded.SetReadOrder(new ArraySegment<long>(order, (int)first, (int)(order.LongLength - first)));
        }

        for (long b = skipBatches; b < batches; b++)
        {
            long start = b * BatchSize;
            int length = (int)Math.Min(BatchSize, order.LongLength - start);
            var samples = new TSample[length];
            var indices = new long[length];
            for (int i = 0; i < length; i++)
            {
                indices[i] = order[start + i];
                samples[i] = _dataset[indices[i]];
            }

            yield return _collate(samples, new CollateContext(epoch, b, Seed, indices));
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
