using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>Evaluation runs when Composer's interval rule says so; metrics are logged under Composer's names.</summary>
[TestFixture]
public class EvalIntervalTests
{
    /// <summary>The batch count at each EvalStart.</summary>
    private static List<long> EvalBatches(Time maxDuration, Time? evalInterval, int samples = 40, int batchSize = 8)
    {
        var at = new List<long>();
        var probe = new ActionCallback(Event.EvalStart, s => at.Add(s.Timestamp.Batch));
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(samples, batchSize), maxDuration, callbacks: new[] { probe },
            eval: TestData.Loader(8, 8), evalInterval: evalInterval);
        trainer.Fit();
        return at;
    }

    [Test]
    public void BatchIntervalThatDoesNotDivideTheRunAlsoEvaluatesAtTheEnd()
    {
        Assert.That(EvalBatches("10ba", "3ba"), Is.EqualTo(new long[] { 3, 6, 9, 10 }));
    }

    [Test]
    public void BatchIntervalThatDividesTheRunDoesNotRepeatAtTheEnd()
    {
        Assert.That(EvalBatches("10ba", "5ba"), Is.EqualTo(new long[] { 5, 10 }));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void DefaultIsEveryEpochAndNoExtraEvaluationAtFitEnd()
    {
        Assert.That(EvalBatches("2ep", null), Is.EqualTo(new long[] { 5, 10 }));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void IntegerIntervalMeansEpochs()
    {
        Assert.That(EvalBatches("4ep", 2), Is.EqualTo(new long[] { 10, 20 }));
    }

    [Test]
    public void DurationIntervalOfAnEpochBudget()
    {
        // 0.25dur of 2ep × 5 batches = every ceil(2.5) = 3 batches: 3, 6, 9, and the end at 10.
        Assert.That(EvalBatches("2ep", "0.25dur"), Is.EqualTo(new long[] { 3, 6, 9, 10 }));
    }

    [Test]
    public void ZeroIntervalDisablesEvaluation()
    {
        Assert.That(EvalBatches("2ep", 0), Is.Empty);
    }

    [Test]
    public void EpochBudgetEndingMidEpochEvaluatesAtFitEnd()
    {
        // "7ba" with a 1ep interval: at the end of epoch 1 (batch 5), then at FitEnd (batch 7).
        Assert.That(EvalBatches("7ba", "1ep"), Is.EqualTo(new long[] { 5, 7 }));
    }

    [Test]
    public void MetricsAreLoggedAsMetricsEvalNameAndLossAsLossTrainTotal()
    {
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(24, 8), "1ep", loggers: new[] { logger }, eval: TestData.Loader(16, 8));
        trainer.Fit();
        Assert.That(logger.Values("loss/train/total").Count(), Is.EqualTo(3));
        Assert.That(logger.Values("metrics/eval/Accuracy").Single(), Is.InRange(0.0, 1.0));
        Assert.That(logger.Values("metrics/eval/CrossEntropy").Single(), Is.GreaterThan(0));
        Assert.That(logger.Values("metrics/train/Accuracy").Count(), Is.EqualTo(4), "after each batch and at the epoch end");
        Assert.That(trainer.State.Metrics["metrics/eval/Accuracy"], Is.EqualTo(logger.Values("metrics/eval/Accuracy").Single()));
        Assert.That(logger.Metrics.Single(m => m.Name == "metrics/eval/Accuracy").Step, Is.EqualTo(3), "logged at the batch count");
    }

    [Test]
    public void EvaluatorsWithOwnLabelsIntervalsAndMetricSubsets()
    {
        var logger = new MemoryLogger();
        var labels = new List<(string, long)>();
        var probe = new ActionCallback(Event.EvalEnd, s => labels.Add((s.DataloaderLabel!, s.Timestamp.Batch)));
        using var trainer = new Trainer(TestData.Model(), new TrainerOptions { MaxDuration = "2ep", Device = "cpu", ProgressBar = false },
            TestData.Loader(32, 8), callbacks: new[] { probe }, loggers: new[] { logger },
            evaluators: new[]
            {
                new Evaluator("val", TestData.Loader(8, 4), metricNames: new[] { "Accuracy" }, evalInterval: "2ba", subsetNumBatches: 1),
                new Evaluator("test", TestData.Loader(8, 4)),
            });
        trainer.Fit();
        Assert.That(labels, Is.EqualTo(new[] { ("val", 2L), ("val", 4L), ("test", 4L), ("val", 6L), ("val", 8L), ("test", 8L) }));
        Assert.That(logger.Values("metrics/val/CrossEntropy"), Is.Empty);
        Assert.That(logger.Values("metrics/test/CrossEntropy").Count(), Is.EqualTo(2));
        var bad = Assert.Throws<ArgumentException>(() => new Trainer(TestData.Model(), new TrainerOptions { Device = "cpu", ProgressBar = false },
            evaluators: new[] { new Evaluator("x", TestData.Loader(8, 4), metricNames: new[] { "F1" }) }));
        Assert.That(bad!.Message, Does.Contain("F1").And.Contain("Accuracy"));
    }

    [Test]
    public void IntervalScheduleUnitRule()
    {
        var schedule = new IntervalSchedule("3sp", checkpointEvents: false, finalEvents: new[] { Event.FitEnd });
        var state = new State(TestData.Model()) { MaxDuration = "100sp" };
        state.PreviousTimestamp = new Timestamp { Sample = 2 };
        state.Timestamp = new Timestamp { Sample = 4, Batch = 2 };
        Assert.That(schedule.IsDue(state, Event.BatchEnd), Is.True, "crossed 3 samples");
        Assert.That(schedule.IsDue(state, Event.EpochEnd), Is.False, "not the interval event");
        state.PreviousTimestamp = state.Timestamp;
        state.Timestamp = new Timestamp { Sample = 5, Batch = 3 };
        Assert.That(schedule.IsDue(state, Event.BatchEnd), Is.False);
        Assert.Throws<ArgumentException>(() => new IntervalSchedule("10sec"));
    }
}

public class EvalIntervalZeroTests
{
    [Test]
    public void AnEvalIntervalOfZeroSaysThatEvaluationDuringTrainingIsOff()
    {
        var log = new CapturingLoggerFactory();
        var events = new EventRecorder();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ba", eval: TestData.Loader(8, 8), evalInterval: "0ba", loggerFactory: log, callbacks: new[] { events });
        trainer.Fit();
        Assert.That(log.Entries.Select(e => e.Message), Has.Some.Contains("Evaluation during training is off"));
        Assert.That(events.Count(ComposerSharp.Events.Event.EvalStart), Is.Zero);
    }
}
