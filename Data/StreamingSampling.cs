using ComposerSharp.Core;

namespace ComposerSharp.Data;

/// <summary>
/// The elastic global sample order of one epoch (MosaicML Streaming's shuffle algorithms,
/// <c>streaming/base/shuffle/naive.py</c> and <c>py1s.py</c>): it depends only on (shuffle_seed, epoch,
/// num_canonical_nodes) and the dataset's shard (span) sizes, never on the world size or the number of workers, so
/// a job restarted on another number of ranks reads the samples in the same global order.
/// </summary>
/// <remarks>
/// All draws use SplitMix64 keyed on (seed) and (seed, epoch), so the order is the same on every platform; it is not
/// bit-identical to Streaming's numpy order (another generator), only the same algorithm.
/// </remarks>
public static class StreamingShuffle
{
    /// <summary>Streaming's <c>naive</c>: a uniform permutation of all samples each epoch (ignores shards and canonical nodes).</summary>
    public const string Naive = "naive";

    /// <summary>
    /// Streaming's <c>py1s</c>: the shard spans are shuffled once per run (seed only), cut into
    /// <c>num_canonical_nodes</c> equal parts, the spans of each part are shuffled each epoch and the samples shuffled
    /// within each span, so a reader moves through few shards at a time.
    /// </summary>
    public const string Py1s = "py1s";

    /// <summary>The algorithm names this class implements (Streaming's <c>shuffle_algo</c> values).</summary>
    public static IReadOnlyList<string> Algorithms { get; } = new[] { Naive, Py1s };

