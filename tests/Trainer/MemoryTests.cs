using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Optim;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Training;

/// <summary>Every train, eval and predict step runs in a dispose scope: native tensors do not accumulate.</summary>
[TestFixture]
[Category(TestCategories.Slow)]
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

    /// <summary>
    /// Resident memory stays flat in fp32 training with a 50,304-word vocabulary (gpt-tiny, batch 4 × 64, AdamW, in a
    /// fresh process): after 8 warm-up batches (optimizer state, allocator pools), the next 16 may add at most
    /// 160 MiB. Before the step's native objects were released each step, the same run grew by about 33 MiB a batch
    /// (about 530 MiB over the 16), and a batch of 32 × 64 reached 19 GB in 20 batches.
    /// </summary>
    [Test]
    [NonParallelizable]
    public void ResidentMemoryIsFlatInFp32TrainingWithTheGpt2Vocabulary()
    {
        if (!OperatingSystem.IsLinux())
        {
            Assert.Ignore("reads VmRSS from /proc/self/status (Linux only)");
        }

        const int warmup = 8, measured = 16;
        ChildProcess.Result r = ChildProcess.Run("ComposerSharp.Tests.ProcessHost.dll", new[] { "rss-lm", "fp32", "4", "64", (warmup + measured).ToString(System.Globalization.CultureInfo.InvariantCulture) }, TimeSpan.FromMinutes(5));
        Assert.That(r.ExitCode, Is.EqualTo(0), r.ToString());
        using var json = System.Text.Json.JsonDocument.Parse(r.Stdout.Trim().Split('\n')[^1]);
        long[] rss = json.RootElement.GetProperty("rss_bytes").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        Assert.That(rss, Has.Length.EqualTo(warmup + measured));
        long afterWarmup = rss[warmup - 1];
        long growth = rss.Skip(warmup).Max() - afterWarmup;
        string mib = string.Join(", ", rss.Select(b => b >> 20));
        TestContext.Out.WriteLine($"RSS MiB per batch: {mib}");
        Assert.That(growth, Is.LessThanOrEqualTo(160L << 20), $"resident growth after warm-up {growth >> 20} MiB; per batch (MiB): {mib}");
    }
}
