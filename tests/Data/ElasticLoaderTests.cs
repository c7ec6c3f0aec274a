using System.Collections.Concurrent;
using ComposerSharp.Core;
using ComposerSharp.Data;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Data;

/// <summary>
/// The elastic sampling (Streaming's shuffle algorithms and batch-aware partition), background workers and
/// sample-exact resume of <see cref="DataLoader{TSample}"/>. Ranks are simulated in one process: each rank's loader
/// computes its share independently from (seed, epoch, world size, rank), exactly as a rank of a real job does.
/// </summary>
[TestFixture]
public class ElasticLoaderTests
{
    /// <summary>A sharded in-memory dataset whose samples are their own indices; it records every read and read order.</summary>
    private sealed class RecordingShardedDataset : IDataset<long>, IShardedDataset
    {
        private readonly long[] _shards;

        public RecordingShardedDataset(params long[] shards)
        {
            _shards = shards;
            Count = shards.Sum();
        }

        public long Count { get; }

        public long? FailAt { get; init; }

        public ConcurrentQueue<long> Reads { get; } = new();

        public List<long[]> ReadOrders { get; } = new();

        public IReadOnlyList<long> ShardSampleCounts => _shards;

        public long this[long index]
        {
            get
            {
                if (index == FailAt)
                {
                    throw new InvalidDataException($"corrupt sample {index}");
                }

                Reads.Enqueue(index);
                return index;
            }
        }

        public void SetReadOrder(IReadOnlyList<long> order)
        {
            lock (ReadOrders)
            {
                ReadOrders.Add(order.ToArray());
            }
        }
    }

    private static Batch Collate(IReadOnlyList<long> samples) =>
        new(new Dictionary<string, torch.Tensor> { ["x"] = torch.tensor(samples.ToArray()).unsqueeze(1) });

    private static DataLoader<long> Loader(IDataset<long> data, int batchSize, string algo = StreamingShuffle.Py1s, int workers = 0, bool dropLast = false, long seed = 17, int nodes = 2) =>
        new(data, batchSize, Collate, shuffle: true, dropLast: dropLast, seed: seed) { ShuffleAlgo = algo, NumWorkers = workers, NumCanonicalNodes = nodes };

    private static long[] Ids(IEnumerable<Batch> batches)
    {
        var ids = new List<long>();
        using var scope = torch.NewDisposeScope();
        foreach (Batch b in batches)
        {
            ids.AddRange(b["x"].data<long>().ToArray());
        }

        return ids.ToArray();
    }

    /// <summary>The samples of every global batch in order: rank 0's batch k, rank 1's batch k, … for each k.</summary>
    private static long[] GlobalSequence(Func<int, IEnumerable<Batch>> rankBatches, int worldSize)
    {
        var perRank = new List<long[][]>();
        for (int r = 0; r < worldSize; r++)
        {
            using var scope = torch.NewDisposeScope();
            perRank.Add(rankBatches(r).Select(b => b["x"].data<long>().ToArray()).ToArray());
        }

        Assert.That(perRank.Select(p => p.Length).Distinct().Count(), Is.EqualTo(1), "every rank has the same number of batches");
        var all = new List<long>();
        for (int k = 0; k < perRank[0].Length; k++)
        {
            for (int r = 0; r < worldSize; r++)
            {
                all.AddRange(perRank[r][k]);
            }
        }

        return all.ToArray();
    }

    [Test]
    public void TheGlobalOrderIsTheSameForOneTwoAndFourRanksAndAnyWorkers()
    {
        const int globalBatch = 8;
        var data = new RecordingShardedDataset(13, 20, 7, 30, 30); // 100 samples: 12 full global batches and a tail of 4
        long[]? reference = null;
        foreach (int world in new[] { 1, 2, 4 })
        {
            foreach (int workers in new[] { 0, 1, 2 })
            {
                for (long epoch = 0; epoch < 2; epoch++)
                {
                    DataLoader<long> loader = Loader(data, globalBatch / world, workers: workers);
                    long[] seq = GlobalSequence(r => loader.WithSampler(new DistributedSampler(world, r)).GetEpoch(epoch), world);
                    Assert.That(seq.Order(), Is.EqualTo(Enumerable.Range(0, 100).Select(i => (long)i)), $"W={world}, workers={workers}, epoch {epoch}: a permutation");
                    Assert.That(seq, Is.EqualTo(loader.GlobalOrder(epoch)), $"W={world}, workers={workers}, epoch {epoch}: the global order");
                    if (epoch == 0)
                    {
                        reference ??= seq;
                        Assert.That(seq, Is.EqualTo(reference), $"W={world}, workers={workers}");
                    }
                }
            }
        }

        Assert.That(Loader(data, 8).GlobalOrder(1), Is.Not.EqualTo(reference), "another epoch, another order");
        Assert.That(Loader(data, 8, seed: 18).GlobalOrder(0), Is.Not.EqualTo(reference), "another seed, another order");
    }