    /// <summary>
    /// The global order of <paramref name="epoch"/>: a permutation of 0 … Σ<paramref name="spanSizes"/> − 1 (Streaming's <c>get_shuffle</c>).
    /// </summary>
    /// <param name="algo"><see cref="Naive"/> or <see cref="Py1s"/>.</param>
    /// <param name="spanSizes">Samples per shard (or per fixed shuffle block) in global index order, each ≥ 0.</param>
    /// <param name="numCanonicalNodes">Streaming's <c>num_canonical_nodes</c> (≥ 1): the number of fixed partitions of the spans.</param>
    /// <param name="seed">Streaming's <c>shuffle_seed</c>.</param>
    /// <param name="epoch">The 0-based epoch.</param>
    /// <returns>A new array of the global sample indices (int64) in read order.</returns>
    /// <exception cref="ArgumentException"><paramref name="algo"/> is not a known algorithm, or a span size is negative.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numCanonicalNodes"/> is below 1 or <paramref name="epoch"/> is negative.</exception>
    public static long[] GetShuffle(string algo, IReadOnlyList<long> spanSizes, int numCanonicalNodes, long seed, long epoch)
    {
        ArgumentNullException.ThrowIfNull(spanSizes);
        ArgumentOutOfRangeException.ThrowIfLessThan(numCanonicalNodes, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        long total = 0;
        foreach (long size in spanSizes)
        {
            if (size < 0)
            {
                throw new ArgumentException($"Span (shard) sizes must be non-negative, got {size}.", nameof(spanSizes));
            }

            total += size;
        }

        return algo switch
        {
            Naive => ShuffleNaive(total, seed, epoch),
            Py1s => ShufflePy1s(spanSizes, total, numCanonicalNodes, seed, epoch),
            _ => throw new ArgumentException($"Unknown shuffle_algo '{algo}'; expected one of: {string.Join(", ", Algorithms)}.", nameof(algo)),
        };
    }

    /// <summary>Spans of <paramref name="blockSize"/> samples covering <paramref name="count"/> samples (the last may be shorter).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is negative or <paramref name="blockSize"/> below 1.</exception>
    public static long[] FixedSpans(long count, long blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        var spans = new long[(count + blockSize - 1) / blockSize];
        for (long i = 0; i < spans.LongLength; i++)
        {
            spans[i] = Math.Min(blockSize, count - i * blockSize);
        }

        return spans;
    }

    private static void Shuffle<T>(Span<T> items, ref SplitMix64 rng)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = (int)(rng.Next() % (ulong)(i + 1));
            (items[i], items[j]) = (items[j], items[i]);
        }
    }

    private static long[] ShuffleNaive(long total, long seed, long epoch)
    {
        var ids = new long[total];
        for (long i = 0; i < total; i++)
        {
            ids[i] = i;
        }

        SplitMix64 rng = SplitMix64.For(seed, epoch, 0x6E61697665);
        Shuffle(ids.AsSpan(), ref rng);
        return ids;
    }

    private static long[] ShufflePy1s(IReadOnlyList<long> spanSizes, long total, int numCanonicalNodes, long seed, long epoch)
    {
        var spans = new List<(long Begin, long End)>(spanSizes.Count);
        long offset = 0;
        foreach (long size in spanSizes)
        {
            spans.Add((offset, offset + size));
            offset += size;
        }

        // The run-wide order of the spans depends on the seed only, so each canonical node keeps its shards every epoch.
        SplitMix64 runRng = SplitMix64.For(seed, 0x70793173);
        Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(spans), ref runRng);

        // Cut the spans at the canonical node boundaries (Streaming's divide_spans).
        var parts = new List<List<(long Begin, long End)>>(numCanonicalNodes);
        int index = 0;
        long sofar = 0;
        for (int part = 0; part < numCanonicalNodes; part++)
        {
            long partEnd = total * (part + 1) / numCanonicalNodes;
            var mine = new List<(long Begin, long End)>();
            while (index < spans.Count)
            {
                (long begin, long end) = spans[index];
                long length = end - begin;
                if (sofar + length > partEnd)
                {
                    if (sofar < partEnd)
                    {
                        long split = partEnd - sofar;
                        mine.Add((begin, begin + split));
                        spans[index] = (begin + split, end);
                        sofar += split;
                    }

                    break;
                }

                mine.Add(spans[index]);
                index++;
                sofar += length;
            }

            parts.Add(mine);
        }

        SplitMix64 epochRng = SplitMix64.For(seed, epoch, 0x70793173);
        var ids = new long[total];
        long at = 0;
        foreach (List<(long Begin, long End)> part in parts)
        {
            Shuffle(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(part), ref epochRng);
            foreach ((long begin, long end) in part)
            {
                long start = at;
                for (long i = begin; i < end; i++)
                {
                    ids[at++] = i;
                }

                Shuffle(ids.AsSpan((int)start, (int)(end - begin)), ref epochRng);
            }
        }

        return ids;
    }
}

/// <summary>
/// Splits the global order of an epoch among ranks so that global batch k (positions [k·G, (k+1)·G) of the order,
/// G = world size × per-rank batch size) holds the same samples for every world size that divides G: rank r takes
/// positions [k·G + r·B, k·G + (r+1)·B) of each full global batch (the batch-aware partition of MosaicML Streaming's
/// <c>streaming/base/partition/orig.py</c>, simplified to one canonical order; the workers of a rank then take its
/// batches round-robin, as PyTorch's <c>DataLoader</c> does). The samples consumed after any number of global
/// batches are therefore a prefix of the global order, whatever the world size, which is Streaming's resume rule.
/// </summary>
public static class ElasticPartition
{
    /// <summary>
    /// The global sample indices rank <paramref name="rank"/> reads, in order, from position
    /// <paramref name="sampleInEpoch"/> of <paramref name="order"/> to the end of the epoch.
    /// </summary>
    /// <param name="order">The epoch's global order (the same on every rank).</param>
    /// <param name="sampleInEpoch">Samples of the epoch already consumed by all ranks together (Streaming's <c>sample_in_epoch</c>), 0 ≤ it ≤ order length.</param>
    /// <param name="worldSize">Number of ranks W (≥ 1).</param>
    /// <param name="rank">This rank, 0 ≤ rank &lt; W.</param>
    /// <param name="batchSize">Per-rank batch size B (≥ 1).</param>
    /// <param name="pad">
    /// Equalise the ranks (training): the last incomplete global batch is split evenly, padded by repeating the start of
    /// the epoch's order (or cut when <paramref name="dropLast"/>), as <see cref="DistributedSampler"/> does. False
    /// (evaluation): no sample is repeated or dropped and the ranks' shares differ by at most one.
    /// </param>
    /// <param name="dropLast">With <paramref name="pad"/>, cut the tail to a multiple of W instead of padding it.</param>
    /// <returns>A new array of global indices (int64); with <paramref name="sampleInEpoch"/> 0 its length is <see cref="DistributedSampler.NumSamples"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException">An argument is outside the ranges above.</exception>
    public static long[] RankOrder(long[] order, long sampleInEpoch, int worldSize, int rank, int batchSize, bool pad, bool dropLast)
    {
        ArgumentNullException.ThrowIfNull(order);
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (rank < 0 || rank >= worldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(rank), rank, $"The rank must be in [0, {worldSize}).");
        }

