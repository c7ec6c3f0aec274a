using System.Globalization;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Distributed;

/// <summary>
/// Data-parallel training with the Trainer on 2 ranks (mpirun), each scenario in tests/DistributedHost/TrainerScenarios.cs;
/// references are computed alone (world size 1) inside the same job on rank 0. All in deterministic mode, fp32
/// unless stated.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class DataParallelTrainingTests : MpiJobFixture
{
    private MpiJobResult Run(string scenario)
    {
        MpiJobResult job = Host(scenario, timeout: TimeSpan.FromSeconds(150));
        Assert.That(job.ExitCode, Is.EqualTo(0), job.Describe());
        return job;
    }

    private static string Read(MpiJobResult job, string file) => File.ReadAllText(Path.Combine(job.Output, file));

    /// <summary>The <c>key=value</c> lines a scenario wrote to <paramref name="file"/>.</summary>
    private static Dictionary<string, string> Values(MpiJobResult job, string file) =>
        Read(job, file).Split('\n').Select(l => l.Split('=')).ToDictionary(p => p[0], p => p[1]);

    /// <summary>Both ranks wrote a non-empty final state, bitwise the same.</summary>
    private static void AssertSameState(MpiJobResult job, string message)
    {
        byte[] rank0 = File.ReadAllBytes(Path.Combine(job.Output, "rank0.state"));
        byte[] rank1 = File.ReadAllBytes(Path.Combine(job.Output, "rank1.state"));
        Assert.That(rank0, Has.Length.GreaterThan(0));
        Assert.That(rank1, Is.EqualTo(rank0), message);
    }

    [Test]
    public void TwoRanksWithBatchBGiveTheGradientsOfOneRankWithBatch2B()
    {
        MpiJobResult job = Run("grads");
        Assert.That(double.Parse(Read(job, "rank0.graderr"), CultureInfo.InvariantCulture), Is.LessThanOrEqualTo(1e-6), job.Describe());
    }

    [Test]
    public void RanksWithDifferentSampleCountsAreWeightedByTheirShareOfTheGlobalBatch()
    {
        // Rank 0 holds 3 samples, rank 1 holds 5; a plain average of the two ranks' gradients would be off by far more than 1e-6.
        MpiJobResult job = Run("grads-uneven");
        Assert.That(double.Parse(Read(job, "rank0.graderr"), CultureInfo.InvariantCulture), Is.LessThanOrEqualTo(1e-6), job.Describe());
    }

    [Test]
    public void ReplicasAreBitwiseIdenticalAfterTrainingAndLowPrecisionLayerNormTrains()
    {
        // 3 epochs × 8 batches of 4 per rank, shuffled, dropout 0.1, AdamW, amp_bf16 with LowPrecisionLayerNorm.
        MpiJobResult job = Run("replicas");
        AssertSameState(job, "the ranks' weights after 24 steps differ");
        for (int r = 0; r < 2; r++)
        {
            Dictionary<string, string> values = Values(job, $"rank{r}.replicas");
            Assert.That(values["lpln"], Is.EqualTo("True"), "LowPrecisionLayerNorm did not swap the LayerNorm");
            Assert.That(values["batches"], Is.EqualTo("24"));
            Assert.That(values["samples"], Is.EqualTo("192"), "the timestamp counts the global samples: 64 per epoch over both ranks");
            double first = double.Parse(values["first"], CultureInfo.InvariantCulture);
            double last = double.Parse(values["last"], CultureInfo.InvariantCulture);
            Assert.That(last, Is.LessThan(first * 0.9), $"rank {r}: the loss did not fall (first epoch {first}, last {last})");
        }
    }

    [Test]
    public void StochasticDepthAndLayerFreezingKeepTheReplicasBitwiseIdentical()
    {
        // Blocks dropped at random per step (parameters without gradients on some steps) and layers frozen half-way
        // (parameters leaving the optimizer): the gradient all-reduce must still leave both ranks with the same weights.
        MpiJobResult job = Run("depth-freeze");
        AssertSameState(job, "the ranks' weights after 16 steps differ");
        for (int r = 0; r < 2; r++)
        {
            Dictionary<string, string> values = Values(job, $"rank{r}.depth-freeze");
            Assert.That(values["batches"], Is.EqualTo("16"));
            Assert.That(values["drop_rates"].Split(',').Select(v => double.Parse(v, CultureInfo.InvariantCulture)), Has.All.GreaterThan(0.0), "StochasticDepth set a drop rate on every block");
            Assert.That(int.Parse(values["frozen"], CultureInfo.InvariantCulture), Is.GreaterThan(0), "LayerFreezing froze the earliest layers");
            Assert.That(double.IsFinite(double.Parse(values["loss"], CultureInfo.InvariantCulture)), Is.True);
        }
    }

    [TestCase("", TestName = "MlmTrainingIsTheSameOnOneTwoAndThreeRanksWithTheSameGlobalBatch(per-sample loss)")]
    [TestCase("mean tokens", TestName = "MlmTrainingIsTheSameOnOneTwoAndThreeRanksWithTheSameGlobalBatch(stock BERT, accumulate on tokens)")]
    [TestCase("mean tokens microbatch=5", TestName = "MlmTrainingIsTheSameOnOneTwoAndThreeRanksWithTheSameGlobalBatch(stock BERT, accumulate on tokens, microbatches of 5)")]
    public void MlmTrainingIsTheSameOnOneTwoAndThreeRanksWithTheSameGlobalBatch(string scenarioArguments)
    {
        string[] args = scenarioArguments.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // A global batch of 12 as 1 × 12, 2 × 6 and 3 × 4: each sample must be masked the same way whichever rank and
        // batch it lands in, so the per-step losses agree up to fp32 summation order (see TrainerScenarios.MlmAcrossWorldSizes).
        // The stock model's loss is a mean over masked tokens, which ranks hold in different numbers: it agrees only when
        // the ranks are weighted by their masked tokens (accumulate_train_batch_on_tokens).
        double[] Losses(int ranks)
        {
            MpiJobResult job = Host("mlm-world", ranks, timeout: TimeSpan.FromSeconds(240), args: args);
            Assert.That(job.ExitCode, Is.EqualTo(0), job.Describe());
            return Read(job, "rank0.mlm-world").Split('\n').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
        }

        double[] alone = Losses(1);
        Assert.That(alone, Has.Length.EqualTo(6));
        var report = new List<string> { $"1 rank: {string.Join(", ", alone)}" };
        var worst = new Dictionary<int, double>();
        foreach (int ranks in new[] { 2, 3 })
        {
            double[] distributed = Losses(ranks);
            worst[ranks] = alone.Zip(distributed).Max(p => Math.Abs(p.First - p.Second) / Math.Abs(p.First));
            report.Add($"{ranks} ranks: {string.Join(", ", distributed)} (worst relative difference {worst[ranks]:E2})");
        }

        TestContext.Out.WriteLine(string.Join("\n", report));
        Assert.That(worst.Values, Has.All.LessThanOrEqualTo(1e-6), string.Join("\n", report));
    }

    [Test]
    public void TwoRankEvaluationEqualsOneRankEvaluationOnTheSameData()
    {
        // 13 samples: shards of 7 and 6, unpadded, so every sample counts once.
        MpiJobResult job = Run("eval");
        string[] lines = Read(job, "rank0.eval").Split('\n');
        Assert.That(lines, Has.Length.EqualTo(2));
        foreach (string line in lines)
        {
            string[] parts = line.Split('=', ' ');
            double distributed = double.Parse(parts[1], CultureInfo.InvariantCulture);
            double alone = double.Parse(parts[2], CultureInfo.InvariantCulture);

            // Accuracy is exact; cross-entropy sums fp32 per-batch losses over different batch compositions.
            Assert.That(distributed, Is.EqualTo(alone).Within(1e-6 * Math.Abs(alone)), line);
        }
    }

    [Test]
    public void ATwoRankRunSavedAndResumedEqualsAnUninterruptedOne()
    {
        MpiJobResult job = Run("resume");
        Assert.That(Read(job, "rank0.resume"), Is.EqualTo("bitwise-equal"));
        Assert.That(Read(job, "rank1.resume"), Is.EqualTo("bitwise-equal"));
        Assert.That(Directory.GetFiles(Path.Combine(job.Output, "checkpoints")).Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "ep0-ba3-rank0.ckpt", "latest-rank0.ckpt" }), "only rank 0 writes");
    }

    [Test]
    public void AStopRequestedOnOneRankStopsEveryRankAtTheSameBatch()
    {
        MpiJobResult job = Run("stop");
        Assert.That(Read(job, "rank0.stop"), Is.EqualTo("2"));
        Assert.That(Read(job, "rank1.stop"), Is.EqualTo("2"));
    }

    [Test]
    public void ARankWhoseTrainingThrowsEndsTheJobNonZeroWithItsError()
    {
        MpiJobResult job = Host("trainer-throw", timeout: TimeSpan.FromSeconds(90));
        Assert.That(job.TimedOut, Is.False, job.Describe());
        Assert.That(job.ExitCode, Is.Not.EqualTo(0), job.Describe());
        Assert.That(job.Stderr, Does.Contain("rank 1's callback fails on purpose"), job.Describe());
    }

    [Test]
    public void RanksWithDifferentModelsAreRefusedNamingTheFirstDifferingTensor()
    {
        MpiJobResult job = Run("mismatch");
        Assert.That(Read(job, "rank1.mismatch"), Does.Contain("rank 0 has parameter _fc1.weight [16, 4] Float32, rank 1 has parameter _fc1.weight [17, 4] Float32"));
        Assert.That(Read(job, "rank0.mismatch"), Does.Contain("another rank's tensors differ"));
    }

    [Test]
    public void ACheckpointOfOneProcessResumesOnTwoRanksFromTheGlobalSampleCount()
    {
        // Saved alone after 4 batches of 4 (16 samples); resumed on 2 ranks × 4: batch 2 of the new global batch of 8.
        MpiJobResult job = Run("resize");
        for (int r = 0; r < 2; r++)
        {
            Assert.That(Read(job, $"rank{r}.resize").Split('\n'), Is.EqualTo(new[] { "data=continues", "weights=same", "batches=6", "samples=32" }), $"rank {r}");
        }
    }
}
