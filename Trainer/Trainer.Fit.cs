using System.Diagnostics;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>
/// The fit loop (Composer's <c>fit</c> and <c>_train_loop</c>): iterations, epochs and batches with their events, the
/// timestamp, schedulers, evaluation when due, the stop decision and the checkpoint events. Each batch's training step
/// itself is in Trainer.Step.cs.
/// </summary>
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
            // An elastic loader resumes at the global sample (exact for any world size); others at the batch.
            IEnumerable<Batch> epochBatches = loader is ISampleResumableDataLoader { CanResumeAtSample: true } elastic && State.Timestamp.SampleInEpoch > 0
                ? elastic.GetEpochFromSample(State.Timestamp.Epoch, State.Timestamp.SampleInEpoch)
                : loader.GetEpoch(State.Timestamp.Epoch, State.Timestamp.BatchInEpoch);
            using (IEnumerator<Batch> batches = epochBatches.GetEnumerator())
            {
                while (true)
                {
                    using var scope = StepScope.Begin();
                    Engine.RunEvent(Event.BeforeDataloader);
                    TimeSpan waitStart = clock.Elapsed;
                    if (!batches.MoveNext())
                    {
                        break;
                    }

                    TimeSpan dataWait = clock.Elapsed - waitStart;

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
                    LogDataWait(dataWait, batchTime);
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

    /// <summary>
    /// Logs how long the training thread waited for the batch (<c>time/data_wait</c>, seconds) and that wait's share
    /// of the whole step (<c>time/data_wait_fraction</c>, 0…1): a loader keeping up has a share near 0.
    /// </summary>
    private void LogDataWait(TimeSpan dataWait, TimeSpan batchTime)
    {
        Logger.LogMetrics(new Dictionary<string, double>
        {
            ["time/data_wait"] = dataWait.TotalSeconds,
            ["time/data_wait_fraction"] = batchTime > TimeSpan.Zero ? dataWait.TotalSeconds / batchTime.TotalSeconds : 0,
        });
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

    private static void RestoreRngState(byte[] state)
    {
        using var scope = torch.NewDisposeScope();
        Tensor t = torch.tensor(state, dtype: ScalarType.Byte);
        torch.set_rng_state(t);
    }
}
