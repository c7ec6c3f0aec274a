using System.Diagnostics;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>
/// Evaluation (Composer's <c>eval</c>, <c>_run_evaluators</c> and <c>_eval_loop</c>): the evaluators, their passes
/// during and outside of <see cref="Fit"/>, and the inference pass that evaluation and <see cref="Predict"/> share.
/// </summary>
public sealed partial class Trainer
{
    private readonly List<EvaluatorRun> _evaluators = new();

    /// <summary>The evaluators, in the order they run.</summary>
    public IReadOnlyList<Evaluator> Evaluators => _evaluators.Select(e => e.Evaluator).ToList();

    /// <summary>
    /// Evaluates outside of <see cref="Fit"/> (Composer's <c>eval</c>): EvalStandaloneStart, then for each evaluator
    /// (or only <paramref name="evalDataloader"/>, under <paramref name="label"/>) EvalStart, per batch
    /// EvalBatchStart, EvalBeforeForward, EvalAfterForward, EvalBatchEnd, then EvalEnd; finally EvalStandaloneEnd.
    /// Metrics are logged as <c>metrics/&lt;label&gt;/&lt;Name&gt;</c>.
    /// </summary>
    /// <param name="evalDataloader">Batches to evaluate instead of the Trainer's evaluators.</param>
    /// <param name="label">Label for <paramref name="evalDataloader"/>.</param>
    /// <param name="subsetNumBatches">Evaluate at most this many batches per loader; null uses each evaluator's own cap.</param>
    /// <returns>The computed metrics, <c>metrics/&lt;label&gt;/&lt;Name&gt;</c> → value.</returns>
    /// <exception cref="InvalidOperationException">No loader was given and the Trainer has no evaluators.</exception>
    public IReadOnlyDictionary<string, double> Eval(IDataLoader? evalDataloader = null, string label = "eval", long? subsetNumBatches = null)
    {
        ThrowIfClosed();
        if (subsetNumBatches is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(subsetNumBatches), subsetNumBatches, "subsetNumBatches must be at least 1, or null for whole loaders.");
        }

        List<EvaluatorRun> runs;
        if (evalDataloader is not null)
        {
            var evaluator = new Evaluator(label, evalDataloader);
            if (subsetNumBatches is null && evalDataloader.BatchesPerEpoch is null)
            {
                throw new ArgumentException("The evaluation dataloader's length is unknown; pass subsetNumBatches so evaluation ends.", nameof(subsetNumBatches));
            }

            runs = new List<EvaluatorRun> { new(evaluator, _model.GetMetrics(isTrain: false), new IntervalSchedule(Time.FromEpoch(1)), null) };
        }
        else
        {
            if (_evaluators.Count == 0)
            {
                throw new InvalidOperationException("No evaluation dataloader: pass evalDataloader to the Trainer or to Eval.");
            }

            runs = _evaluators;
        }

        var results = new Dictionary<string, double>();
        Engine.RunEvent(Event.EvalStandaloneStart);
        foreach (EvaluatorRun run in runs)
        {
            foreach ((string key, double value) in EvalLoop(run, subsetNumBatches ?? run.SubsetNumBatches))
            {
                results[key] = value;
            }
        }

