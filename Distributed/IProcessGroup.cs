using ComposerSharp.Core;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// A group of processes that train one model together (PyTorch's <c>ProcessGroup</c>, Composer's
/// <c>composer.utils.dist</c>): every rank calls the same collectives in the same order with tensors of the same
/// shape and dtype. Collectives work in place on the given tensors, block until complete and accept
/// non-contiguous tensors (they are staged through a contiguous copy). Calls must come from one thread at a time.
/// </summary>
/// <remarks>
/// A process group is an <see cref="IRankGroup"/>: Core's view of the same ranks (rank, world size, a byte gather),
/// all that <see cref="State.ProcessGroup"/> and the checkpoint unit need. The Trainer puts its process group (the one
/// its <see cref="DataParallel"/> wraps) there, so <c>state.ProcessGroup</c> and <c>trainer.DataParallel.ProcessGroup</c>
/// are the same object.
/// </remarks>
public interface IProcessGroup : IRankGroup, IDisposable
{
    /// <summary>The backend's name: <c>single</c>, <c>mpi</c> or <c>nccl</c>.</summary>
    string Backend { get; }

    // Rank (among all processes, 0 … WorldSize − 1) and WorldSize (the number of processes) come from IRankGroup.

    /// <summary>This process's rank among the processes on its node.</summary>
    int LocalRank { get; }

    /// <summary>The number of processes on this node.</summary>
    int LocalWorldSize { get; }

    /// <summary>The index of this node, 0 … nodes − 1.</summary>
    int NodeRank { get; }

    /// <summary>Combines <paramref name="tensor"/> over all ranks with <paramref name="op"/>; every rank ends with the result.</summary>
    /// <exception cref="ArgumentException">The tensor's dtype or device is not supported by the backend.</exception>
    void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum);

    /// <summary>
    /// Starts combining <paramref name="tensor"/> over all ranks with <paramref name="op"/> and returns at once
    /// (<c>MPI_Iallreduce</c>); the result is in <paramref name="tensor"/> after <see cref="ICollectiveWork.Wait"/>.
    /// The default runs the blocking <see cref="AllReduce"/> and returns completed work.
    /// </summary>
    /// <exception cref="ArgumentException">The tensor's dtype or device is not supported by the backend.</exception>
    ICollectiveWork StartAllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        AllReduce(tensor, op);
        return CompletedWork.Instance;
    }

    /// <summary>Copies rank <paramref name="root"/>'s <paramref name="tensor"/> into every other rank's.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="root"/> is not a rank.</exception>
    void Broadcast(Tensor tensor, int root = 0);

    /// <summary>
    /// Gathers every rank's <paramref name="tensor"/>: the result has shape [<see cref="IRankGroup.WorldSize"/>, …tensor.shape],
    /// row r holding rank r's tensor, on the tensor's device and in its dtype.
    /// </summary>
    Tensor AllGather(Tensor tensor);

    /// <summary>Returns when every rank has called it.</summary>
    void Barrier();

    /// <summary>
    /// Ends every process of the job with exit code <paramref name="exitCode"/> (<c>MPI_Abort</c>); for one process,
    /// ends it. Call it when this rank fails, so that its peers do not wait in a collective for ever.
    /// </summary>
    void Abort(int exitCode);

    /// <summary>
    /// Every rank's <paramref name="local"/> bytes (all ranks must pass the same length), indexed by rank: one
    /// <see cref="AllGather"/> of a Byte tensor; for one process, <paramref name="local"/> alone without a collective.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="local"/> is null.</exception>
    byte[][] IRankGroup.AllGatherBytes(byte[] local)
    {
        ArgumentNullException.ThrowIfNull(local);
        if (WorldSize <= 1)
        {
            return new[] { local };
        }

        using var scope = torch.NewDisposeScope();
        Tensor gathered = AllGather(torch.tensor(local, dtype: ScalarType.Byte));
        return Enumerable.Range(0, WorldSize).Select(r => gathered[r].data<byte>().ToArray()).ToArray();
    }
}
