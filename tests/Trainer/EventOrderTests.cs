using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>The loop raises Composer's events in Composer's order and counts (tests/test_events.py).</summary>
[TestFixture]
public class EventOrderTests
{
    private static readonly Event[] Microbatch =
    {
        Event.BeforeForward, Event.AfterForward, Event.BeforeLoss, Event.AfterLoss, Event.BeforeBackward, Event.AfterBackward,
    };

    [Test]
    [Category(TestCategories.Slow)]
    public void EventCountsMatchComposerForTwoEpochsWithMicrobatchesAndEval()
    {
        // 5 batches of 8 samples, microbatch 3 → ceil(8/3) = 3 microbatches per batch; eval every epoch on 2 batches.
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "2ep", callbacks: new[] { recorder },
            eval: TestData.Loader(12, 6), evalInterval: "1ep", microbatch: 3);
        trainer.Fit();

        const int steps = 10, epochs = 2, microbatches = steps * 3, evals = 2, evalBatches = evals * 2;
        var expected = new Dictionary<Event, int>
        {
            [Event.Init] = 1, [Event.BeforeLoad] = 1, [Event.AfterLoad] = 1, [Event.FitStart] = 1, [Event.IterationStart] = 1,
            [Event.EpochStart] = epochs, [Event.BeforeDataloader] = steps + epochs, [Event.AfterDataloader] = steps,
            [Event.BatchStart] = steps, [Event.BeforeTrainBatch] = steps, [Event.AfterTrainBatch] = steps,
            [Event.BeforeForward] = microbatches, [Event.AfterForward] = microbatches, [Event.BeforeLoss] = microbatches,
            [Event.AfterLoss] = microbatches, [Event.BeforeBackward] = microbatches, [Event.AfterBackward] = microbatches,
            [Event.BatchEnd] = steps, [Event.BatchCheckpoint] = steps, [Event.EpochEnd] = epochs, [Event.EpochCheckpoint] = epochs,
            [Event.IterationEnd] = 0, [Event.IterationCheckpoint] = 0, [Event.FitEnd] = 1,
            [Event.EvalBeforeAll] = evals, [Event.EvalStart] = evals, [Event.EvalBatchStart] = evalBatches,
            [Event.EvalBeforeForward] = evalBatches, [Event.EvalAfterForward] = evalBatches, [Event.EvalBatchEnd] = evalBatches,
            [Event.EvalEnd] = evals, [Event.EvalAfterAll] = evals,
            [Event.EvalStandaloneStart] = 0, [Event.PredictStart] = 0,
        };
        foreach ((Event e, int count) in expected)
        {
            Assert.That(recorder.Count(e), Is.EqualTo(count), $"count of {e.ToComposerName()}");
        }
    }

    [Test]
    public void WithAnIterationLengthIterationsEndAfterTheirLastEpochCheckpoint()
    {
        // 3 epochs of 2 batches, iterations of 2 epochs (set at Init, as a curriculum callback would): the first
        // iteration ends after epoch 2; the third epoch starts a second iteration that the max duration cuts short.
        var recorder = new EventRecorder();
        var setLength = new ActionCallback(Event.Init, s => s.IterationLength = "2ep");
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "3ep", callbacks: new ICallback[] { setLength, recorder });
        trainer.Fit();

        Assert.That((recorder.Count(Event.IterationStart), recorder.Count(Event.IterationEnd), recorder.Count(Event.IterationCheckpoint)), Is.EqualTo((2, 1, 1)));
        Assert.That(recorder.Count(Event.EpochEnd), Is.EqualTo(3));
        int end = recorder.Events.IndexOf(Event.IterationEnd);
        Assert.That(recorder.Events.GetRange(end - 1, 5), Is.EqualTo(new[] { Event.EpochCheckpoint, Event.IterationEnd, Event.IterationCheckpoint, Event.IterationStart, Event.EpochStart }));
        Assert.That(recorder.Events.Take(end).Count(e => e == Event.EpochEnd), Is.EqualTo(2), "the iteration ends after its second epoch");
        Assert.That((trainer.State.Timestamp.Iteration, trainer.State.Timestamp.EpochInIteration, trainer.State.Timestamp.Epoch), Is.EqualTo((1L, 1L, 3L)));
    }

    [TestCase("1ba")]
    [TestCase("0ep")]
    [TestCase("2sp")]
    public void AnIterationLengthMustBeAPositiveNumberOfEpochs(string length)
    {
        var state = new State(TestData.Model());
        var ex = Assert.Throws<ArgumentException>(() => state.IterationLength = length);
        Assert.That(ex!.Message, Does.Contain(length).And.Contain("epochs"));
    }

    [Test]
    public void FirstBatchAndEpochEndFollowComposersOrder()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(8, 4), "1ep", callbacks: new[] { recorder },
            eval: TestData.Loader(4, 4), microbatch: 2);
        trainer.Fit();

        var batch = new List<Event> { Event.BeforeDataloader, Event.AfterDataloader, Event.BatchStart, Event.BeforeTrainBatch };
        batch.AddRange(Microbatch);
        batch.AddRange(Microbatch);
        batch.AddRange(new[] { Event.AfterTrainBatch, Event.BatchEnd, Event.BatchCheckpoint });
        var expected = new List<Event> { Event.Init, Event.BeforeLoad, Event.AfterLoad, Event.FitStart, Event.IterationStart, Event.EpochStart };
        expected.AddRange(batch);
        expected.AddRange(batch);
        expected.AddRange(new[]
        {
            Event.BeforeDataloader, Event.EpochEnd,
            Event.EvalBeforeAll, Event.EvalStart, Event.EvalBatchStart, Event.EvalBeforeForward, Event.EvalAfterForward, Event.EvalBatchEnd, Event.EvalEnd, Event.EvalAfterAll,
            Event.EpochCheckpoint, Event.FitEnd,
        });
        Assert.That(recorder.Events, Is.EqualTo(expected));
    }

    [Test]
    public void StateBatchIsWholeBatchOutsideAndMicrobatchInsideAndTimestampAdvancesBeforeBatchEnd()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "1ep", callbacks: new[] { recorder }, microbatch: 3);
        trainer.Fit();

        foreach ((Event e, long batchCount, long? samples) in recorder.Details)
        {
            if (e is Event.AfterDataloader or Event.BatchStart or Event.BeforeTrainBatch or Event.AfterTrainBatch or Event.BatchEnd)
            {
                Assert.That(samples, Is.EqualTo(8), $"{e} sees the whole batch");
            }

            if (e is Event.BeforeForward or Event.AfterBackward)
            {
                Assert.That(samples, Is.AnyOf(3L, 2L), $"{e} sees a microbatch");
            }
        }

        long[] atAfterTrainBatch = recorder.Details.Where(d => d.Event == Event.AfterTrainBatch).Select(d => d.Batch).ToArray();
        long[] atBatchEnd = recorder.Details.Where(d => d.Event == Event.BatchEnd).Select(d => d.Batch).ToArray();
        Assert.That(atAfterTrainBatch, Is.EqualTo(new long[] { 0, 1 }));
        Assert.That(atBatchEnd, Is.EqualTo(new long[] { 1, 2 }), "the timestamp is advanced before BatchEnd");
        long[] microSizes = recorder.Details.Where(d => d.Event == Event.BeforeForward).Select(d => d.BatchSamples!.Value).ToArray();
        Assert.That(microSizes, Is.EqualTo(new long[] { 3, 3, 2, 3, 3, 2 }));
    }

    [Test]
    public void OptimizerStepsAfterAfterTrainBatchAndBeforeBatchEnd()
    {
        double[]? atAfterTrainBatch = null, atBatchEnd = null, atBatchStart = null;
        var model = TestData.Model();
        using var trainer = TestData.Trainer(model, TestData.Loader(8, 8), "1ba", callbacks: new ICallback[]
        {
            new ActionCallback(Event.BatchStart, _ => atBatchStart = TestData.Weights(model)),
            new ActionCallback(Event.AfterTrainBatch, _ => atAfterTrainBatch = TestData.Weights(model)),
            new ActionCallback(Event.BatchEnd, _ => atBatchEnd = TestData.Weights(model)),
        });
        trainer.Fit();
        Assert.That(atAfterTrainBatch, Is.EqualTo(atBatchStart), "no step before AfterTrainBatch");
        Assert.That(atBatchEnd, Is.Not.EqualTo(atAfterTrainBatch), "the step happened before BatchEnd");
    }

    [Test]
    public void StandaloneEvalAndPredictRaiseTheirEventsAndPredictReturnsCpuOutputs()
    {
        var recorder = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), null, null, callbacks: new[] { recorder }, eval: TestData.Loader(10, 4));
        recorder.Events.Clear();
        IReadOnlyDictionary<string, double> metrics = trainer.Eval();
        Assert.That(recorder.Events, Is.EqualTo(new[]
        {
            Event.EvalStandaloneStart, Event.EvalStart,
            Event.EvalBatchStart, Event.EvalBeforeForward, Event.EvalAfterForward, Event.EvalBatchEnd,
            Event.EvalBatchStart, Event.EvalBeforeForward, Event.EvalAfterForward, Event.EvalBatchEnd,
            Event.EvalBatchStart, Event.EvalBeforeForward, Event.EvalAfterForward, Event.EvalBatchEnd,
            Event.EvalEnd, Event.EvalStandaloneEnd,
        }));
        Assert.That(metrics.Keys, Is.EquivalentTo(new[] { "metrics/eval/Accuracy", "metrics/eval/CrossEntropy" }));
        Assert.That(metrics["metrics/eval/Accuracy"], Is.InRange(0.0, 1.0));
        Assert.That(trainer.State.EvalTimestamp.Sample, Is.EqualTo(10));

        recorder.Events.Clear();
        IReadOnlyList<Tensor> outputs = trainer.Predict(TestData.Loader(10, 4));
        try
        {
            Assert.That(recorder.Events.First(), Is.EqualTo(Event.PredictStart));
            Assert.That(recorder.Events.Last(), Is.EqualTo(Event.PredictEnd));
            Assert.That(recorder.Count(Event.PredictBatchStart), Is.EqualTo(3));
            Assert.That(recorder.Count(Event.PredictAfterForward), Is.EqualTo(3));
            Assert.That(outputs.Select(o => o.shape[0]), Is.EqualTo(new long[] { 4, 4, 2 }));
            Assert.That(outputs.Select(o => (o.shape[1], o.device_type, o.dtype)), Has.All.EqualTo((3L, DeviceType.CPU, ScalarType.Float32)));
            Assert.That(trainer.State.Model.training, Is.True, "predict restores the training mode");
        }
        finally
        {
            foreach (Tensor t in outputs)
            {
                t.Dispose();
            }
        }
    }

    [Test]
    public void EvalWithoutAnyLoaderIsRefused()
    {
        using var trainer = TestData.Trainer(TestData.Model(), null, null);
        var ex = Assert.Throws<InvalidOperationException>(() => trainer.Eval());
        Assert.That(ex!.Message, Does.Contain("evalDataloader"));
    }
}