        if (sampleInEpoch < 0 || sampleInEpoch > order.LongLength)
        {
            throw new ArgumentOutOfRangeException(nameof(sampleInEpoch), sampleInEpoch, $"sample_in_epoch must be in [0, {order.LongLength}] for an epoch of {order.LongLength} samples.");
        }

        long n = order.LongLength - sampleInEpoch;
        long global = (long)worldSize * batchSize;
        long full = n / global;
        long tail = n - full * global;
        long mineTail, tailStart;
        if (pad)
        {
            mineTail = dropLast ? tail / worldSize : (tail + worldSize - 1) / worldSize;
            tailStart = rank * mineTail;
        }
        else
        {
            mineTail = tail / worldSize + (rank < tail % worldSize ? 1 : 0);
            tailStart = rank * (tail / worldSize) + Math.Min(rank, tail % worldSize);
        }

        var mine = new long[full * batchSize + mineTail];
        long k = 0;
        for (long g = 0; g < full; g++)
        {
            long start = sampleInEpoch + g * global + (long)rank * batchSize;
            for (int i = 0; i < batchSize; i++)
            {
                mine[k++] = order[start + i];
            }
        }

        for (long i = 0; i < mineTail; i++)
        {
            // Padding repeats the epoch's order from its beginning (wrapping more than once for tiny datasets).
            long position = sampleInEpoch + full * global + tailStart + i;
            mine[k++] = order[position % order.LongLength];
        }

        return mine;
    }
}

/// <summary>
/// A loader that can resume at a global sample of the epoch (MosaicML Streaming's <c>sample_in_epoch</c> resume,
/// <c>StreamingDataset._resume</c>): the samples already consumed are the first <c>sample_in_epoch</c> of the
/// epoch's global order, for any world size, so a run resumed on another number of ranks continues that order.
/// </summary>
public interface ISampleResumableDataLoader : IShardableDataLoader
{
    /// <summary>Whether <see cref="GetEpochFromSample"/> can be used (the elastic partition is on).</summary>
    bool CanResumeAtSample { get; }

    /// <summary>Streaming's <c>shuffle_seed</c>, recorded in checkpoints.</summary>
    long Seed { get; }

    /// <summary>Streaming's <c>shuffle_algo</c>, or null for the classic order; recorded in checkpoints.</summary>
    string? ShuffleAlgo { get; }

    /// <summary>Streaming's <c>num_canonical_nodes</c>, recorded in checkpoints.</summary>
    int NumCanonicalNodes { get; }

    /// <summary>This rank's batches of <paramref name="epoch"/> from global sample <paramref name="sampleInEpoch"/> on, without reading the skipped samples.</summary>
    /// <exception cref="InvalidOperationException"><see cref="CanResumeAtSample"/> is false.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="epoch"/> is negative or <paramref name="sampleInEpoch"/> is outside the epoch.</exception>
    IEnumerable<Batch> GetEpochFromSample(long epoch, long sampleInEpoch);
}
