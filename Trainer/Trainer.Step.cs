using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>
/// The training step (Composer's <c>_train_batch</c>, <c>_train_microbatches</c> and <c>_train_microbatch</c>): the
/// batch split into microbatches and weighted, forward, loss and backward per microbatch, the gradient all-reduce and
/// unscaling, AfterTrainBatch and the optimizer step; and what every step shares, whether it trains
/// (<see cref="Fit"/>), evaluates (<see cref="Eval"/>) or predicts (<see cref="Predict"/>).
/// </summary>
public sealed partial class Trainer
{
    /// <summary>
    /// Trains on <see cref="State.Batch"/> (Composer's <c>_train_batch</c> and <c>_train_microbatches</c>):
    /// BeforeTrainBatch, zero the gradients, each microbatch, AfterTrainBatch, then one optimizer step per optimizer.
    /// An <see cref="IClosureOptimizer"/> (SAM) is instead stepped with a closure that does all but BeforeTrainBatch
    /// (and may be called more than once; train metrics and the returned loss come from its first call).
    /// Returns the batch's loss (the weighted mean of the microbatch losses, see <see cref="MicrobatchWeights"/>),
    /// Float32 [1], detached, on the device, with this rank's and the global weight of the step (samples, or
    /// loss-generating tokens under <see cref="TrainerOptions.AccumulateTrainBatchOnTokens"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">Closure optimizers mixed with others, or with amp_fp16's loss scaling; a negative token count.</exception>
    private (Tensor Loss, long LocalWeight, long GlobalWeight) TrainBatch(bool useGradScaling, long globalSamples)
    {
        Batch deviceBatch = State.Batch!;
        foreach (IMetric metric in _trainMetrics)
        {
            metric.Reset();
        }

        long? microbatchSize = State.DeviceTrainMicrobatchSize;
        IReadOnlyList<Batch> microbatches = microbatchSize is { } size ? deviceBatch.Split(size) : new[] { deviceBatch };
        Engine.RunEvent(Event.BeforeTrainBatch);
        StepWeights weights = MicrobatchWeights(microbatches, globalSamples);
        int closureOptimizers = State.Optimizers.Count(o => o is IClosureOptimizer);
        if (closureOptimizers == 0)
        {
            Tensor totalLoss = TrainMicrobatches(microbatches, deviceBatch, useGradScaling, weights, updateMetrics: true);
            foreach (optim.Optimizer optimizer in State.Optimizers)
            {
                if (useGradScaling)
                {
                    GradScaler.Step(optimizer);
                }
                else
                {
                    optimizer.step();
                }
            }

            return (totalLoss, weights.Local, weights.Global);
        }

        if (closureOptimizers != State.Optimizers.Count || useGradScaling)
        {
            throw new InvalidOperationException(
                $"{closureOptimizers} of the {State.Optimizers.Count} optimizers step with a closure (e.g. SAM); all must, and amp_fp16's loss scaling is not supported with them (precision is {State.Precision.ToComposerName()}).");
        }

        Tensor? firstLoss = null;
        foreach (optim.Optimizer optimizer in State.Optimizers)
        {
            optimizer.step(() =>
            {
                Tensor loss = TrainMicrobatches(microbatches, deviceBatch, useGradScaling, weights, updateMetrics: firstLoss is null);
                firstLoss ??= loss;
                return loss;
            });
        }

        return (firstLoss ?? throw new InvalidOperationException("A closure optimizer stepped without evaluating the batch's loss."), weights.Local, weights.Global);
    }

    /// <summary>
    /// How a step weighs its microbatches and this rank: each microbatch's mean loss is multiplied by its share of the
    /// rank's weight (<see cref="StepWeights.Shares"/>), so the rank's gradient is the weighted mean of its
    /// microbatches' gradients, and the gradient all-reduce and the logged loss weigh the rank by
    /// <see cref="StepWeights.Local"/> out of <see cref="StepWeights.Global"/>. Together, each microbatch of each rank
    /// counts by its weight over the global total, the mean over the whole global batch.
    /// </summary>
    /// <param name="Shares">Per microbatch: its weight over this rank's total (0 for all when that total is 0).</param>
    /// <param name="Local">This rank's total weight: samples, or loss-generating tokens.</param>
    /// <param name="Global">The total over all ranks (more than 0).</param>
    private readonly record struct StepWeights(double[] Shares, long Local, long Global);

