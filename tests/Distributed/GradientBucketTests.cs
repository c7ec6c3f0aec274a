using ComposerSharp.Core;
using ComposerSharp.Distributed;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Distributed;

[TestFixture]
public sealed class GradientBucketTests
{
    [Test]
    public void BucketsFollowReverseParameterOrderAndTheByteCap()
    {
        using var scope = torch.NewDisposeScope();
        Parameter[] ps = new long[] { 10, 20, 30, 5 }.Select(n => new Parameter(torch.zeros(n))).ToArray();

        // Reverse order with a cap of 35 floats: [5, 30] then [20, 10].
        using var buckets = GradientBuckets.Build(ps, bucketBytes: 35 * 4);
        Assert.That(buckets.BucketElements, Is.EqualTo(new long[] { 35, 30 }));
        using var small = GradientBuckets.Build(ps, bucketBytes: 25 * 4);
        Assert.That(small.BucketElements, Is.EqualTo(new long[] { 5, 30, 20, 10 }), "a parameter larger than the cap gets a bucket of its own");
    }

    [Test]
    public void TheFirstBucketIsCappedAtOneMebibyteAsInDdp()
    {
        using var scope = torch.NewDisposeScope();
        const long quarter = 1024 * 1024 / 4 / 4 * 3; // 0.75 MiB of float32
        Parameter[] ps = Enumerable.Range(0, 3).Select(_ => new Parameter(torch.zeros(quarter))).ToArray();
        using var buckets = GradientBuckets.Build(ps, bucketBytes: DistributedDefaults.BucketBytes);
        Assert.That(buckets.BucketElements, Is.EqualTo(new[] { quarter, 2 * quarter }), "the last parameter alone (1.5 MiB would pass 1 MiB), then the other two");
    }

    [Test]
    public void TheReduceAppliesTheWeightsAndLeavesMissingGradientsMissing()
    {
        using var scope = torch.NewDisposeScope();
        var a = new Parameter(torch.zeros(2, 3));
        var b = new Parameter(torch.zeros(4));
        var c = new Parameter(torch.zeros(1));
        torch.sum(a * torch.arange(6).reshape(2, 3)).backward();
        torch.sum(b * 2).backward();
        using var buckets = GradientBuckets.Build(new[] { a, b, c }, bucketBytes: 1024);

        // World size 1: the sum over ranks is the rank's own value, so g ← 0.25 · (3 · g).
        Assert.That(buckets.LocalUsed(), Is.EqualTo(new[] { true, true, false }));
        buckets.AllReduce(new SingleProcessGroup(), preScale: 3, postScale: 0.25, buckets.LocalUsed());
        Assert.That(a.grad!.data<float>().ToArray(), Is.EqualTo(new[] { 0f, 0.75f, 1.5f, 2.25f, 3f, 3.75f }));
        Assert.That(b.grad!.data<float>().ToArray(), Is.All.EqualTo(1.5f));
        Assert.That(c.grad is null, Is.True);
    }

    [Test]
    public void AParameterWithoutAGradientHereReceivesTheReducedOneWhenAnotherRankHadOne()
    {
        using var scope = torch.NewDisposeScope();
        var a = new Parameter(torch.zeros(3));
        var c = new Parameter(torch.zeros(2));
        torch.sum(a * 2).backward();
        using var buckets = GradientBuckets.Build(new[] { a, c }, bucketBytes: 1024);

        // As if another rank had used c: its (zero) contribution here is reduced and it gets a gradient like a.
        buckets.AllReduce(new SingleProcessGroup(), preScale: 1, postScale: 0.5, globallyUsed: new[] { true, true });
        Assert.That(a.grad!.data<float>().ToArray(), Is.All.EqualTo(1f));
        Assert.That(c.grad, Is.Not.Null);
        Assert.That(c.grad!.data<float>().ToArray(), Is.EqualTo(new[] { 0f, 0f }));
        Assert.That(c.grad!.shape, Is.EqualTo(new long[] { 2 }));
    }

    [Test]
    public void WorldSizeOneDataParallelChangesNothing()
    {
        using var scope = torch.NewDisposeScope();
        using var dp = new DataParallel(new SingleProcessGroup());
        Assert.That((dp.Enabled, dp.IsRankZero, dp.WorldSize), Is.EqualTo((false, true, 1)));
        Assert.That(dp.GlobalCounts(7, 11), Is.EqualTo((7L, 11L)));
        Assert.That(dp.AnyRank(true) && !dp.AnyRank(false), Is.True);
        Assert.That(dp.AgreeToStop(false), Is.False);
        dp.RequestStop();
        Assert.That(dp.AgreeToStop(false), Is.True);
        Assert.That(dp.AllGatherBytes(new byte[] { 1, 2 }), Is.EqualTo(new[] { new byte[] { 1, 2 } }));
    }
}

[TestFixture]
public sealed class ReducibleMetricTests
{
    [Test]
    public void SummedStatesOfTwoHalvesGiveTheMetricOfTheWhole()
    {
        using var scope = torch.NewDisposeScope();
        var logits = torch.randn(20, 3);
        var labels = torch.randint(0, 3, new long[] { 20 });
        ComposerSharp.Core.Batch Part(long start, long length) => new(new Dictionary<string, Tensor> { ["labels"] = labels.narrow(0, start, length) });
        Func<ComposerSharp.Core.IReducibleMetric>[] makers =
        {
            () => new ComposerSharp.Models.CrossEntropyMetric(),
            () => new ComposerSharp.Models.ClassificationAccuracy(),
            () => new ComposerSharp.Models.BinaryF1Score(),
            () => new ComposerSharp.Models.MulticlassF1Score(3),
        };
        foreach (Func<ComposerSharp.Core.IReducibleMetric> make in makers)
        {
            var whole = make();
            whole.Update(logits, Part(0, 20));
            var a = make();
            a.Update(logits.narrow(0, 0, 7), Part(0, 7));
            var b = make();
            b.Update(logits.narrow(0, 7, 13), Part(7, 13));
            a.SetState(a.GetState().Zip(b.GetState(), (x, y) => x + y).ToArray());
            Assert.That(a.Compute(), Is.EqualTo(whole.Compute()).Within(1e-6), whole.Name);
            Assert.Throws<ArgumentException>(() => a.SetState(new double[1]));
        }
    }
}
