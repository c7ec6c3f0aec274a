using ComposerSharp.Distributed;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Distributed;

[TestFixture]
public sealed class CollectiveTests : MpiJobFixture
{
    [Test]
    [Category(TestCategories.Slow)]
    public void TwoRanksAllReduceBroadcastAndGatherMatchFloat64References()
    {
        MpiJobResult job = Host("collectives");
        Assert.That(job.ExitCode, Is.EqualTo(0), job.Describe());
        for (int r = 0; r < 2; r++)
        {
            // 6 dtypes × 4 ops + non-contiguous + 2 broadcasts + 2 gather rows + 3 chunked.
            Assert.That(File.ReadAllText(Path.Combine(job.Output, $"rank{r}.checks")), Is.EqualTo("32"), job.Describe());
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ARankThatThrowsEndsTheJobNonZeroWithItsError()
    {
        MpiJobResult job = Host("throw", timeout: TimeSpan.FromSeconds(90));
        Assert.That(job.TimedOut, Is.False, job.Describe());
        Assert.That(job.ExitCode, Is.Not.EqualTo(0), job.Describe());
        Assert.That(job.Stderr, Does.Contain("rank 1 fails on purpose"), job.Describe());
        Assert.That(File.Exists(Path.Combine(job.Output, "rank0.done")), Is.False, "rank 0 must not finish normally");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ARankThatStopsCallingCollectivesEndsTheJobAtTheTimeout()
    {
        MpiJobResult job = Host("hang", timeout: TimeSpan.FromSeconds(90), env: new Dictionary<string, string> { ["HOST_DIST_TIMEOUT_SECONDS"] = "3" });
        Assert.That(job.TimedOut, Is.False, job.Describe());
        Assert.That(job.ExitCode, Is.Not.EqualTo(0), job.Describe());
        Assert.That(job.Stderr, Does.Contain("did not complete within the distributed timeout of 3 s"), job.Describe());
        Assert.That(job.Elapsed, Is.LessThan(TimeSpan.FromSeconds(60)), job.Describe());
    }

    [Test]
    public void WorldSizeOneIsANoOpAndNeedsNoLibrary()
    {
        using IProcessGroup g = ProcessGroupFactory.Create(torch.CPU, env: DistributedEnvironment.Single, options: new DistributedOptions { Backend = "nccl" });
        Assert.That(g, Is.InstanceOf<SingleProcessGroup>());
        using Tensor x = torch.randn(3, 4);
        using Tensor before = x.clone();
        foreach (ReduceOp op in Enum.GetValues<ReduceOp>())
        {
            g.AllReduce(x, op);
        }

        g.Broadcast(x, 0);
        g.Barrier();
        Assert.That(x.eq(before).all().item<bool>(), Is.True);
        using Tensor gathered = g.AllGather(x);
        Assert.That(gathered.shape, Is.EqualTo(new long[] { 1, 3, 4 }));
        Assert.That(gathered[0].eq(before).all().item<bool>(), Is.True);
        Assert.Throws<ArgumentOutOfRangeException>(() => g.Broadcast(x, 1));
    }

    [Test]
    public void AMissingMpiLibraryWithWorldSizeTwoSaysWhatToInstall()
    {
        var env = new DistributedEnvironment(0, 2, 0, 2, 0, null, null, "ompi");
        var e = Assert.Throws<DllNotFoundException>(() => MpiProcessGroup.Create(env, TimeSpan.FromSeconds(5), libraryCandidates: new[] { "libmpi-does-not-exist.so.40" }));
        Assert.That(e!.Message, Does.Contain("libmpi-does-not-exist.so.40").And.Contain("apt-get install openmpi-bin"));
    }

    [Test]
    public void TheChunkSplitCoversEveryElementOnce()
    {
        var calls = new List<(long Offset, int Count)>();
        TensorMemory.ForEachChunk(1000, 23, 4, (address, count) => calls.Add(((address - 1000) / 4, count)), maxChunk: 5);
        Assert.That(calls, Is.EqualTo(new[] { (0L, 5), (5L, 5), (10L, 5), (15L, 5), (20L, 3) }));

        // A count above int.MaxValue is split into int-sized calls.
        var big = new List<int>();
        TensorMemory.ForEachChunk(0, 3L * int.MaxValue + 2, 1, (_, count) => big.Add(count));
        Assert.That(big, Is.EqualTo(new[] { int.MaxValue, int.MaxValue, int.MaxValue, 2 }));
    }

    [Test]
    public void BadDistributedOptionsNameTheValue()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => new DistributedOptions { Backend = "gloo" }.Validate())!.Message, Does.Contain("'gloo'"));
        Assert.That(Assert.Throws<ArgumentException>(() => new DistributedOptions { Timeout = TimeSpan.Zero }.Validate())!.Message, Does.Contain("dist_timeout"));
    }
}
