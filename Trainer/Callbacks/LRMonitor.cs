using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Logs the learning rate of every parameter group at each BatchEnd as <c>lr-&lt;OptimizerType&gt;/group&lt;i&gt;</c>
/// (Composer's <c>LRMonitor</c>). At BatchEnd the rate shown is the one the next batch will use, since the
/// schedulers have already been stepped.
/// </summary>
public sealed class LRMonitor : Callback
{
    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger)
    {
        var metrics = new Dictionary<string, double>();
        foreach (torch.optim.Optimizer optimizer in state.Optimizers)
        {
            string name = optimizer.GetType().Name;
            int index = 0;
            foreach (torch.optim.ILearningRateController group in optimizer.ParamGroups)
            {
                metrics[$"lr-{name}/group{index++}"] = group.LearningRate;
            }
        }

        if (metrics.Count > 0)
        {
            logger.LogMetrics(metrics);
        }
    }
}
