using ComposerSharp.Events;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Optim;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>Every train, eval and predict step runs in a dispose scope: native tensors do not accumulate.</summary>
[TestFixture]
public class MemoryTests
{
    [Test]
    public void LiveNativeTensorCountIsFlatAcross200Steps()
    {
        // Microbatches, train and eval metrics, evaluation every 50 batches, AdamW, a schedule and the monitors:
        // every path of the loop runs. The first 20 steps create the optimizer state, which lives on purpose.
        var logger = new MemoryLogger();
        using var trainer = TestData.Trainer(TestData.Model(dropout: 0.1), TestData.Loader(64, 8, shuffle: true), "20ba",
            eval: TestData.Loader(16, 8), evalInterval: "50ba", microbatch: 3, loggers: new[] { logger },
            callbacks: new ICallback[] { new SpeedMonitor(windowSize: 5), new MemoryMonitor(), new LRMonitor() },
            schedulers: new[] { new CosineAnnealingWithWarmupScheduler("10ba") }, optimizerFactory: p => torch.optim.AdamW(p, 0.01));
        trainer.Fit();
        long afterWarmup = DisposeScopeManager.Statistics.ThreadTotalLiveCount;

        trainer.Fit("200ba");
        long after200 = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.That(trainer.State.Timestamp.Batch, Is.EqualTo(220));
        Assert.That(logger.Values("metrics/eval/Accuracy").Count(), Is.GreaterThanOrEqualTo(4), "evaluation ran during the 200 steps");
        Assert.That(after200, Is.EqualTo(afterWarmup), "live native tensors after 20 and after 220 steps");

        trainer.Eval();
        IReadOnlyList<Tensor> outputs = trainer.Predict(TestData.Loader(40, 8));
        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(afterWarmup + outputs.Count), "only the returned outputs remain");
        foreach (Tensor t in outputs)
        {
            t.Dispose();
        }

        Assert.That(DisposeScopeManager.Statistics.ThreadTotalLiveCount, Is.EqualTo(afterWarmup));
        double[] liveDuringTraining = logger.Values("memory/live_tensors").ToArray();
        Assert.That(liveDuringTraining.Skip(20).Distinct().Count(), Is.LessThanOrEqualTo(2), "flat inside the loop too (microbatch sizes aside)");
    }
}