    /// <summary>
    /// The weights of this step's microbatches (Composer's trainer.py <c>_train_microbatches</c>): by samples; or,
    /// with <see cref="TrainerOptions.AccumulateTrainBatchOnTokens"/>, by the model's count of loss-generating tokens
    /// (<see cref="ComposerModel.LossGeneratingTokens"/>), summed over the microbatches and then over the ranks (one
    /// SUM all-reduce, which every rank joins). A step whose global batch holds no loss-generating token is weighted
    /// by samples (a token weight would divide by zero).
    /// </summary>
    /// <exception cref="InvalidOperationException">The model counted fewer than 0 tokens.</exception>
    private StepWeights MicrobatchWeights(IReadOnlyList<Batch> microbatches, long globalSamples)
    {
        if (_accumulateOnTokens)
        {
            long[] tokens = new long[microbatches.Count];
            for (int i = 0; i < tokens.Length; i++)
            {
                tokens[i] = _model.LossGeneratingTokens(microbatches[i]);
                if (tokens[i] < 0)
                {
                    throw new InvalidOperationException(
                        $"{_model.GetType().Name}.LossGeneratingTokens returned {tokens[i]} for a microbatch of {microbatches[i].NumSamples} samples; a count must be ≥ 0.");
                }
            }

            long localTokens = tokens.Sum();
            long globalTokens = _dataParallel.SumOverRanks(localTokens); // Distributed: every microbatch of every rank
            if (globalTokens > 0)
            {
                double[] tokenShares = tokens.Select(t => localTokens > 0 ? (double)t / localTokens : 0.0).ToArray();
                return new StepWeights(tokenShares, localTokens, globalTokens);
            }
        }

        long localSamples = microbatches.Sum(mb => mb.NumSamples);
        double[] shares = microbatches.Select(mb => mb.NumSamples / (double)localSamples).ToArray();
        return new StepWeights(shares, localSamples, globalSamples);
    }

    /// <summary>
    /// Zeroes the gradients, runs every microbatch (forward, loss, backward), averages the gradients over ranks,
    /// unscales them under amp_fp16, and raises AfterTrainBatch (Composer's <c>_train_microbatches</c>). Returns the
    /// batch's loss, Float32 [1].
    /// </summary>
    private Tensor TrainMicrobatches(IReadOnlyList<Batch> microbatches, Batch deviceBatch, bool useGradScaling, StepWeights weights, bool updateMetrics)
    {
        foreach (optim.Optimizer optimizer in State.Optimizers)
        {
            ClearGradients(optimizer);
        }

        Tensor totalLoss = torch.zeros(1, dtype: ScalarType.Float32, device: State.Device);
        for (int i = 0; i < microbatches.Count; i++)
        {
            Batch microbatch = microbatches[i];
            State.Batch = microbatch;
            if (i == microbatches.Count - 1)
            {
                // Distributed: the gradient all-reduce of this step may start during the last microbatch's backward.
                _dataParallel.PrepareGradientReduce(State.Model, State.Optimizers, weights.Local, weights.Global);
            }

            Tensor microbatchLoss = TrainMicrobatch(useGradScaling, weights.Shares[i], updateMetrics);
            totalLoss.add_(microbatchLoss);
        }

        State.Batch = deviceBatch;
        _dataParallel.AllReduceGradients(State.Optimizers, weights.Local, weights.Global); // Distributed: averaged over the global batch
        if (useGradScaling)
        {
            foreach (optim.Optimizer optimizer in State.Optimizers)
            {
                GradScaler.Unscale(optimizer);
            }

            if (_dataParallel.AnyRank(GradScaler.FoundInf)) // Distributed: every rank skips the step together
            {
                GradScaler.MarkFoundInf();
            }
        }

        Engine.RunEvent(Event.AfterTrainBatch);
        return totalLoss;
    }

