using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// Alibi: the head slopes against the paper's formula, the bias tensor against a float64 loop, attention with the
/// bias against a float64 reference, longer-than-trained sequences for BERT and GPT (GPT: the full pass equals the
/// key/value-cached one and causal prefixes are unchanged), the frozen position embedding, and the batch reshape of
/// <c>train_sequence_length_scaling</c> (Composer's tests/algorithms/test_alibi.py checks the same properties).
/// </summary>
[TestFixture]
public class AlibiTests
{
    /// <summary>The reference code of Press et al. (2021): start = 2^(−2^−(log2 n − 3)), ratio = start, and the interleaving rule for other head counts.</summary>
    private static double[] PaperSlopes(int n)
    {
        static double[] PowerOf2(int n)
        {
            double start = Math.Pow(2, -Math.Pow(2, -(Math.Log2(n) - 3)));
            return Enumerable.Range(0, n).Select(i => start * Math.Pow(start, i)).ToArray();
        }

        if (Math.Log2(n) % 1 == 0)
        {
            return PowerOf2(n);
        }

        int closest = 1 << (int)Math.Floor(Math.Log2(n));
        return PowerOf2(closest).Concat(PaperSlopes(2 * closest).Where((_, i) => i % 2 == 0).Take(n - closest)).ToArray();
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(4)]
    [TestCase(6)]
    [TestCase(8)]
    [TestCase(12)]
    [TestCase(16)]
    public void SlopesAreThePapers(int heads)
    {
        Assert.That(AlibiBias.Slopes(heads), Is.EqualTo(PaperSlopes(heads)).Within(1e-15));
        if (heads == 8)
        {
            Assert.That(AlibiBias.Slopes(8), Is.EqualTo(new[] { 1 / 2.0, 1 / 4.0, 1 / 8.0, 1 / 16.0, 1 / 32.0, 1 / 64.0, 1 / 128.0, 1 / 256.0 }), "the paper's 8-head example");
        }
    }

    [TestCase(false)]
    [TestCase(true)]
    public void TheBiasIsMinusSlopeTimesDistanceWithMaskedKeysAtMinusInfinity(bool causal)
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        int heads = 3, t = 9;
        double[] slopes = AlibiBias.Slopes(heads);
        Tensor keyMask = torch.rand(new long[] { 2, t }, generator: gen).gt(0.3).to(ScalarType.Int64);
        keyMask[1, 0] = 0; // a padded position whose query sees itself only (causal) or the real keys

        Tensor bias = AlibiBias.Build(slopes, 0, t, t, causal, keyMask, torch.CPU);

