using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// An optimizer that wraps another and re-evaluates the loss and gradients during its step (Composer's closure step,
/// <c>_step_supports_amp_closure</c>; for example SAM's second forward/backward). The Trainer then does not compute the
/// gradients itself: it calls <c>step(closure)</c>, where the closure zeroes the gradients, runs every microbatch's
/// forward, loss and backward (with their events, and AfterTrainBatch) and returns the batch's loss. Checkpoints save
/// and load <see cref="BaseOptimizer"/>'s state, so a checkpoint loads whether or not the wrapper is in place yet.
/// </summary>
public interface IClosureOptimizer
{
    /// <summary>The wrapped optimizer, which holds the parameter groups and the per-parameter state.</summary>
    optim.Optimizer BaseOptimizer { get; }
}
