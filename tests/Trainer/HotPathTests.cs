using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// Work the training loop leaves out when nothing needs it (benchmarks/README.md): the per-batch host read of the
/// loss when no logger, callback or algorithm can see it, and training metrics when computeTrainingMetrics is off.
/// Each test checks that what remains observable is unchanged.
/// </summary>
[TestFixture]
public class HotPathTests
{
    // These tests compare two runs bit for bit, which only deterministic mode promises (without it, MKL's matrix
    // products may round differently for different memory alignments, as on AMD EPYC).
    private static Trainer NewTrainer(IEnumerable<ILoggerDestination>? loggers, bool computeTrainingMetrics = true) =>
        new(TestData.Model(dropout: 0.2),
            new TrainerOptions { MaxDuration = "7ba", Device = "cpu", ProgressBar = false, ComputeTrainingMetrics = computeTrainingMetrics, DeterministicMode = true },
            TestData.Loader(40, 8, shuffle: true), loggers: loggers, optimizerFactory: p => torch.optim.SGD(p, 0.05));

    [Test]
    [Category(TestCategories.Slow)]
    public void AnUnobservedLossIsStillTheLastBatchLossAfterFit()
    {
        var logger = new MemoryLogger();
        using Trainer observed = NewTrainer(new[] { logger });
        observed.Fit();
        using Trainer unobserved = NewTrainer(null);
        unobserved.Fit();

        double last = logger.Values("loss/train/total").Last();
        Assert.That(logger.Values("loss/train/total").Count(), Is.EqualTo(7));
        Assert.That(unobserved.State.Metrics["loss/train/total"], Is.EqualTo(last), "same seed and data: the same last loss, read once after the loop");
        Assert.That(observed.State.Metrics["loss/train/total"], Is.EqualTo(last));
        TestData.AssertBitwiseEqual(observed.Model, unobserved.Model, "reading the loss or not does not change training");
    }

    [Test]
    public void FitCanContinueAfterAnUnobservedRun()
    {
        using Trainer trainer = NewTrainer(null);
        trainer.Fit();
        double first = trainer.State.Metrics["loss/train/total"];
        trainer.Fit("3ba");
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(10));
        Assert.That(trainer.State.Metrics["loss/train/total"], Is.Not.EqualTo(first).And.GreaterThan(0));
    }

    [Test]
    public void WithoutTrainingMetricsOnlyTheMetricsAreMissing()
    {
        var with = new MemoryLogger();
        var without = new MemoryLogger();
        using Trainer a = NewTrainer(new[] { with });
        a.Fit();
        using Trainer b = NewTrainer(new[] { without }, computeTrainingMetrics: false);
        b.Fit();

        Assert.That(with.Values("metrics/train/Accuracy"), Is.Not.Empty);
        Assert.That(without.Metrics.Select(m => m.Name), Has.None.StartsWith("metrics/train/"));
        Assert.That(b.State.Metrics.Keys, Has.None.StartsWith("metrics/train/"));
        Assert.That(without.Values("loss/train/total"), Is.EqualTo(with.Values("loss/train/total")));
        TestData.AssertBitwiseEqual(a.Model, b.Model, "metrics do not change training");
    }
}
