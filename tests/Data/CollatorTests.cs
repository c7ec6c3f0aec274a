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
        Batch batch = new MlmCollator(vocabulary).Collate(samples, new CollateContext(0, 0, 0));

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
    public void MlmMaskingDependsOnlyOnSeedEpochAndBatch()
    {
        using var d = torch.NewDisposeScope();
        var vocabulary = new TokenVocabulary(50);
        var data = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 8, SequenceLength = 64, RegularVocabSize = 50 });
        var samples = Enumerable.Range(0, 8).Select(i => data[i]).ToList();
        var collator = new MlmCollator(vocabulary, new MlmCollatorOptions { Seed = 3 });
        Tensor Ids(CollateContext c) => collator.Collate(samples, c)["input_ids"];

        Assert.That(Ids(new CollateContext(1, 2, 7)).equal(Ids(new CollateContext(1, 2, 7))).all().item<bool>(), Is.True);
        Assert.That(Ids(new CollateContext(1, 2, 7)).equal(Ids(new CollateContext(1, 3, 7))).all().item<bool>(), Is.False, "another batch");
        Assert.That(Ids(new CollateContext(1, 2, 7)).equal(Ids(new CollateContext(2, 2, 7))).all().item<bool>(), Is.False, "another epoch");
        Assert.That(Ids(new CollateContext(1, 2, 7)).equal(Ids(new CollateContext(1, 2, 8))).all().item<bool>(), Is.False, "another loader seed");
        Assert.Throws<ArgumentOutOfRangeException>(() => new MlmCollator(vocabulary, new MlmCollatorOptions { MaskReplaceProbability = 0.95 }));
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
