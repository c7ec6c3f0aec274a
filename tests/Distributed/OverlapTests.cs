using ComposerSharp.Distributed;
using Microsoft.Extensions.Logging.Abstractions;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Distributed;

/// <summary>
/// The overlap machinery in one process (world size 1, where the reduce is g ← post · pre · g): which buckets start
/// during backward, and that the result equals the blocking path's bit for bit. The 2-rank tests are in ReductionTests.
/// </summary>
[TestFixture]
public sealed class OverlapTests
{
    private static (Sequential Net, Parameter[] Params) Net()
    {
        torch.manual_seed(3);
        Sequential net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 3));
        return (net, net.parameters().ToArray());
    }

    private static void Backward(Sequential net, Tensor x) => nn.functional.cross_entropy(net.call(x), torch.tensor(new long[] { 0, 1, 2, 1, 0 })).backward();

    [Test]
    public void BucketsStartDuringBackwardAndTheResultEqualsTheBlockingReduce()
    {
        using var scope = torch.NewDisposeScope();
        Tensor x = torch.randn(5, 4);
        var group = new SingleProcessGroup();

        (Sequential blockingNet, Parameter[] blockingParams) = Net();
        Backward(blockingNet, x);
        using var blocking = GradientBuckets.Build(blockingParams, bucketBytes: 1024);
        blocking.AllReduce(group, preScale: 3, postScale: 0.125, blocking.LocalUsed());

        (Sequential net, Parameter[] ps) = Net();
        using var buckets = GradientBuckets.Build(ps, bucketBytes: 1024);
        using var overlap = new OverlappedGradientReduce(net, buckets, group, NullLogger.Instance);
        Assert.That(overlap.HookedModules, Is.EqualTo(4), "three Linears and the LayerNorm own parameters");
        overlap.Arm(preScale: 3, postScale: 0.125);
        Backward(net, x);
        overlap.Finish(used => used, any => any);

        // {fc3.bias, fc3.weight}, {norm.bias, norm.weight, fc2.bias}, {fc2.weight}, {fc1.bias}, {fc1.weight}: the
        // first Linear's input needs no gradient, so its two buckets start after backward.
        Assert.That(buckets.Count, Is.EqualTo(5));
        Assert.That(overlap.LastEarlyBuckets, Is.EqualTo(3));
        Assert.That(overlap.Active, Is.True);
        for (int i = 0; i < ps.Length; i++)
        {
            Assert.That(ps[i].grad!.data<float>().ToArray(), Is.EqualTo(blockingParams[i].grad!.data<float>().ToArray()), $"parameter {i}");
        }

        // Not armed: a forward and backward leave the hooks idle and start nothing.
        Backward(net, x);
        Assert.That(overlap.Armed, Is.False);
    }
}
