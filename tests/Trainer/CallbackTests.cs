using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>The stock callbacks: stoppers, monitors and the runtime estimate.</summary>
[TestFixture]
public class CallbackTests
{
    private static State StateAt(long epoch, long batch, string label, string metric, double value)
    {
        var state = new State(TestData.Model())
        {
            MaxDuration = "100ep",
            Timestamp = new Timestamp { Epoch = epoch, Batch = batch },
            DataloaderLabel = label,
        };
        state.Metrics[$"metrics/{label}/{metric}"] = value;
        return state;
    }

    [Test]
    public void EarlyStopperUsesComposersComparisonMinDeltaAndPatience()
    {
        var logger = new Logger(new State(TestData.Model()));
        var stopper = new EarlyStopper("Accuracy", "eval", minDelta: 0.05, patience: 2);

        // Accuracy: greater is better. 0.50 best (ep1); 0.53 is not better by more than 0.05; 0.56 is (ep3);
        // then no improvement at ep4, ep5; at ep6 three epochs have passed (> patience 2) → stop.
        (long Epoch, double Value, bool Stops)[] script =
        {
            (1, 0.50, false), (2, 0.53, false), (3, 0.56, false), (4, 0.56, false), (5, 0.40, false), (6, 0.55, true),
        };
        foreach ((long epoch, double value, bool stops) in script)
        {
            State s = StateAt(epoch, epoch * 10, "eval", "Accuracy", value);
            stopper.EvalEnd(s, logger);
            Assert.That(s.MaxDuration, stops ? Is.EqualTo(Time.FromBatch(epoch * 10)) : Is.EqualTo(Time.FromEpoch(100)), $"epoch {epoch}");
        }

        Assert.That(stopper.Best, Is.EqualTo(0.56));

        // A name containing "loss": less is better by default (Composer's rule; "CrossEntropy" alone would be "greater").
        var lossStopper = new EarlyStopper("CrossEntropyLoss", "eval", patience: "3ba");
        lossStopper.EvalEnd(StateAt(0, 1, "eval", "CrossEntropyLoss", 1.0), logger);
        lossStopper.EvalEnd(StateAt(0, 2, "eval", "CrossEntropyLoss", 0.9), logger);
        State late = StateAt(0, 6, "eval", "CrossEntropyLoss", 0.95);
        lossStopper.EvalEnd(late, logger);
        Assert.That(lossStopper.Best, Is.EqualTo(0.9));
        Assert.That(late.MaxDuration, Is.EqualTo(Time.FromBatch(6)), "4 batches since the best > 3");

        // Another label's evaluation is ignored; a missing metric is a clear error.
        State other = StateAt(7, 70, "test", "Accuracy", 0.1);
        stopper.EvalEnd(other, logger);
        Assert.That(other.MaxDuration, Is.EqualTo(Time.FromEpoch(100)));
        var missing = Assert.Throws<InvalidOperationException>(() => new EarlyStopper("F1", "eval").EvalEnd(StateAt(1, 1, "eval", "Accuracy", 1), logger));
        Assert.That(missing!.Message, Does.Contain("F1").And.Contain("eval"));
        Assert.Throws<ArgumentException>(() => new EarlyStopper("Accuracy", "eval", comp: "bigger"));
        Assert.Throws<ArgumentException>(() => new EarlyStopper("Accuracy", "eval", patience: "10sp"));
    }

