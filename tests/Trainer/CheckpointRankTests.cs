using System.IO.Compression;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// The checkpoint unit's multi-rank behaviour through <see cref="State.ProcessGroup"/>, in one process: a group that
/// claims rank r of W and answers the byte gather with given per-rank states stands in for the ranks (the real
/// multi-process path runs under mpirun in tests/Distributed).
/// </summary>
[TestFixture]
public class CheckpointRankTests
{
    /// <summary>Rank <paramref name="Rank"/> of <paramref name="WorldSize"/>; the gather puts the local bytes at this rank and <paramref name="Others"/>' bytes elsewhere.</summary>
    private sealed record GivenRanks(int Rank, int WorldSize, Func<int, byte[]> Others) : IRankGroup
    {
        public int Gathers { get; private set; }

        public byte[][] AllGatherBytes(byte[] local)
        {
            Gathers++;
            return Enumerable.Range(0, WorldSize).Select(r => r == Rank ? local : Others(r)).ToArray();
        }
    }

    private static byte[] OtherRankState(int rank) => Enumerable.Repeat((byte)(rank + 40), 16).ToArray();

    private static (State State, Logger Logger, CapturingLoggerFactory Logs) Run(IRankGroup group)
    {
        var logs = new CapturingLoggerFactory();
        var model = TestData.Model();
        var state = new State(model, torch.CPU, Precision.Fp32, "ranks")
        {
            Optimizers = new List<torch.optim.Optimizer> { torch.optim.AdamW(model.parameters(), 0.01) },
            LoggerFactory = logs,
            ProcessGroup = group,
        };
        state.TrainDataloader = TestData.Loader(32, 4);
        state.Timestamp = state.Timestamp.ToNextBatch(8, 0, TimeSpan.FromMilliseconds(1));
        return (state, new Logger(state), logs);
    }

    [Test]
    public void RankZeroWritesEveryRanksGeneratorStateAndTheWorldSize()
    {
        string path = Path.Combine(TestData.TempFolder(), "two.ckpt");
        var group = new GivenRanks(0, 2, OtherRankState);
        (State state, _, _) = Run(group);
        Checkpoint.Save(state, path);

        Assert.That(group.Gathers, Is.EqualTo(1));
        using (ZipArchive zip = ZipFile.OpenRead(path))
        {
            Assert.That(zip.Entries.Select(e => e.FullName), Is.SupersetOf(new[] { "rng/cpu.bin", "rng/rank1.bin" }));
        }

        using CheckpointReader reader = CheckpointFile.Open(path);
        Assert.That(reader.Header.Metadata["world_size"], Is.EqualTo("2"));
    }

    [Test]
    public void OtherRanksTakePartInTheGatherButWriteNothing()
    {
        string path = Path.Combine(TestData.TempFolder(), "rank1.ckpt");
        var group = new GivenRanks(1, 2, OtherRankState);
        (State state, _, _) = Run(group);
        string returned = Checkpoint.Save(state, path);

        Assert.That((group.Gathers, returned, File.Exists(path)), Is.EqualTo((1, Path.GetFullPath(path), false)));
    }

    [Test]
    public void EachRankLoadsItsOwnGeneratorStateAndAMissingOneIsWarnedAbout()
    {
        string path = Path.Combine(TestData.TempFolder(), "two.ckpt");
        (State saving, _, _) = Run(new GivenRanks(0, 2, OtherRankState));
        Checkpoint.Save(saving, path);

        (State rank1, Logger rank1Logger, _) = Run(new GivenRanks(1, 2, OtherRankState));
        Checkpoint.Load(rank1, rank1Logger, path, new CheckpointOptions());
        Assert.That(rank1.PendingRngState, Is.EqualTo(OtherRankState(1)));

        (State rank0, Logger rank0Logger, _) = Run(new GivenRanks(0, 2, OtherRankState));
        Checkpoint.Load(rank0, rank0Logger, path, new CheckpointOptions());
        Assert.That(rank0.PendingRngState, Is.Not.Null.And.Not.EqualTo(OtherRankState(1)), "rank 0 reads rng/cpu.bin, its own state");

        (State rank2, Logger rank2Logger, CapturingLoggerFactory logs) = Run(new GivenRanks(2, 3, OtherRankState));
        Checkpoint.Load(rank2, rank2Logger, path, new CheckpointOptions());
        Assert.That(rank2.PendingRngState, Is.Null, "no state for rank 2 in a checkpoint of two ranks: the seeded generator is kept");
        Assert.That(logs.Warnings, Has.Some.Contains("no generator state for rank 2"));
    }

    [Test]
    public void AnotherWorldSizeContinuesFromTheGlobalSampleCountWithoutTheDataloaderWarning()
    {
        // One process trained 3 batches of 4 (12 samples); two ranks of 4 each have a global batch of 8.
        string path = Path.Combine(TestData.TempFolder(), "one.ckpt");
        (State single, _, _) = Run(new SingleRankGroup());
        single.Timestamp = new Timestamp().ToNextBatch(4, 0, TimeSpan.Zero).ToNextBatch(4, 0, TimeSpan.Zero).ToNextBatch(4, 0, TimeSpan.Zero);
        Checkpoint.Save(single, path);

        (State two, Logger logger, CapturingLoggerFactory logs) = Run(new GivenRanks(0, 2, OtherRankState));
        Checkpoint.Load(two, logger, path, new CheckpointOptions());
        Assert.That((two.Timestamp.Sample, two.Timestamp.SampleInEpoch, two.Timestamp.BatchInEpoch), Is.EqualTo((12L, 12L, 1L)));
        string[] warnings = logs.Warnings.ToArray();
        Assert.That(warnings, Has.Some.Contains("written by 1 ranks and this job has 2").And.Some.Contains("4 samples were consumed past that batch"));
        Assert.That(warnings, Has.None.Contains("batches per epoch"), "the dataloader warning is for the same world size only");
    }
}
