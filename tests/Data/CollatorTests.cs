using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Data;

[TestFixture]
public class CollatorTests
{
    [Test]
    public void MlmMaskingRatesAreBerts()
    {
        using var d = torch.NewDisposeScope();
        var vocabulary = new TokenVocabulary(1000);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 400, SequenceLength = 128, RegularVocabSize = 1000, Seed = 9 });
        var samples = Enumerable.Range(0, 400).Select(i => data[i]).ToList();

        // A few special tokens and a shorter sample (padding) must never be selected.
        samples[0][0] = vocabulary.ClsId;
        samples[1][5] = vocabulary.EndOfTextId;
        samples[2] = samples[2][..100];
        Batch batch = new MlmCollator(vocabulary).Collate(samples, new CollateContext(0, 0, 0, Enumerable.Range(0, 400).Select(i => (long)i).ToArray()));

        long[] ids = batch["input_ids"].data<long>().ToArray();
        long[] labels = batch["labels"].data<long>().ToArray();
        long[] mask = batch["attention_mask"].data<long>().ToArray();
        long real = 0, selected = 0, masked = 0, randomised = 0, kept = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            long original = samples[i / 128].Length > i % 128 ? samples[i / 128][i % 128] : vocabulary.PadId;
            bool special = vocabulary.IsSpecial(original);
            if (mask[i] == 0 || special)
            {
                Assert.That(labels[i], Is.EqualTo(-100), $"padding/special position {i} must not be selected");
                Assert.That(ids[i], Is.EqualTo(original));
                continue;
            }

            real++;
            if (labels[i] == -100)
            {
                Assert.That(ids[i], Is.EqualTo(original), "unselected tokens are unchanged");
                continue;
            }

            Assert.That(labels[i], Is.EqualTo(original), "the label of a selected token is its original id");
            selected++;
            if (ids[i] == vocabulary.MaskId)
            {
                masked++;
            }
            else if (ids[i] == original)
            {
                kept++;
            }
            else
            {
                Assert.That(ids[i], Is.InRange(0, 999), "random replacements are regular tokens");
                randomised++;
            }
        }

        Assert.That(mask.Sum(), Is.EqualTo(400 * 128 - 28));
        Assert.That(batch.NumTokens, Is.EqualTo(400 * 128 - 28));

        // Binomial tolerances of 4 standard deviations. A random replacement equals the original with probability 1/1000.
        static void Rate(long hits, long n, double p, string what)
        {
            double sigma = Math.Sqrt(p * (1 - p) / n);
            Assert.That((double)hits / n, Is.EqualTo(p).Within(4 * sigma), $"{what}: {hits}/{n}");
        }

        Rate(selected, real, 0.15, "selected");
        Rate(masked, selected, 0.8, "replaced by mask");
        Rate(randomised, selected, 0.1 * 0.999, "replaced by a random token");
        Rate(kept, selected, 0.1 + 0.1 * 0.001, "kept");
    }

    [Test]
    public void MlmMaskOfASampleDependsOnItsDatasetIndexNotOnItsBatch()
    {
        using var d = torch.NewDisposeScope();
        var vocabulary = new TokenVocabulary(50);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 8, SequenceLength = 64, RegularVocabSize = 50, Seed = 6 });
        var collator = new MlmCollator(vocabulary, new MlmCollatorOptions { Seed = 3 });

        // Collates the samples of dataset indices `indices` and returns, per sample, its (input ids, labels) row over its own length.
        (long[] Ids, long[] Labels)[] Collate(long[] indices, long[]? sampleSource = null, long epoch = 1, long batch = 2, long seed = 7, bool shortFirst = false)
        {
            var samples = (sampleSource ?? indices).Select(i => data[i]).ToList();
            if (shortFirst)
            {
                samples[0] = samples[0][..40];
            }

            Batch b = collator.Collate(samples, new CollateContext(epoch, batch, seed, indices));
            long width = b["input_ids"].shape[1];
            long[] ids = b["input_ids"].data<long>().ToArray();
            long[] labels = b["labels"].data<long>().ToArray();
            return samples.Select((s, r) => (ids.Skip((int)(r * width)).Take(s.Length).ToArray(), labels.Skip((int)(r * width)).Take(s.Length).ToArray())).ToArray();
        }

        // Sample 5 alone, first in a batch of 3, and last in a batch of 8 in another batch slot, padded to a different width.
        var alone = Collate(new long[] { 5 })[0];
        var first = Collate(new long[] { 5, 0, 1 }, batch: 0)[0];
        var last = Collate(new long[] { 7, 6, 4, 3, 2, 1, 0, 5 }, batch: 9)[7];
        var besideShort = Collate(new long[] { 2, 5 }, shortFirst: true)[1];
        foreach (var (other, where) in new[] { (first, "first of 3"), (last, "last of 8"), (besideShort, "beside a shorter sample") })
        {
            Assert.That(other.Ids, Is.EqualTo(alone.Ids), $"input ids of sample 5 {where}");
            Assert.That(other.Labels, Is.EqualTo(alone.Labels), $"labels of sample 5 {where}");
        }

        Assert.That(alone.Labels.Count(l => l != MlmCollator.IgnoreIndex), Is.GreaterThan(0), "some tokens of sample 5 are selected");

        // The same tokens under different dataset indices, epochs or loader seeds are masked differently.
        var sameTokensOtherIndex = Collate(new long[] { 6 }, sampleSource: new long[] { 5 })[0];
        Assert.That(sameTokensOtherIndex.Labels, Is.Not.EqualTo(alone.Labels), "another dataset index");
        Assert.That(Collate(new long[] { 5 }, epoch: 2)[0].Labels, Is.Not.EqualTo(alone.Labels), "another epoch");
        Assert.That(Collate(new long[] { 5 }, seed: 8)[0].Labels, Is.Not.EqualTo(alone.Labels), "another loader seed");

        // Within one batch, every pair of samples has different selections.
        var all = Collate(Enumerable.Range(0, 8).Select(i => (long)i).ToArray());
        for (int a = 0; a < all.Length; a++)
        {
            for (int b = a + 1; b < all.Length; b++)
            {
                Assert.That(all[a].Labels.Select(l => l != MlmCollator.IgnoreIndex), Is.Not.EqualTo(all[b].Labels.Select(l => l != MlmCollator.IgnoreIndex)), $"samples {a} and {b} have the same mask");
            }
        }

        // Without one dataset index per sample the collator refuses the batch instead of masking every sample alike.
        var twoSamples = new[] { data[0], data[1] };
        Assert.Throws<ArgumentException>(() => collator.Collate(twoSamples, new CollateContext(0, 0, 0)));
        var e = Assert.Throws<ArgumentException>(() => collator.Collate(twoSamples, new CollateContext(0, 0, 0, new long[] { 0 })))!;
        Assert.That(e.Message, Does.Contain("1 for a batch of 2"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new MlmCollator(vocabulary, new MlmCollatorOptions { MaskReplaceProbability = 0.95 }));
    }

    [Test]
    public void TheLoaderPassesEachSamplesDatasetIndexToTheCollator()
    {
        using var d = torch.NewDisposeScope();
        var data = new ListDataset<long[]>(Enumerable.Range(0, 10).Select(i => new long[] { i }).ToArray());
        var seen = new List<(long[] Tokens, long[] Indices)>();
        var recorder = new RecordingCollator(seen);
        var loader = new DataLoader<long[]>(data, 3, recorder, shuffle: true, seed: 4);
        foreach (IEnumerable<Batch> epoch in new[] { loader.GetEpoch(1), ((DataLoader<long[]>)loader.WithSampler(new DistributedSampler(2, 1))).GetEpoch(1, skipBatches: 1) })
        {
            foreach (Batch _ in epoch)
            {
            }
        }

        // Each sample here holds its own dataset index as its only token, so the indices must equal the tokens.
        Assert.That(seen, Has.Count.EqualTo(4 + 1));
        Assert.That(seen.Select(b => b.Indices), Is.EqualTo(seen.Select(b => b.Tokens)));
        Assert.That(seen.Take(4).SelectMany(b => b.Indices).Order(), Is.EqualTo(Enumerable.Range(0, 10).Select(i => (long)i)), "one epoch holds every index once");
    }

    /// <summary>Records the tokens (one per sample) and the dataset indices of each batch it collates.</summary>
    private sealed class RecordingCollator(List<(long[] Tokens, long[] Indices)> seen) : ICollator<long[]>
    {
        public Batch Collate(IReadOnlyList<long[]> samples, CollateContext context)
        {
            seen.Add((samples.Select(s => s[0]).ToArray(), context.SampleIndices!.ToArray()));
            return new Batch(new Dictionary<string, Tensor> { ["x"] = torch.zeros(samples.Count) });
        }
    }

    [Test]
    public void CausalAndClassificationCollatorsPadAndLabel()
    {
        using var d = torch.NewDisposeScope();
        var v = new TokenVocabulary(20);
        Batch lm = new CausalLmCollator(v).Collate(new[] { new long[] { 1, 2, 3 }, new long[] { 4 } }, default);
        Assert.That(lm["input_ids"].data<long>().ToArray(), Is.EqualTo(new long[] { 1, 2, 3, 4, v.PadId, v.PadId }));
        Assert.That(lm["attention_mask"].data<long>().ToArray(), Is.EqualTo(new long[] { 1, 1, 1, 1, 0, 0 }));
        Assert.That(lm["labels"].data<long>().ToArray(), Is.EqualTo(new long[] { 1, 2, 3, 4, -100, -100 }));
        Assert.That(lm.NumTokens, Is.EqualTo(4));

        var samples = new[] { new TextClassificationSample(new long[] { v.ClsId, 5 }, 1), new TextClassificationSample(new long[] { v.ClsId, 6, 7 }, 0) };
        Batch cls = new ClassificationCollator(v, padToLength: 4).Collate(samples, default);
        Assert.That(cls["input_ids"].shape, Is.EqualTo(new long[] { 2, 4 }));
        Assert.That(cls["attention_mask"].data<long>().ToArray(), Is.EqualTo(new long[] { 1, 1, 0, 0, 1, 1, 1, 0 }));
        Assert.That(cls["labels"].data<long>().ToArray(), Is.EqualTo(new long[] { 1, 0 }));
        Assert.That(cls["labels"].dtype, Is.EqualTo(ScalarType.Int64));
        Assert.That((cls.NumSamples, cls.NumTokens), Is.EqualTo((2L, 5L)));

        var e = Assert.Throws<ArgumentException>(() => new ClassificationCollator(v, padToLength: 2).Collate(samples, default))!;
        Assert.That(e.Message, Does.Contain("3 tokens").And.Contain("2"));
        e = Assert.Throws<ArgumentException>(() => new CausalLmCollator(v).Collate(new[] { new long[] { 1, 99 } }, default))!;
        Assert.That(e.Message, Does.Contain("99").And.Contain("[0, 24)"));
    }
}
