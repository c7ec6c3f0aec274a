namespace ComposerSharp.Core;

/// <summary>
/// The processes that train one model together, as far as code working against <see cref="State"/> needs them
/// (checkpoints, callbacks): this process's rank, the world size and one collective, a byte gather. It is the
/// Core-level abstraction of a process group: ComposerSharp.Distributed's <c>IProcessGroup</c> (the tensor
/// collectives: all-reduce, broadcast, all-gather, barrier) extends it, so every process group is an
/// <see cref="IRankGroup"/>. The Trainer sets <see cref="State.ProcessGroup"/> to its process group (the one its
/// <c>DataParallel</c> wraps); a state built without a Trainer has the single-process <see cref="SingleRankGroup"/>.
/// Composer reaches the same information through its global <c>composer.utils.dist</c>
/// (<c>get_global_rank</c>, <c>get_world_size</c>, <c>all_gather_object</c>); here it travels with the state.
/// </summary>
public interface IRankGroup
{
    /// <summary>This process's rank, 0 … <see cref="WorldSize"/> − 1. Rank 0 writes checkpoints and logs.</summary>
    int Rank { get; }

    /// <summary>The number of processes (1 without a launcher).</summary>
    int WorldSize { get; }

    /// <summary>
    /// Every rank's <paramref name="local"/> bytes, indexed by rank (a collective: every rank calls it, with the
    /// same length). For one process: <paramref name="local"/> alone.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="local"/> is null.</exception>
    byte[][] AllGatherBytes(byte[] local);
}

/// <summary>The group of one process: rank 0 of world size 1; the gather returns the local bytes.</summary>
public sealed class SingleRankGroup : IRankGroup
{
    /// <inheritdoc/>
    public int Rank => 0;

    /// <inheritdoc/>
    public int WorldSize => 1;

    /// <inheritdoc/>
    public byte[][] AllGatherBytes(byte[] local)
    {
        ArgumentNullException.ThrowIfNull(local);
        return new[] { local };
    }
}