        Assert.That(bias.shape, Is.EqualTo(new long[] { 2, heads, t, t }));
        float[] actual = bias.data<float>().ToArray();
        long[] mask = keyMask.data<long>().ToArray();
        int n = 0;
        for (int b = 0; b < 2; b++)
        {
            for (int h = 0; h < heads; h++)
            {
                for (int i = 0; i < t; i++)
                {
                    for (int j = 0; j < t; j++, n++)
                    {
                        bool visible = i == j || (mask[b * t + j] != 0 && (!causal || j <= i));
                        double expected = visible ? -slopes[h] * Math.Abs(i - j) : double.NegativeInfinity;
                        Assert.That(actual[n], Is.EqualTo(expected).Within(1e-6 * Math.Abs(i - j) + 1e-7), $"b={b} h={h} i={i} j={j}");
                    }
                }
            }
        }
    }

    [Test]
    public void AttentionWithTheBiasMatchesAFloat64Reference()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        TransformerConfig config = ModelTestData.Tiny() with { AttentionDropout = 0 };
        var attn = new MultiHeadSelfAttention(config, causal: false);
        attn.eval();
        long b = 2, t = 11, hidden = config.HiddenSize, heads = config.NumHeads, dh = hidden / heads;
        Tensor x = TestTensors.Normal(gen, b, t, hidden);
        Tensor keyMask = torch.ones(b, t, dtype: ScalarType.Int64);
        keyMask[0, TensorIndex.Slice(8)] = 0;
        Tensor bias = AlibiBias.Build(AlibiBias.Slopes((int)heads), 0, t, t, causal: false, keyMask, torch.CPU);

        Tensor y = attn.call(x, bias);

        Dictionary<string, Tensor> p = attn.state_dict();
        Tensor x64 = x.to(ScalarType.Float64);
        Tensor qkv = torch.matmul(x64, p["qkv.weight"].to(ScalarType.Float64).t()) + p["qkv.bias"].to(ScalarType.Float64);
        Tensor[] parts = qkv.view(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0);
        Tensor scores = torch.matmul(parts[0], parts[1].transpose(-1, -2)) / Math.Sqrt(dh) + bias.to(ScalarType.Float64);
        Tensor mixed = torch.matmul(F.softmax(scores, -1), parts[2]).transpose(1, 2).reshape(b, t, hidden);
        Tensor reference = torch.matmul(mixed, p["out_proj.weight"].to(ScalarType.Float64).t()) + p["out_proj.bias"].to(ScalarType.Float64);

        double err = (y.to(ScalarType.Float64) - reference).abs().max().item<double>();
        Assert.That(err, Is.LessThan(1e-5 * reference.abs().max().item<double>() + 1e-6), "fp32 against float64");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void BertRunsLongerThanItsPositionEmbeddingAndNoLongerReadsIt()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new BertForMaskedLM(ModelTestData.Tiny() with { MaxSequenceLength = 16, Dropout = 0, AttentionDropout = 0 });
        model.eval();
        Batch longBatch = ModelTestData.RandomBatch(2, 40, padLast: 5);
        Assert.Throws<ArgumentException>(() => model.call(longBatch), "40 tokens do not fit 16 position embeddings");

        Assert.That(Functional.ApplyAlibi(model, maxSequenceLength: 64), Is.EqualTo(1));

        Assert.That(model.Config.MaxSequenceLength, Is.EqualTo(64));
        Parameter wpe = model.Backbone.named_parameters().Single(n => n.name == "wpe.weight").parameter;
        Assert.That(wpe.requires_grad, Is.False);
        Assert.That(wpe.abs().max().item<float>(), Is.Zero);
        using var noGrad = torch.no_grad();
        Tensor logits = model.call(longBatch);
        Assert.That(logits.shape, Is.EqualTo(new long[] { 2, 40, 64 }));
        Assert.That(logits.isfinite().all().item<bool>(), Is.True, "finite at 40 > 16 tokens, padding included");
        wpe.copy_(torch.randn_like(wpe));
        Assert.That((model.call(longBatch) - logits).abs().max().item<float>(), Is.Zero, "the position embedding is not read");
        Assert.Throws<ArgumentException>(() => model.call(ModelTestData.RandomBatch(1, 65)), "64 is the new maximum");
    }

    [Test]
    public void GptAtALongerLengthMatchesItsCachedPassAndItsPrefixes()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new GptForCausalLM(ModelTestData.Tiny("gpt-tiny") with { MaxSequenceLength = 16 });
        model.eval();
        Functional.ApplyAlibi(model, maxSequenceLength: 48);
        using var noGrad = torch.no_grad();
        Tensor ids = torch.randint(0, 60, new long[] { 2, 40 }, dtype: ScalarType.Int64);

        Tensor full = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids }));
        Assert.That(full.isfinite().all().item<bool>(), Is.True);

        using KeyValueCache cache = model.NewCache();
        Tensor incremental = torch.cat(new[]
        {
            model.ForwardCached(ids.narrow(1, 0, 10), cache),
            model.ForwardCached(ids.narrow(1, 10, 25), cache),
            model.ForwardCached(ids.narrow(1, 35, 5), cache),
        }, 1);
        Assert.That((incremental - full).abs().max().item<float>(), Is.LessThan(1e-5), "cached = full (fp32)");

        Tensor prefix = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids.narrow(1, 0, 13) }));
        Assert.That((prefix - full.narrow(1, 0, 13)).abs().max().item<float>(), Is.LessThan(1e-5), "causal: later tokens do not change earlier logits");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ThePositionEmbeddingStaysZeroWhileTraining()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        var adam = new AdamW(model.parameters().ToList(), lr: 1e-2, weight_decay: 0.1);
        Functional.ApplyAlibi(model);
        Batch batch = ModelTestData.RandomBatch(2, 12, labels: torch.randint(0, 60, new long[] { 2, 12 }, dtype: ScalarType.Int64));
        for (int i = 0; i < 2; i++)
        {
            adam.zero_grad();
            model.Loss(model.call(batch), batch).backward();
            adam.step();
        }

        Parameter wpe = model.Backbone.named_parameters().Single(n => n.name == "wpe.weight").parameter;
        Assert.That(wpe.abs().max().item<float>(), Is.Zero);
        Assert.That(model.Config.MaxSequenceLength, Is.EqualTo(32), "no max_sequence_length: the model's own");
    }

    [Test]
    public void TrainingBatchesAreReshapedToShorterSequences()
    {
        using var d = torch.NewDisposeScope();
        Tensor ids = torch.arange(4 * 16, dtype: ScalarType.Int64).view(4, 16);
        var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = ids + 100, ["attention_mask"] = torch.ones_like(ids) });

        Batch scaled = Functional.ScaleSequenceLength(batch, 0.25);

        Assert.That(scaled["input_ids"].shape, Is.EqualTo(new long[] { 16, 4 }));
        Assert.That(scaled["input_ids"][5].data<long>().ToArray(), Is.EqualTo(new long[] { 20, 21, 22, 23 }), "row 5 = sample 1, tokens 4..7");
        Assert.That(scaled["labels"][5].data<long>().ToArray(), Is.EqualTo(new long[] { 120, 121, 122, 123 }));
        Assert.That((scaled.NumTokens, scaled.NumSamples), Is.EqualTo((64L, 16L)));
        Assert.That(Functional.ScaleSequenceLength(batch, 1.0), Is.SameAs(batch));

        var ex = Assert.Throws<ArgumentException>(() => Functional.ScaleSequenceLength(batch, 0.3));
        Assert.That(ex!.Message, Does.Contain("0.3").And.Contain("16 tokens"));
        var oneD = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["labels"] = torch.zeros(4, dtype: ScalarType.Int64) });
        Assert.That(Assert.Throws<ArgumentException>(() => Functional.ScaleSequenceLength(oneD, 0.5))!.Message, Does.Contain("'labels' is [4]"));
    }

    [Test]
    public void TheAlgorithmRunsAtInitOnceAndReshapesAfterTheDataloader()
    {
        using var d = torch.NewDisposeScope();
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        var state = new State(model);
        var alibi = new Alibi(maxSequenceLength: 64, trainSequenceLengthScaling: 0.5);
        state.Algorithms.Add(alibi);
        using var engine = new Engine(state, new Logger(state));

        engine.RunEvent(Event.Init);
        Assert.That(model.Backbone.AttentionBias, Is.InstanceOf<AlibiAttentionBias>());
        Assert.That(alibi.Match(Event.Init, state), Is.False, "once");
        Assert.That(alibi.Match(Event.AfterDataloader, state), Is.True);
        Assert.That(new Alibi(trainSequenceLengthScaling: 1).Match(Event.AfterDataloader, state), Is.False);

        state.Batch = ModelTestData.RandomBatch(2, 8);
        alibi.Apply(Event.AfterDataloader, state, new Logger(state));
        Assert.That(state.Batch["input_ids"].shape, Is.EqualTo(new long[] { 4, 4 }));

        var back = (Alibi)AlgorithmCatalog.Create(alibi.Describe());
        Assert.That((back.MaxSequenceLength, back.TrainSequenceLengthScaling, back.RequiredOnLoad), Is.EqualTo(((int?)64, 0.5, true)));
        Assert.That(((Alibi)AlgorithmCatalog.Create(new Alibi().Describe())).MaxSequenceLength, Is.Null);
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new Alibi(trainSequenceLengthScaling: 1.5));
    }
}
