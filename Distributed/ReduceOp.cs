namespace ComposerSharp.Distributed;

/// <summary>
/// How <see cref="IProcessGroup.AllReduce"/> combines the ranks' tensors element-wise (PyTorch's
/// <c>torch.distributed.ReduceOp</c>: SUM, AVG, MAX, MIN).
/// </summary>
public enum ReduceOp
{
    /// <summary>Element-wise sum over ranks.</summary>
    Sum,

    /// <summary>Element-wise mean over ranks (the sum divided by the world size; integer tensors divide with truncation).</summary>
    Avg,

    /// <summary>Element-wise maximum over ranks.</summary>
    Max,

    /// <summary>Element-wise minimum over ranks.</summary>
    Min,
}
