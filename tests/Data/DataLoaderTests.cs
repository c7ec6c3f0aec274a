using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Data;

[TestFixture]
public class DataLoaderTests
{
    private static DataLoader<long[]> MlmLoader(long seed, bool dropLast = false)
    {
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 50, SequenceLength = 16, RegularVocabSize = 100, Seed = 4 });
        return new DataLoader<long[]>(data, 8, new MlmCollator(data.Vocabulary), shuffle: true, dropLast: dropLast, seed: seed);
    }

    private static long[][] Ids(IEnumerable<Batch> batches) => batches.Select(b => b["input_ids"].data<long>().ToArray()).ToArray();

    [Test]
    public void ResumingAtBatchKEqualsSkippingKBatches()
    {
        using var d = torch.NewDisposeScope();
        DataLoader<long[]> loader = MlmLoader(seed: 1);
        Assert.That(loader.BatchesPerEpoch, Is.EqualTo(7));
        for (long epoch = 0; epoch < 2; epoch++)
        {
            Batch[] full = loader.GetEpoch(epoch).ToArray();
            foreach (int k in new[] { 0, 1, 3, 6, 7 })
            {
                Batch[] resumed = loader.GetEpoch(epoch, k).ToArray();
                Assert.That(resumed, Has.Length.EqualTo(full.Length - k));
                for (int i = 0; i < resumed.Length; i++)
                {
                    foreach (string key in new[] { "input_ids", "attention_mask", "labels" })
                    {
                        string where = $"epoch {epoch}, skip {k}, batch {i}, {key}";
                        Assert.That(resumed[i][key].shape, Is.EqualTo(full[k + i][key].shape), where);
                        Assert.That(resumed[i][key].data<long>().ToArray(), Is.EqualTo(full[k + i][key].data<long>().ToArray()), where);
                    }
                }
            }
        }
    }

    [Test]
    public void EachEpochIsShuffledDifferentlyAndReproducibly()
    {
        using var d = torch.NewDisposeScope();
        long[][] e0 = Ids(MlmLoader(seed: 1).GetEpoch(0)), e0Again = Ids(MlmLoader(seed: 1).GetEpoch(0));
        long[][] e1 = Ids(MlmLoader(seed: 1).GetEpoch(1)), otherSeed = Ids(MlmLoader(seed: 2).GetEpoch(0));
        Assert.That(e0Again, Is.EqualTo(e0), "same seed and epoch");
        Assert.That(e1, Is.Not.EqualTo(e0), "next epoch");
        Assert.That(otherSeed, Is.Not.EqualTo(e0), "another seed");

        long[] o0 = EpochSampler.Order(50, 1, 0, true), o1 = EpochSampler.Order(50, 1, 1, true);
        Assert.That(o0.Order(), Is.EqualTo(Enumerable.Range(0, 50).Select(i => (long)i)), "a permutation");
        Assert.That(o1, Is.Not.EqualTo(o0));
        Assert.That(EpochSampler.Order(5, 1, 0, false), Is.EqualTo(new long[] { 0, 1, 2, 3, 4 }));
    }

    [Test]
    public void DropLastAndCountsReportSamplesAndTokens()
    {
        using var d = torch.NewDisposeScope();
        DataLoader<long[]> keep = MlmLoader(1), drop = MlmLoader(1, dropLast: true);
        Assert.That((keep.BatchesPerEpoch, keep.SamplesPerEpoch), Is.EqualTo(((long?)7, (long?)50)));
        Assert.That((drop.BatchesPerEpoch, drop.SamplesPerEpoch), Is.EqualTo(((long?)6, (long?)48)));
        Batch[] batches = keep.GetEpoch(0).ToArray();
        Assert.That(batches.Select(b => b.NumSamples), Is.EqualTo(new long[] { 8, 8, 8, 8, 8, 8, 2 }));
        Assert.That(batches.Select(b => b.NumTokens), Is.EqualTo(new long[] { 128, 128, 128, 128, 128, 128, 32 }));
        Assert.That(drop.GetEpoch(0).Count(), Is.EqualTo(6));
    }
}