        Engine.RunEvent(Event.EvalStandaloneEnd);
        return results;
    }

    /// <summary>
    /// Whether a stop request cuts evaluations short. Distributed: not with several ranks, whose requests arrive at
    /// different moments; they finish the evaluation and stop together at the next agreed boundary.
    /// </summary>
    private bool EvalStopRequested => !_dataParallel.Enabled && _fitCancellation.IsCancellationRequested;

    /// <summary>Runs the evaluators whose interval is due at <paramref name="e"/> (Composer's <c>_run_evaluators</c>).</summary>
    private void RunEvaluators(Event e)
    {
        var due = _evaluators.Where(run => run.Schedule.IsDue(State, e)).ToList();
        if (due.Count == 0 || EvalStopRequested)
        {
            // A stop request (preemption) skips evaluations that have not started: time is short.
            return;
        }

        Engine.RunEvent(Event.EvalBeforeAll);
        foreach (EvaluatorRun run in due)
        {
            EvalLoop(run, run.SubsetNumBatches);
        }

        Engine.RunEvent(Event.EvalAfterAll);
    }

    /// <summary>One evaluator over its loader (Composer's <c>_eval_loop</c>); returns the computed metrics.</summary>
    private Dictionary<string, double> EvalLoop(EvaluatorRun run, long? subsetNumBatches)
    {
        var computed = new Dictionary<string, double>();
        State.EvalTimestamp = new Timestamp();
        InferencePass(
            run.Evaluator.Dataloader,
            run.Evaluator.Label,
            subsetNumBatches,
            Event.EvalStart,
            Event.EvalEnd,
            (batch, lap) =>
            {
                Engine.RunEvent(Event.EvalBatchStart);
                Engine.RunEvent(Event.EvalBeforeForward);
                using (State.Precision.Enter(State.Device.type))
                {
                    State.Outputs = _model.EvalForward(batch);
                }

                Engine.RunEvent(Event.EvalAfterForward);
                using (State.Precision.Enter(State.Device.type))
                {
                    foreach (IMetric metric in run.Metrics)
                    {
                        _model.UpdateMetric(batch, State.Outputs, metric);
                    }
                }

                State.EvalTimestamp = State.EvalTimestamp.ToNextBatch(batch.NumSamples, batch.NumTokens, lap());
                Engine.RunEvent(Event.EvalBatchEnd);
            },
            afterStart: () =>
            {
                foreach (IMetric metric in run.Metrics)
                {
                    metric.Reset();
                }
            },
            beforeEnd: () => computed = ComputeAndLogMetrics(run.Evaluator.Label, run.Metrics));
        return computed;
    }

    /// <summary>
    /// A pass over <paramref name="loader"/> in evaluation mode without gradients, with <see cref="State.Dataloader"/>
    /// and its label set for the pass and restored afterwards (as is the model's training mode): the start event,
    /// each batch moved to the device and handed to <paramref name="step"/> (with a lap timer giving the time since the
    /// previous batch) inside its own dispose scope, then the end event.
    /// </summary>
    private void InferencePass(
        IDataLoader loader,
        string label,
        long? subsetNumBatches,
        Event startEvent,
        Event endEvent,
        Action<Batch, Func<TimeSpan>> step,
        Action? afterStart = null,
        Action? beforeEnd = null)
    {
        IDataLoader? originalLoader = State.Dataloader;
        string? originalLabel = State.DataloaderLabel;
        bool wasTraining = State.Model.training;
        var clock = Stopwatch.StartNew();
        TimeSpan last = clock.Elapsed;
        TimeSpan Lap()
        {
            TimeSpan now = clock.Elapsed;
            TimeSpan lap = now - last;
            last = now;
            return lap;
        }

        try
        {
            State.Model.eval();
            using var noGrad = torch.no_grad();
            State.Dataloader = loader;
            State.DataloaderLabel = label;
            Engine.RunEvent(startEvent);
            afterStart?.Invoke();
            long done = ForEachBatchInScope(_dataParallel.ShardForEvaluation(loader).GetEpoch(0), subsetNumBatches, () => EvalStopRequested, batch => // Distributed: this rank's shard
            {
                State.Batch = ToDevice(batch);
                step(State.Batch, Lap);
                ClearStepTensors();
            });
            if (EvalStopRequested)
            {
                // Stopped part-way by a stop request during Fit: metrics of a partial pass would mislead, so none are computed.
                _log.LogWarning("The '{Label}' pass was interrupted by the stop request after {Batches} batches; its metrics are not computed.", label, done);
            }
            else
            {
                beforeEnd?.Invoke();
            }

            Engine.RunEvent(endEvent);
        }
        finally
        {
            ClearStepTensors();
            State.Model.train(wasTraining);
            State.Dataloader = originalLoader;
            State.DataloaderLabel = originalLabel;
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/> on at most <paramref name="limit"/> batches, each inside its own dispose scope
    /// that is opened before the batch is produced, so the batch's tensors belong to it; stops before a batch when
    /// <paramref name="stop"/> says so. Returns the number of batches run.
    /// </summary>
    private static long ForEachBatchInScope(IEnumerable<Batch> batches, long? limit, Func<bool> stop, Action<Batch> body)
    {
        using IEnumerator<Batch> enumerator = batches.GetEnumerator();
        long i = 0;
        for (; (limit is null || i < limit) && !stop(); i++)
        {
            using var scope = StepScope.Begin();
            if (!enumerator.MoveNext())
            {
                break;
            }

            body(enumerator.Current);
        }

        return i;
    }

    private void AddEvaluator(Evaluator evaluator, Time defaultInterval, long? defaultSubset)
    {
        if (_evaluators.Any(e => e.Evaluator.Label == evaluator.Label) || evaluator.Label == TrainLabel)
        {
            throw new ArgumentException($"Evaluator label '{evaluator.Label}' is already used; give each evaluator a unique label other than '{TrainLabel}'.", nameof(evaluator));
        }

        if (evaluator.SubsetNumBatches is null && defaultSubset is null && evaluator.Dataloader.BatchesPerEpoch is null)
        {
            throw new ArgumentException(
                $"Evaluator '{evaluator.Label}' has a dataloader of unknown length; set its subsetNumBatches (or evalSubsetNumBatches) so evaluation ends.", nameof(evaluator));
        }

        IReadOnlyList<IMetric> all = _model.GetMetrics(isTrain: false);
        IReadOnlyList<IMetric> metrics = all;
        if (evaluator.MetricNames is { } names)
        {
            string[] unknown = names.Where(n => all.All(m => m.Name != n)).ToArray();
            if (unknown.Length > 0)
            {
                throw new ArgumentException(
                    $"Evaluator '{evaluator.Label}' asks for metrics {string.Join(", ", unknown)}, which the model does not provide (it has: {string.Join(", ", all.Select(m => m.Name))}).",
                    nameof(evaluator));
            }

            metrics = all.Where(m => names.Contains(m.Name)).ToList();
        }

        var schedule = new IntervalSchedule(evaluator.EvalInterval ?? defaultInterval, checkpointEvents: false, finalEvents: new[] { Event.FitEnd });
        _evaluators.Add(new EvaluatorRun(evaluator, metrics, schedule, evaluator.SubsetNumBatches ?? defaultSubset));
        State.EvalDataloaders[evaluator.Label] = evaluator.Dataloader;
    }

    /// <summary>An evaluator with its metric instances and interval schedule.</summary>
    private sealed record EvaluatorRun(Evaluator Evaluator, IReadOnlyList<IMetric> Metrics, IntervalSchedule Schedule, long? SubsetNumBatches);
}
