using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>What every step shares, whether it trains (<see cref="Fit"/>), evaluates (<see cref="Eval"/>) or predicts (<see cref="Predict"/>).</summary>
public sealed partial class Trainer
{
    /// <summary>Runs <see cref="State.Model"/> (the model, or what an algorithm put in its place) on <paramref name="batch"/>.</summary>
    private Tensor Forward(Batch batch) => State.Model switch
    {
        nn.Module<Batch, Tensor> module => module.call(batch),
        _ => throw new InvalidOperationException(
            $"State.Model is a {State.Model.GetType().Name}, which does not map a Batch to a Tensor; an algorithm may replace submodules but the root must stay a ComposerModel."),
    };

    /// <summary>Drops the state's references to the step's batch, outputs and loss (their tensors die with the step's dispose scope).</summary>
    /// <summary>
    /// The batch on the Trainer's device. Before it leaves the CPU for an accelerator the model checks its values there
    /// (<see cref="ComposerModel.ValidateBatch"/>), where reading them costs no device synchronisation; on the CPU the
    /// model's own forward reports bad values without a separate pass.
    /// </summary>
    private Batch ToDevice(Batch batch)
    {
        if (State.Device.type != DeviceType.CPU)
        {
            _model.ValidateBatch(batch);
        }

        return batch.To(State.Device);
    }

    private void ClearStepTensors()
    {
        State.Batch = null;
        State.Outputs = null;
        State.Loss = null;
    }
}