    /// <summary>
    /// One microbatch (Composer's <c>_train_microbatch</c>): forward and loss under the precision's autocast scope,
    /// then backward of the loss scaled by the microbatch's share of the batch's weight, its samples or, with
    /// <see cref="TrainerOptions.AccumulateTrainBatchOnTokens"/>, its loss-generating tokens (and by the loss scale under
    /// amp_fp16), so that the accumulated gradient equals the whole batch's gradient. Returns the microbatch's
    /// weighted loss (Float32 [1], detached) for logging.
    /// </summary>
    private Tensor TrainMicrobatch(bool useGradScaling, double share, bool updateMetrics)
    {
        DeviceType deviceType = State.Device.type;
        Engine.RunEvent(Event.BeforeForward);
        using (State.Precision.Enter(deviceType))
        {
            State.Outputs = Forward(State.Batch!);
        }

        Engine.RunEvent(Event.AfterForward);
        Engine.RunEvent(Event.BeforeLoss);
        using (State.Precision.Enter(deviceType))
        {
            State.Loss = _model.Loss(State.Outputs, State.Batch!);
        }

        Engine.RunEvent(Event.AfterLoss);
        Engine.RunEvent(Event.BeforeBackward);
        Tensor loss = State.Loss.to(ScalarType.Float32).mean();

        // A whole batch has share 1: multiplying by it would only add a kernel and an autograd node.
        Tensor logged = share == 1.0 ? loss.detach().reshape(1) : loss.detach().reshape(1) * share;
        Tensor toBackward = share == 1.0 ? loss : loss * share;
        if (useGradScaling)
        {
            toBackward = GradScaler.ScaleLoss(toBackward);
        }

        toBackward.backward();
        Engine.RunEvent(Event.AfterBackward);

        if (updateMetrics && _trainMetrics.Count > 0)
        {
            using var noGrad = torch.no_grad();
            using (State.Precision.Enter(deviceType))
            {
                Tensor evalOutputs = _model.EvalForward(State.Batch!, State.Outputs);
                foreach (IMetric metric in _trainMetrics)
                {
                    _model.UpdateMetric(State.Batch!, evalOutputs, metric);
                }
            }
        }

        return logged;
    }

    /// <summary>
    /// Sets the gradient of every parameter of <paramref name="optimizer"/> to none (Composer:
    /// <c>optimizer.zero_grad(set_to_none=True)</c>; PyTorch's default since 2.0) instead of zeroing it in place:
    /// backward then writes fresh gradients instead of adding into zeros, and a parameter that gets no gradient in a
    /// step (a block StochasticDepth dropped, an unused branch) has none, so AdamW and SGD skip it as PyTorch's do,
    /// rather than moving it with momentum and weight decay on a zero gradient. A closure optimizer (SAM) clears
    /// its base optimizer's parameters.
    /// </summary>
    private static void ClearGradients(optim.Optimizer optimizer)
    {
        // Reading p.grad makes a new tensor handle each time; the scope disposes them.
        using var scope = torch.NewDisposeScope();
        optim.Optimizer owner = optimizer is IClosureOptimizer closure ? closure.BaseOptimizer : optimizer;
        foreach (TorchSharp.Modules.Parameter p in owner.parameters())
        {
            if (p.grad is not null)
            {
                p.grad = null;
            }
        }
    }

    /// <summary>Runs <see cref="State.Model"/> (the model, or what an algorithm put in its place) on <paramref name="batch"/>.</summary>
    private Tensor Forward(Batch batch) => State.Model switch
    {
        nn.Module<Batch, Tensor> module => module.call(batch),
        _ => throw new InvalidOperationException(
            $"State.Model is a {State.Model.GetType().Name}, which does not map a Batch to a Tensor; an algorithm may replace submodules but the root must stay a ComposerModel."),
    };

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

    /// <summary>Drops the state's references to the step's batch, outputs and loss (their tensors die with the step's dispose scope).</summary>
    private void ClearStepTensors()
    {
        State.Batch = null;
        State.Outputs = null;
        State.Loss = null;
    }
}
