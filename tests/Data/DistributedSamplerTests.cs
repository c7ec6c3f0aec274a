using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;

namespace ComposerSharp.Tests.Data;

[TestFixture]
public class DistributedSamplerTests
{
    private static DataLoader<long> Loader(long count, int batchSize, bool shuffle = true, long seed = 3) =>
        new(new ListDataset<long>(Enumerable.Range(0, (int)count).Select(i => (long)i).ToList()), batchSize,
            samples => new Batch(new Dictionary<string, torch.Tensor> { ["i"] = torch.tensor(samples.ToArray()) }), shuffle, seed: seed);

    private static long[] Samples(IDataLoader loader, long epoch) =>
        loader.GetEpoch(epoch).SelectMany(b => b["i"].data<long>().ToArray()).ToArray();

    [TestCase(10, 2)]
    [TestCase(11, 2)]
    [TestCase(11, 3)]
    [TestCase(2, 4)]
    public void PaddedShardsAreEqualAndCoverTheEpochAsPyTorchDoes(int count, int world)
    {
        using var scope = torch.NewDisposeScope();
        long[] order = EpochSampler.Order(count, 3, 1, shuffle: true);
        long perRank = (count + world - 1) / world;

        // PyTorch: pad the order by repeating its start up to W·ceil(N/W), then rank r takes order[r::W].
        long[] padded = Enumerable.Range(0, (int)(perRank * world)).Select(i => order[i % count]).ToArray();
        for (int r = 0; r < world; r++)
        {
            long[] expected = padded.Where((_, i) => i % world == r).ToArray();
            Assert.That(new DistributedSampler(world, r).Shard(order), Is.EqualTo(expected));
            Assert.That(Samples(Loader(count, 2).WithSampler(new DistributedSampler(world, r)), 1), Is.EqualTo(expected));
        }
    }

    [Test]
    public void DropLastCutsAndUnpaddedShardsAreDisjointAndComplete()
    {
        using var scope = torch.NewDisposeScope();
        long[] order = EpochSampler.Order(11, 5, 0, shuffle: true);
        long[][] cut = Enumerable.Range(0, 3).Select(r => new DistributedSampler(3, r, DropLast: true).Shard(order)).ToArray();
        Assert.That(cut.Select(s => s.Length), Is.All.EqualTo(3));
        Assert.That(cut.SelectMany(s => s).Distinct().Count(), Is.EqualTo(9));

        long[][] uneven = Enumerable.Range(0, 3).Select(r => new DistributedSampler(3, r, Pad: false).Shard(order)).ToArray();
        Assert.That(uneven.Select(s => s.Length), Is.EqualTo(new[] { 4, 4, 3 }));
        Assert.That(uneven.SelectMany(s => s).OrderBy(i => i), Is.EqualTo(Enumerable.Range(0, 11).Select(i => (long)i)));
    }

    [Test]
    public void ShardedLoadersCountTheirShardAndResumeMidEpoch()
    {
        using var scope = torch.NewDisposeScope();
        IDataLoader rank1 = Loader(11, 2).WithSampler(new DistributedSampler(2, 1));
        Assert.That((rank1.BatchesPerEpoch, rank1.SamplesPerEpoch), Is.EqualTo(((long?)3, (long?)6)));
        long[] whole = Samples(rank1, 2);
        long[] resumed = rank1.GetEpoch(2, skipBatches: 1).SelectMany(b => b["i"].data<long>().ToArray()).ToArray();
        Assert.That(resumed, Is.EqualTo(whole.Skip(2)));
        Assert.That(Samples(rank1, 3), Is.Not.EqualTo(whole), "each epoch is shuffled differently");
    }

    [Test]
    public void BadRanksAreNamed()
    {
        Assert.That(Assert.Throws<ArgumentOutOfRangeException>(() => new DistributedSampler(2, 2).Validate())!.Message, Does.Contain("[0, 2)"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DistributedSampler(0, 0).Validate());
    }
}
