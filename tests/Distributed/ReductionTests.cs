using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Distributed;

/// <summary>
/// What is reduced over 2 ranks (mpirun) besides the gradients, parameters with gradients on some ranks only, and
/// the all-reduce overlapped with backward; scenarios in tests/DistributedHost/ReductionScenarios.cs, every rank
/// holding different data. Deterministic mode, fp32.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public sealed class ReductionTests : MpiJobFixture
{
    private Dictionary<string, string> Run(string scenario)
    {
        MpiJobResult job = Host(scenario, timeout: TimeSpan.FromSeconds(150));
        Assert.That(job.ExitCode, Is.EqualTo(0), job.Describe());
        return File.ReadAllLines(Path.Combine(job.Output, $"rank0.{scenario}"))
            .Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);
    }

    private static double D(string s) => double.Parse(s, CultureInfo.InvariantCulture);

    [Test]
    public void TheLoggedLossAndMetricsAreTheGlobalOnes()
    {
        Dictionary<string, string> v = Run("logged");

        // Equal shares: the mean of the per-rank losses, logged on rank 0 and kept in the State (which checkpoints read).
        double mean = D(v["mean"]);
        Assert.That(D(v["logged"]), Is.EqualTo(mean).Within(1e-6 * mean), string.Join("; ", v));
        Assert.That(D(v["state"]), Is.EqualTo(D(v["logged"])));
        Assert.That(Math.Abs(D(v["rank0"]) - mean), Is.GreaterThan(1e-4), "the ranks' losses must differ for this test to mean anything");

        // 3 and 5 samples: the sample-weighted mean, which is one process's loss over all 8.
        double all = D(v["all"]);
        Assert.That(D(v["uneven"]), Is.EqualTo(all).Within(1e-6 * all), string.Join("; ", v));

        // Eval on 5 + 9 samples, each rank its own: the accuracy over all 14, not rank 0's.
        double global = D(v["eval_global"]);
        Assert.That(D(v["eval_logged"]), Is.EqualTo(global), string.Join("; ", v));
        Assert.That(D(v["eval_returned"]), Is.EqualTo(global));
        Assert.That(D(v["eval_rank0"]), Is.Not.EqualTo(global), "rank 0's own accuracy must differ from the global one for this test to mean anything");

        // States 1/4 and 3/4: 4/8 both times (not counted twice), and rank 0's own state back afterwards.
        Assert.That(v["sync"], Is.EqualTo("0.5 0.5"));
        Assert.That(v["restored"], Is.EqualTo("1,4"));
    }

    [Test]
    public void AParameterWithGradientsOnSomeRanksOnlyIsReducedAsZerosThereAndReplicasStayIdentical()
    {
        // BranchMlp: 'extra' (parameters 4, 5) runs on rank 1 only, 'never' (6, 7) on no rank.
        MpiJobResult job = Host("unused", timeout: TimeSpan.FromSeconds(150));
        Assert.That(job.ExitCode, Is.EqualTo(0), job.Describe());
        string[] lines = File.ReadAllLines(Path.Combine(job.Output, "rank0.unused"));
        Assert.That(lines, Has.Length.EqualTo(2));
        foreach (string line in lines)
        {
            Dictionary<string, string> v = line.Split(' ').Select(p => p.Split('=', 2)).ToDictionary(p => p[0], p => p[1]);
            Assert.That(D(v["graderr"]), Is.LessThanOrEqualTo(1e-6), line);
            Assert.That(v["missing"], Is.EqualTo("6,7"), $"rank 0 must hold extra's reduced gradient and no rank never's: {line}");
            Assert.That(v["reference_missing"], Is.EqualTo("6,7"), line);
            Assert.That(v["replicas"], Is.EqualTo("identical"), line);
        }
    }

    [Test]
    public void TheOverlappedAllReduceGivesBitwiseTheWeightsOfTheBlockingOne()
    {
        Dictionary<string, string> v = Run("overlap");
        Assert.That(v["equal"], Is.EqualTo("True"), string.Join("; ", v));
        Assert.That(int.Parse(v["bytes"], CultureInfo.InvariantCulture), Is.GreaterThan(0));
        Assert.That(v["active"], Is.EqualTo("True"), "the first-step check switched the overlap off");

        // Buckets of at most 1 KiB from the last layer back: {fc4.bias, fc4.weight}, {norm.bias, norm.weight, fc3.bias},
        // {fc3.weight}, {fc2.bias}, {fc2.weight}, {fc1.bias}, {fc1.weight}; all but the first Linear's two start during
        // backward (that layer's input needs no gradient, so its backward is not observed).
        Assert.That(int.Parse(v["early"], CultureInfo.InvariantCulture), Is.EqualTo(5), string.Join("; ", v));
        Assert.That(v["early_off"], Is.EqualTo("0"));
    }

    [Test]
    public void AWeightCompletedAfterItsBucketStartedSwitchesTheOverlapOffAndTheStepIsRedone()
    {
        Dictionary<string, string> v = Run("tied");
        Assert.That(v["active"], Is.EqualTo("False"), "the first-step check did not notice the bucket copied before the weight's gradient was complete");
        Assert.That(v["equal"], Is.EqualTo("True"), "the redone step differs from the blocking run");
    }
}
