using ComposerSharp.Core;

namespace ComposerSharp.Data;

/// <summary>
/// Splits one epoch's sample order among the ranks of a data-parallel job with PyTorch's
/// <c>torch.utils.data.DistributedSampler</c> semantics: every rank computes the same order (the loader's
/// per-epoch shuffle of (seed, epoch)), then rank r takes positions r, r + W, r + 2W, … of it, so the shards are
/// disjoint. So that every rank has the same number of samples (and so of batches and collectives), the order is
/// first padded by repeating its beginning (<see cref="DropLast"/> false, PyTorch's default: a few samples are
/// seen twice per epoch) or cut to a multiple of W (<see cref="DropLast"/> true: up to W − 1 samples are not seen).
/// With <see cref="Pad"/> false neither happens: shards differ by at most one sample and every sample is in exactly
/// one shard, which evaluation needs so that metrics over all ranks equal those of one process.
/// </summary>
/// <param name="NumReplicas">The world size W (≥ 1).</param>
/// <param name="Rank">This rank, 0 ≤ rank &lt; W.</param>
/// <param name="DropLast">Cut the order to a multiple of W instead of padding it.</param>
/// <param name="Pad">Equalise the shards (by padding or cutting); false gives uneven shards without repeats.</param>
public sealed record DistributedSampler(int NumReplicas, int Rank, bool DropLast = false, bool Pad = true)
{
    /// <summary>Checks the arguments.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The world size is below 1 or the rank is outside [0, W).</exception>
    public DistributedSampler Validate()
    {
        if (NumReplicas < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(NumReplicas), NumReplicas, "The number of replicas (world size) must be at least 1.");
        }

        if (Rank < 0 || Rank >= NumReplicas)
        {
            throw new ArgumentOutOfRangeException(nameof(Rank), Rank, $"The rank must be in [0, {NumReplicas}).");
        }

        return this;
    }

    /// <summary>The number of samples this rank gets from an epoch of <paramref name="count"/> samples.</summary>
    public long NumSamples(long count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (!Pad)
        {
            return count / NumReplicas + (Rank < count % NumReplicas ? 1 : 0);
        }

        return DropLast ? count / NumReplicas : (count + NumReplicas - 1) / NumReplicas;
    }

    /// <summary>This rank's shard of <paramref name="order"/> (the whole epoch's sample order, the same on every rank).</summary>
    public long[] Shard(long[] order)
    {
        ArgumentNullException.ThrowIfNull(order);
        Validate();
        long mine = NumSamples(order.LongLength);
        var shard = new long[mine];
        for (long i = 0; i < mine; i++)
        {
            long position = Rank + i * NumReplicas;

            // Padding repeats the order from its beginning (wrapping more than once for tiny datasets).
            shard[i] = order[position % order.LongLength];
        }

        return shard;
    }
}

/// <summary>A loader that can give the shard of one rank (see <see cref="DistributedSampler"/>).</summary>
public interface IShardableDataLoader : Core.IDataLoader
{
    /// <summary>Samples per batch (per rank once sharded).</summary>
    int BatchSize { get; }

    /// <summary>The loader of <paramref name="sampler"/>'s rank: same dataset, batch size, shuffle and seed, samples of the shard only.</summary>
    Core.IDataLoader WithSampler(DistributedSampler sampler);
}
