using System.Diagnostics;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

public sealed partial class Trainer
{
    /// <summary>
    /// Trains until the max duration (Composer's <c>fit</c>). <paramref name="duration"/>, when given, extends the
    /// run from where it is: the new max duration is the current count in its unit plus <paramref name="duration"/>.
    /// </summary>
    /// <remarks>
    /// Events, in order: FitStart; IterationStart (at the start of an iteration); EpochStart (not when resuming
    /// mid-epoch); per batch BeforeDataloader, AfterDataloader, BatchStart, BeforeTrainBatch, per microbatch
    /// BeforeForward, AfterForward, BeforeLoss, AfterLoss, BeforeBackward, AfterBackward, then AfterTrainBatch
    /// (gradients accumulated and, for amp_fp16, unscaled), the optimizer step, the timestamp advance, the scheduler
    /// step (setting the rate of the next batch from the new timestamp), BatchEnd, evaluation when due,
    /// BatchCheckpoint; once per exhausted epoch a last BeforeDataloader, EpochEnd, evaluation when due,
    /// EpochCheckpoint and, when that epoch completes an iteration of <see cref="State.IterationLength"/> epochs,
    /// IterationEnd and IterationCheckpoint; finally FitEnd and a final evaluation when due and not just run.
    /// Budgets in <c>ba</c>, <c>sp</c> and <c>tok</c> stop after the batch that reaches or crosses them.
    /// <para>
    /// <paramref name="cancellationToken"/> asks for a graceful stop (preemption: see <see cref="GracefulStop"/>,
    /// which turns SIGINT/SIGTERM into one): the batch in progress finishes, an evaluation in progress is cut short at
    /// its next batch without computing its metrics, evaluations not yet begun are skipped, and training stops as
    /// <see cref="State.StopTraining"/> does, so the checkpoint saver's end-of-training save runs at that batch's
    /// BatchCheckpoint (or EpochCheckpoint), then FitEnd. Fit returns normally and <see cref="StoppedByRequest"/> is true.
    /// </para>
    /// </remarks>
    /// <exception cref="InvalidOperationException">No optimizer, no training dataloader, no max duration, nothing left to train, an epoch budget with a loader of unknown length, or a loader that yields no batches.</exception>
    /// <exception cref="ArgumentException"><paramref name="duration"/> is in <c>sec</c>, <c>dur</c> or <c>iter</c>.</exception>
    public void Fit(Time? duration = null, CancellationToken cancellationToken = default)
    {
        ThrowIfClosed();
        StoppedByRequest = false;
        if (State.Optimizers.Count == 0)
        {
            throw new InvalidOperationException("No optimizer: the model has no parameters or none was created; this Trainer can only evaluate or predict.");
        }

        IDataLoader loader = State.TrainDataloader
            ?? throw new InvalidOperationException("No training dataloader: pass trainDataloader to the Trainer.");
        if (duration is { } d)
        {
            d = TrainerOptions.CheckMaxDuration(d, nameof(duration));
            State.MaxDuration = d + State.Timestamp.Get(d.Unit);
        }

        Time max = State.MaxDuration
            ?? throw new InvalidOperationException("No max duration: pass maxDuration to the Trainer or a duration to Fit.");
        if (max.Unit == TimeUnit.Epoch && loader.BatchesPerEpoch is null)
        {
            throw new InvalidOperationException(
                $"Max duration '{max}' is in epochs, but the training dataloader's length is unknown; give the max duration in batches, samples or tokens.");
        }

        if (loader.BatchesPerEpoch == 0)
        {
            throw new InvalidOperationException(
                $"The training dataloader yields no batches per epoch ({loader.SamplesPerEpoch?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"} samples per epoch): " +
                "the dataset is empty or smaller than one batch with drop_last. Use a smaller batch size, drop_last = false, or more data.");
        }

        if (State.Timestamp >= max)
        {
            throw new InvalidOperationException(
                $"The max duration ({max}) is not beyond the training already done ({State.Timestamp.Get(max.Unit)}); no training would occur. Pass a duration to Fit to train further.");
        }

        State.Dataloader = loader;
        State.DataloaderLabel = TrainLabel;
        _fitCancellation = cancellationToken;
        try
        {
            TrainLoop(loader);
        }
        finally
        {
            _fitCancellation = CancellationToken.None;
        }

        // The gradients are not kept after training (as PyTorch's zero_grad(set_to_none=True) leaves them).
        foreach (optim.Optimizer optimizer in State.Optimizers)
        {
            ClearGradients(optimizer);
        }
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

    private void TrainLoop(IDataLoader loader)
    {
        _log.LogInformation("Training {RunName} with precision {Precision} on {Device} for {MaxDuration}.", State.RunName, State.Precision.ToComposerName(), State.Device, State.MaxDuration);
        Engine.RunEvent(Event.FitStart);
        if (State.PendingRngState is { } rng)
        {
            RestoreRngState(rng);
            State.PendingRngState = null;
        }

        bool useGradScaling = State.Precision == Precision.AmpFp16;
        State.Model.train();
        ApplySchedulers();
        var clock = Stopwatch.StartNew();
        TimeSpan lastWct = clock.Elapsed;

        // The batch loss is read back to the host (item(), a device synchronisation on CUDA) only when something can
        // see it during training; otherwise it is copied on the device and the last one is read once, after the loop.
        // Distributed: always read, as every rank joins the loss all-reduce (loggers exist on rank 0 only).
        bool lossObserved = _dataParallel.Enabled || Logger.Destinations.Count > 0 || State.Callbacks.Count > 0 || State.Algorithms.Count > 0;
        bool lossUnread = false;
        while (State.Timestamp < State.MaxDuration!.Value)
        {
            if (State.Timestamp.EpochInIteration == 0 && State.Timestamp.BatchInEpoch == 0)
            {
                Engine.RunEvent(Event.IterationStart);
            }

            bool epochStart = State.Timestamp.BatchInEpoch == 0;
            if (epochStart)
            {
                Engine.RunEvent(Event.EpochStart);
                Logger.LogMetric("time/epoch", State.Timestamp.Epoch);
            }

            bool finishedEarly = false;
            bool anyBatch = false;
            using (IEnumerator<Batch> batches = loader.GetEpoch(State.Timestamp.Epoch, State.Timestamp.BatchInEpoch).GetEnumerator())
            {
                while (true)
                {
                    using var scope = StepScope.Begin();
                    Engine.RunEvent(Event.BeforeDataloader);
                    if (!batches.MoveNext())
                    {
                        break;
                    }

                    anyBatch = true;
                    State.Batch = ToDevice(batches.Current);
                    long samples = State.Batch.NumSamples;
                    Engine.RunEvent(Event.AfterDataloader);

                    // Samples are the dataloader's (an algorithm that reshapes the batch, e.g. SeqLengthWarmup with
                    // truncate: false, does not change how far through the data the run is, as in Composer); tokens
                    // are counted after AfterDataloader, so the timestamp holds the tokens trained on.
                    long tokens = State.Batch.NumTokens;
                    (long globalSamples, long globalTokens) = _dataParallel.GlobalCounts(samples, tokens); // Distributed
                    Engine.RunEvent(Event.BatchStart);
                    LogTimeMetrics(tokens > 0 || State.Timestamp.Token > 0);

                    (Tensor loss, long localWeight, long globalWeight) = TrainBatch(useGradScaling, globalSamples);
                    GradScaler.Update();
                    if (lossObserved)
                    {
                        // Distributed: the global batch's loss, the ranks weighted as their gradients are (samples, or loss-generating tokens).
                        double l = _dataParallel.GlobalLoss(loss.item<float>(), localWeight, globalWeight);
                        State.Metrics["loss/train/total"] = l;
                        Logger.LogMetric("loss/train/total", l);
                    }
                    else
                    {
                        _lastLoss ??= torch.zeros(1, dtype: ScalarType.Float32, device: State.Device).DetachFromDisposeScope();
                        _lastLoss.copy_(loss);
                        lossUnread = true;
                    }

                    ComputeAndLogMetrics(TrainLabel, _trainMetrics);
                    TimeSpan now = clock.Elapsed;
                    TimeSpan batchTime = now - lastWct;
                    lastWct = now;
                    State.PreviousTimestamp = State.Timestamp;
                    State.Timestamp = State.Timestamp.ToNextBatch(globalSamples, globalTokens, batchTime);
                    ApplySchedulers();
                    Engine.RunEvent(Event.BatchEnd);

                    TimeSpan beforeEval = clock.Elapsed;
                    RunEvaluators(Event.BatchEnd);
                    lastWct += clock.Elapsed - beforeEval;
                    AgreeOnStop();
                    StopIfRequested();
                    Engine.RunEvent(Event.BatchCheckpoint);
                    ClearStepTensors();

                    if (State.MaxDuration!.Value.Unit == TimeUnit.Token && tokens == 0)
                    {
                        throw new InvalidOperationException(
                            $"The max duration '{State.MaxDuration}' is in tokens, but the training batches carry no tokens (no input_ids or attention_mask); give it in epochs, batches or samples.");
                    }

                    if (State.Timestamp >= State.MaxDuration!.Value)
                    {
                        finishedEarly = true;
                        break;
                    }
                }
            }

            ClearStepTensors();
            if (epochStart && !anyBatch)
            {
                throw new InvalidOperationException(
                    $"The training dataloader yielded no batches for epoch {State.Timestamp.Epoch}; check the dataset and batch size (an empty epoch would repeat forever).");
            }

            if (!finishedEarly || loader.BatchesPerEpoch == State.Timestamp.BatchInEpoch)
            {
                ComputeAndLogMetrics(TrainLabel, _trainMetrics);
                State.PreviousTimestamp = State.Timestamp;
                State.Timestamp = State.Timestamp.ToNextEpoch();
                Engine.RunEvent(Event.EpochEnd);
                TimeSpan beforeEval = clock.Elapsed;
                RunEvaluators(Event.EpochEnd);
                lastWct += clock.Elapsed - beforeEval;
                AgreeOnStop();
                StopIfRequested();
                Engine.RunEvent(Event.EpochCheckpoint);

                // An iteration ends after the epoch that completes it (Composer's trainer, after EpochCheckpoint).
                if (State.IterationLength is { } iteration && State.Timestamp.EpochInIteration == (long)iteration.Value)
                {
                    State.PreviousTimestamp = State.Timestamp;
                    State.Timestamp = State.Timestamp.ToNextIteration();
                    Engine.RunEvent(Event.IterationEnd);
                    Engine.RunEvent(Event.IterationCheckpoint);
                }
            }
        }

        if (lossUnread)
        {
            State.Metrics["loss/train/total"] = _lastLoss!.item<float>();
        }

        Logger.LogMetrics(new Dictionary<string, double>
        {
            ["time/epoch"] = State.Timestamp.Epoch,
            ["time/batch"] = State.Timestamp.Batch,
            ["time/sample"] = State.Timestamp.Sample,
            ["time/batch_in_epoch"] = State.Timestamp.BatchInEpoch,
            ["time/sample_in_epoch"] = State.Timestamp.SampleInEpoch,
        });
        Engine.RunEvent(Event.FitEnd);
        RunEvaluators(Event.FitEnd);
    }

    /// <summary>
    /// Turns a cancelled Fit token into Composer's graceful stop (once), before the checkpoint event of the batch or
    /// epoch that just ended, so that the end-of-training save happens there.
    /// </summary>
    private void StopIfRequested()
    {
        if (!_fitCancellation.IsCancellationRequested || StoppedByRequest)
        {
            return;
        }

        StoppedByRequest = true;
        State.StopTraining();
        _log.LogWarning("Stop requested: training stops after batch {Batch} (epoch {Epoch}); a checkpoint is saved now when a save folder is set.", State.Timestamp.Batch, State.Timestamp.Epoch);
    }

    /// <summary>
    /// Distributed: a stop wanted on any rank (a stopper, <see cref="ComposerSharp.Distributed.DataParallel.RequestStop"/>, a stop request on
    /// the Fit token) stops every rank at this boundary, before the checkpoint event, so that all ranks save and
    /// exit together. A no-op for world size 1.
    /// </summary>
    private void AgreeOnStop()
    {
        if (!_dataParallel.Enabled)
        {
            return;
        }

        bool stopHere = State.Timestamp >= State.MaxDuration!.Value;
        if (_dataParallel.AgreeToStop(stopHere || _fitCancellation.IsCancellationRequested) && !stopHere)
        {
            if (_fitCancellation.IsCancellationRequested)
            {
                StopIfRequested();
            }
            else
            {
                State.StopTraining();
            }
        }
    }

    private void LogTimeMetrics(bool withTokens)
    {
        Timestamp ts = State.Timestamp;
        var metrics = new Dictionary<string, double>
        {
            ["time/batch"] = ts.Batch,
            ["time/sample"] = ts.Sample,
            ["time/batch_in_epoch"] = ts.BatchInEpoch,
            ["time/sample_in_epoch"] = ts.SampleInEpoch,
        };
        if (withTokens)
        {
            metrics["time/token"] = ts.Token;
            metrics["time/token_in_epoch"] = ts.TokenInEpoch;
        }

        Logger.LogMetrics(metrics);
    }

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
    /// Sets each parameter group's learning rate to its initial rate times the product of the schedulers' factors at
    /// the current timestamp. Does nothing without schedulers.
    /// </summary>
    private void ApplySchedulers()
    {
        if (State.Schedulers.Count == 0)
        {
            return;
        }

        double factor = 1.0;
        foreach (IScheduler scheduler in State.Schedulers)
        {
            double f = scheduler.Factor(State);
            if (!double.IsFinite(f) || f < 0)
            {
                throw new InvalidOperationException($"Scheduler {scheduler} returned factor {f} at {State.Timestamp.Get(TimeUnit.Batch)}; factors must be finite and ≥ 0.");
            }

            factor *= f;
        }

        foreach (optim.Optimizer optimizer in State.Optimizers)
        {
            foreach (optim.ILearningRateController group in optimizer.ParamGroups)
            {
                group.LearningRate = group.InitialLearningRate * factor;
            }
        }
    }

    private void ComputeAndLogMetrics(string label, IReadOnlyList<IMetric> metrics)
    {
        if (metrics.Count == 0)
        {
            return;
        }

        var computed = new Dictionary<string, double>(metrics.Count);
        using (_dataParallel.SynchronizeMetrics(metrics)) // Distributed: metric states summed over ranks, then restored
        {
            foreach (IMetric metric in metrics)
            {
                string key = $"metrics/{label}/{metric.Name}";
                double value = metric.Compute();
                computed[key] = value;
                State.Metrics[key] = value;
            }
        }

        Logger.LogMetrics(computed);
    }

    private static void RestoreRngState(byte[] state)
    {
        using var scope = torch.NewDisposeScope();
        Tensor t = torch.tensor(state, dtype: ScalarType.Byte);
        torch.set_rng_state(t);
    }
}