    [Test]
    public void EachShuffleAlgorithmGivesAPermutationPerEpoch()
    {
        long[] shards = { 50, 1, 0, 33, 64, 64, 17 };
        long n = shards.Sum();
        foreach (string algo in StreamingShuffle.Algorithms)
        {
            foreach (int nodes in new[] { 1, 3, 8 })
            {
                long[] e0 = StreamingShuffle.GetShuffle(algo, shards, nodes, 5, 0), e1 = StreamingShuffle.GetShuffle(algo, shards, nodes, 5, 1);
                Assert.That(e0.Order(), Is.EqualTo(Enumerable.Range(0, (int)n).Select(i => (long)i)), $"{algo}, {nodes} nodes");
                Assert.That(e1.Order(), Is.EqualTo(Enumerable.Range(0, (int)n).Select(i => (long)i)), $"{algo}, {nodes} nodes");
                Assert.That(e1, Is.Not.EqualTo(e0));
                Assert.That(StreamingShuffle.GetShuffle(algo, shards, nodes, 5, 0), Is.EqualTo(e0), "reproducible");
            }
        }

        Assert.Throws<ArgumentException>(() => StreamingShuffle.GetShuffle("py9x", shards, 1, 0, 0));
    }

    [Test]
    public void Py1sReadsEachShardInOneRunPerCanonicalNode()
    {
        long[] shards = Enumerable.Repeat(20L, 10).ToArray();
        foreach (int nodes in new[] { 1, 3 })
        {
            long[] order = StreamingShuffle.GetShuffle(StreamingShuffle.Py1s, shards, nodes, 9, 2);
            int switches = 0;
            for (int i = 1; i < order.Length; i++)
            {
                switches += order[i] / 20 != order[i - 1] / 20 ? 1 : 0;
            }

            // Each shard is one run, except where a canonical node boundary cuts it in two.
            Assert.That(switches, Is.LessThanOrEqualTo(shards.Length - 1 + (nodes - 1)), $"{nodes} canonical nodes");
        }

        long[] naive = StreamingShuffle.GetShuffle(StreamingShuffle.Naive, shards, 1, 9, 2);
        Assert.That(Enumerable.Range(1, naive.Length - 1).Count(i => naive[i] / 20 != naive[i - 1] / 20), Is.GreaterThan(100), "naive mixes shards");
    }

    [Test]
    public void TrainingPadsEveryRankToTheSameBatchesAndEvaluationReadsEachSampleOnce()
    {
        var data = new ListDataset<long>(Enumerable.Range(0, 101).Select(i => (long)i).ToArray());
        var loader = new DataLoader<long>(data, 2, Collate, shuffle: true, seed: 3) { ShuffleAlgo = StreamingShuffle.Naive };

        long[] train = GlobalSequence(r => loader.WithSampler(new DistributedSampler(4, r)).GetEpoch(0), 4);
        Assert.That(train, Has.Length.EqualTo(104), "101 samples padded to 4 ranks × 26");
        Assert.That(train.Distinct().Count(), Is.EqualTo(101), "every sample at least once");
        long[] order = loader.GlobalOrder(0);
        Assert.That(train.Skip(101), Is.EqualTo(order.Take(3)), "padding repeats the start of the epoch's order");

        var eval = new List<long>();
        for (int r = 0; r < 4; r++)
        {
            eval.AddRange(Ids(loader.WithSampler(new DistributedSampler(4, r, Pad: false)).GetEpoch(0)));
        }

        Assert.That(eval.Order(), Is.EqualTo(Enumerable.Range(0, 101).Select(i => (long)i)), "evaluation: each sample exactly once");

        var lastRank = (DataLoader<long>)loader.WithSampler(new DistributedSampler(4, 3));
        Assert.That(Ids(lastRank.GetEpochFromSample(0, 104)), Is.Empty, "a position after the padded last batch: the epoch is done");
        Assert.That(Ids(lastRank.GetEpochFromSample(0, 96)), Is.EqualTo(train.Skip(96 + 6).Take(2)), "the last global batch, padded");
    }