    [Test]
    public void EarlyStopperStopsATrainerWhoseMetricCannotImprove()
    {
        // Learning rate 0: the eval metric never changes, so with patience 1 the run stops at epoch 3 of 10.
        var stopper = new EarlyStopper("Accuracy", "eval", patience: 1);
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "10ep", callbacks: new[] { stopper },
            eval: TestData.Loader(16, 8), optimizerFactory: p => torch.optim.SGD(p, 0.0));
        trainer.Fit();
        Assert.That(stopper.Stopped, Is.True);
        Assert.That(trainer.State.Timestamp.Epoch, Is.EqualTo(3));
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(6));
    }

    [Test]
    public void ThresholdStopperStopsWhenTheMetricPasses()
    {
        var reached = new ThresholdStopper("Accuracy", "eval", threshold: -1.0);
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "5ep", callbacks: new[] { reached }, eval: TestData.Loader(8, 8));
        trainer.Fit();
        Assert.That(reached.Stopped, Is.True);
        Assert.That(trainer.State.Timestamp.Epoch, Is.EqualTo(1), "accuracy > −1 after the first evaluation");

        var never = new ThresholdStopper("CrossEntropy", "eval", threshold: 0.0, comp: "lt");
        using var trainer2 = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ep", callbacks: new[] { never }, eval: TestData.Loader(8, 8));
        trainer2.Fit();
        Assert.That(never.Stopped, Is.False, "cross-entropy never drops below 0");
        Assert.That(trainer2.State.Timestamp.Epoch, Is.EqualTo(2));

        var onBatch = new ThresholdStopper("Accuracy", "train", threshold: -1.0, comp: "gt", stopOnBatch: true);
        using var trainer3 = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "2ep", callbacks: new[] { onBatch });
        trainer3.Fit();
        Assert.That(trainer3.State.Timestamp.Batch, Is.EqualTo(1), "checked on the train metric at the first BatchEnd");
    }

    [Test]
    public void LRMonitorLogsEachGroupsRateAtBatchEnd()
    {
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(32, 8), "4ba", callbacks: new[] { new LRMonitor() }, loggers: new[] { logger },
            schedulers: new[] { new ComposerSharp.Training.Optim.LinearWithWarmupScheduler("4ba") }, optimizerFactory: p => torch.optim.SGD(p, 0.2));
        trainer.Fit();
        // At BatchEnd the rate is the next batch's: 0.2 × (k + 1)/4 for k = 0..2, then 0.2 × alpha_i at the end.
        Assert.That(logger.Values("lr-SGD/group0"), Is.EqualTo(new[] { 0.05, 0.1, 0.15, 0.2 }).Within(1e-12));
    }

    [Test]
    public void SpeedMonitorReportsConsistentThroughputAndWallClock()
    {
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(48, 8, tokensPerSample: 3), "6ba",
            callbacks: new[] { new SpeedMonitor(windowSize: 2, timeUnit: "seconds") }, loggers: new[] { logger });
        trainer.Fit();
        double[] batches = logger.Values("throughput/batches_per_sec").ToArray();
        double[] samples = logger.Values("throughput/samples_per_sec").ToArray();
        double[] tokens = logger.Values("throughput/tokens_per_sec").ToArray();
        Assert.That(batches, Has.Length.EqualTo(4), "from the third batch on (window 2 needs 3 timestamps)");
        for (int i = 0; i < batches.Length; i++)
        {
            Assert.That(batches[i], Is.GreaterThan(0));
            Assert.That(samples[i], Is.EqualTo(8 * batches[i]).Within(1e-9 * samples[i]), "8 samples per batch");
            Assert.That(tokens[i], Is.EqualTo(24 * batches[i]).Within(1e-9 * tokens[i]), "24 tokens per batch");
        }

        double[] batchWct = logger.Values("time/batch_wct").ToArray();
        Assert.That(batchWct, Has.Length.EqualTo(6).And.All.GreaterThan(0));
        Assert.That(logger.Values("time/train").Last(), Is.EqualTo(batchWct.Sum()).Within(1e-6), "train time is the sum of batch times");
    }

    [Test]
    public void MemoryMonitorLogsProcessMemoryAndLiveTensors()
    {
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(16, 8), "2ba", callbacks: new[] { new MemoryMonitor() }, loggers: new[] { logger });
        trainer.Fit();
        Assert.That(logger.Values("memory/process_working_set_bytes"), Has.Exactly(2).GreaterThan(1e6));
        Assert.That(logger.Values("memory/process_private_bytes"), Has.Exactly(2).GreaterThan(0));
        Assert.That(logger.Values("memory/managed_heap_bytes"), Has.Exactly(2).GreaterThan(0));
        Assert.That(logger.Values("memory/live_tensors"), Has.Exactly(2).GreaterThan(0), "at least the batch's tensors are alive at AfterTrainBatch");
    }

    [Test]
    public void RuntimeEstimatorPredictsRemainingTimeFromTheObservedRate()
    {
        // A clock that advances one second per batch: after skipping batch 0, the estimate at BatchEnd of batch k
        // is (10 − (k + 1)) batches × 1 s.
        var clock = new ManualClock();
        var ticker = new ActionCallback(Event.BatchEnd, _ => clock.Advance(TimeSpan.FromSeconds(1)));
        var estimator = new RuntimeEstimator(skipBatches: 1, timeUnit: "seconds", clock: clock);
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(), TestData.Loader(40, 8), "2ep", callbacks: new ICallback[] { ticker, estimator }, loggers: new[] { logger });
        trainer.Fit();
        Assert.That(logger.Values("time/remaining_estimate"), Is.EqualTo(new double[] { 8, 7, 6, 5, 4, 3, 2, 1, 0 }).Within(1e-9));
        Assert.That(logger.Hyperparameters.Any(h => h.ContainsKey("time/remaining_estimate_unit")), Is.True);
        Assert.Throws<ArgumentException>(() => new RuntimeEstimator(timeUnit: "weeks"));
    }
}
