using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// The group of one process (world size 1): all-reduce, broadcast and barrier leave the tensor as it is (AVG over
/// one rank is the identity), all-gather adds a leading dimension of 1. This is what a process started without a
/// launcher gets.
/// </summary>
public sealed class SingleProcessGroup : IProcessGroup
{
    /// <inheritdoc/>
    public string Backend => "single";

    /// <inheritdoc/>
    public int Rank => 0;

    /// <inheritdoc/>
    public int WorldSize => 1;

    /// <inheritdoc/>
    public int LocalRank => 0;

    /// <inheritdoc/>
    public int LocalWorldSize => 1;

    /// <inheritdoc/>
    public int NodeRank => 0;

    /// <inheritdoc/>
    public void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum) => ArgumentNullException.ThrowIfNull(tensor);

    /// <inheritdoc/>
    public void Broadcast(Tensor tensor, int root = 0)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (root != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(root), root, "The root must be a rank in [0, 1) for world size 1.");
        }
    }

    /// <inheritdoc/>
    public Tensor AllGather(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        return tensor.unsqueeze(0).clone();
    }

    /// <inheritdoc/>
    public void Barrier()
    {
    }

    /// <inheritdoc/>
    public void Abort(int exitCode) => Environment.Exit(exitCode);

    /// <inheritdoc/>
    public void Dispose()
    {
    }
}