    [Test]
    public void ResumingAtARandomSampleContinuesTheOrderForAnyWorldSize([Values(1, 2, 4)] int newWorld)
    {
        var data = new RecordingShardedDataset(40, 40, 40, 37); // 157 samples
        var rng = new Random(TestContext.CurrentContext.Random.Next());
        const int globalBatch = 8;
        DataLoader<long> before = Loader(data, globalBatch / 2, workers: 1);
        long[] full = GlobalSequence(r => before.WithSampler(new DistributedSampler(2, r, Pad: false)).GetEpoch(1), 2);

        // Two ranks consumed k global batches, then the job restarts on newWorld ranks.
        int k = rng.Next(1, 157 / globalBatch);
        long consumed = (long)k * globalBatch;
        DataLoader<long> after = Loader(data, globalBatch / newWorld, workers: 2);
        var rest = new List<long>();
        var perRank = new List<long[]>();
        for (int r = 0; r < newWorld; r++)
        {
            int readsBefore = data.Reads.Count;
            long[] mine = Ids(((DataLoader<long>)after.WithSampler(new DistributedSampler(newWorld, r, Pad: false))).GetEpochFromSample(1, consumed));
            Assert.That(data.Reads.Count - readsBefore, Is.EqualTo(mine.Length), "skipped samples are not read");
            Assert.That(data.ReadOrders[^1], Is.EqualTo(mine), "the dataset is told the rank's upcoming reads");
            perRank.Add(mine);
        }

        // Interleave the new ranks' batches back into global batches.
        int perRankBatch = globalBatch / newWorld;
        for (int b = 0; b * perRankBatch < perRank.Max(p => p.Length); b++)
        {
            foreach (long[] mine in perRank)
            {
                rest.AddRange(mine.Skip(b * perRankBatch).Take(perRankBatch));
            }
        }

        long[] resumed = full.Take((int)consumed).Concat(rest).ToArray();
        Assert.That(resumed.Order(), Is.EqualTo(Enumerable.Range(0, 157).Select(i => (long)i)), $"k={k}: every sample exactly once in the epoch");
        Assert.That(resumed.Take(full.Length - 5), Is.EqualTo(full.Take(full.Length - 5)), $"k={k}: the same global order up to the uneven tail");
    }

    [Test]
    public void SameWorldSizeResumeAtASampleEqualsSkippingBatches()
    {
        var data = new RecordingShardedDataset(25, 25, 25, 25);
        DataLoader<long> loader = Loader(data, 3);
        foreach (int k in new[] { 0, 1, 5, 16 })
        {
            for (int r = 0; r < 2; r++)
            {
                IDataLoader rank = loader.WithSampler(new DistributedSampler(2, r));
                Assert.That(Ids(((ISampleResumableDataLoader)rank).GetEpochFromSample(0, k * 6L)), Is.EqualTo(Ids(rank.GetEpoch(0, k))), $"k={k}, rank {r}");
            }
        }

        Assert.Throws<InvalidOperationException>(() => new DataLoader<long>(data, 3, Collate).GetEpochFromSample(0, 3));
    }

    [Test]
    public void AWorkersReadErrorSurfacesWithTheSampleIndex()
    {
        var data = new RecordingShardedDataset(10, 10, 10) { FailAt = 13 };
        DataLoader<long> loader = Loader(data, 4, workers: 2);
        int liveBefore = DataLoaderWorkers.LiveThreads;
        var error = Assert.Throws<DataLoaderWorkerException>(() => Ids(loader.GetEpoch(0)));
        Assert.That(error!.SampleIndex, Is.EqualTo(13));
        Assert.That(error.InnerException, Is.TypeOf<InvalidDataException>());
        Assert.That(error.Message, Does.Contain("sample 13"));
        Assert.That(DataLoaderWorkers.LiveThreads, Is.EqualTo(liveBefore), "workers joined after the error");
    }

    [Test]
    public void StoppingEarlyCancelsAndJoinsTheWorkers()
    {
        var data = new RecordingShardedDataset(Enumerable.Repeat(100L, 10).ToArray());
        DataLoader<long> loader = Loader(data, 4, workers: 2);
        int liveBefore = DataLoaderWorkers.LiveThreads;
        for (int round = 0; round < 20; round++)
        {
            using var scope = torch.NewDisposeScope();
            using IEnumerator<Batch> batches = loader.GetEpoch(round).GetEnumerator();
            for (int i = 0; i < 3; i++)
            {
                Assert.That(batches.MoveNext(), Is.True);
            }
        }

        Assert.That(DataLoaderWorkers.LiveThreads, Is.EqualTo(liveBefore), "no leaked worker thread");
        int reads = data.Reads.Count;
        Thread.Sleep(50);
        Assert.That(data.Reads.Count, Is.EqualTo(reads), "no reads after the enumeration stopped");

        // Bounded read-ahead: 3 batches consumed + at most (prefetch_factor + 1) batches per worker, per round.
        Assert.That(reads, Is.LessThanOrEqualTo(20 * (3 + 2 * (2 + 1)) * 4));
    }

    [Test]
    public void BadSettingsAreRefusedWithTheirNames()
    {
        var data = new ListDataset<long>(new long[] { 1, 2 });
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _ = new DataLoader<long>(data, 1, Collate) { NumWorkers = -1 })!.Message, Does.Contain("num_workers"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _ = new DataLoader<long>(data, 1, Collate) { PrefetchFactor = 0 })!.Message, Does.Contain("prefetch_factor"));
        Assert.That(Assert.Throws<ArgumentException>(() => _ = new DataLoader<long>(data, 1, Collate) { ShuffleAlgo = "py1x" })!.Message, Does.Contain("py1x"));
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => _ = new DataLoader<long>(data, 1, Collate) { NumCanonicalNodes = 0 })!.Message, Does.Contain("num_canonical_nodes"));
    }
}
