using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static ComposerSharp.Tests.Models.ModelTestData;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

[TestFixture]
public class TransformerModelTests
{
    [Test]
    public void PresetsHaveThePublishedShapes()
    {
        TransformerConfig b = TransformerConfig.Preset("bert-base");
        Assert.That((b.NumLayers, b.HiddenSize, b.NumHeads, b.IntermediateSize, b.PreLayerNorm), Is.EqualTo((12, 768, 12, 3072, (bool?)false)));
        TransformerConfig g = TransformerConfig.Preset("GPT2");
        Assert.That((g.NumLayers, g.HiddenSize, g.MaxSequenceLength, g.PreLayerNorm), Is.EqualTo((12, 768, 1024, (bool?)true)));
        Assert.That(TransformerConfig.PresetNames, Does.Contain("bert-tiny").And.Contain("gpt-tiny"));
        foreach (string name in TransformerConfig.PresetNames)
        {
            Assert.DoesNotThrow(() => TransformerConfig.Preset(name).Validate(), name);
        }
    }

    [Test]
    public void BadConfigsAreRejectedWithTheFieldName()
    {
        var e = Assert.Throws<ArgumentException>(() => TransformerConfig.Preset("bert-huge"))!;
        Assert.That(e.Message, Does.Contain("bert-huge").And.Contain("bert-base"));
        var r = Assert.Throws<ArgumentOutOfRangeException>(() => (TransformerConfig.Preset("bert-tiny") with { NumHeads = 3 }).Validate())!;
        Assert.That(r.Message, Does.Contain("HiddenSize (128) must be a multiple of NumHeads (3)"));
        Assert.That(r.Message, Does.Not.Contain("\n"), "one line");
        r = Assert.Throws<ArgumentOutOfRangeException>(() => new BertForMaskedLM(Tiny() with { Dropout = 1.5 }))!;
        Assert.That(r.Message, Does.Contain("Dropout"));
    }

    [Test]
    public void OutputsHaveTheDocumentedShapesAndDtypes()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(3);
        Batch batch = RandomBatch(3, 10, padLast: 4);
        var mlm = new BertForMaskedLM(Tiny());
        var cls = new BertForSequenceClassification(Tiny(), new SequenceClassificationOptions { NumLabels = 3 });
        var gpt = new GptForCausalLM(Tiny("gpt-tiny"));
        foreach (ComposerModel m in new ComposerModel[] { mlm, cls, gpt })
        {
            m.eval();
        }

        Assert.That(mlm.call(batch).shape, Is.EqualTo(new long[] { 3, 10, 64 }));
        Assert.That(cls.call(batch).shape, Is.EqualTo(new long[] { 3, 3 }));
        Assert.That(gpt.call(batch).shape, Is.EqualTo(new long[] { 3, 10, 64 }));
        Assert.That(mlm.call(batch).dtype, Is.EqualTo(ScalarType.Float32));
        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            foreach (ComposerModel m in new ComposerModel[] { mlm, cls, gpt })
            {
                Tensor y = m.call(batch);
                Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16), m.GetName());
                Assert.That(y.isfinite().all().item<bool>(), Is.True, m.GetName());
            }
        }
    }

    [Test]
    public void BadInputsNameTheProblem()
    {
        using var d = torch.NewDisposeScope();
        var mlm = new BertForMaskedLM(Tiny());
        var tooLong = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.zeros(1, 33, dtype: ScalarType.Int64) });
        Assert.That(Assert.Throws<ArgumentException>(() => mlm.call(tooLong))!.Message, Does.Contain("33").And.Contain("MaxSequenceLength"));
        var badId = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.full(1, 4, 64L, dtype: ScalarType.Int64) });
        Assert.That(Assert.Throws<ArgumentException>(() => mlm.call(badId))!.Message, Does.Contain("VocabSize is 64"));
    }

    [Test]
    public void IdsOutsideTheVocabularyAreNamedWithoutACheckInTheForward()
    {
        // The forward reads no ids to the host: the CPU embedding lookup rejects the id and the model names the range.
        using var d = torch.NewDisposeScope();
        var mlm = new BertForMaskedLM(Tiny());
        var gpt = new GptForCausalLM(Tiny("gpt-tiny"));
        Tensor negative = torch.tensor(new long[] { 3, -1, 5, 2 }).view(1, 4);
        Tensor tooLarge = torch.tensor(new long[] { 3, 1, 70, 2 }).view(1, 4);
        foreach ((Tensor ids, string range) in new[] { (negative, "[-1, 5]"), (tooLarge, "[1, 70]") })
        {
            var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids });
            foreach (TransformerModel model in new TransformerModel[] { mlm, gpt })
            {
                var ex = Assert.Throws<ArgumentException>(() => model.call(batch), model.GetName())!;
                Assert.That(ex.Message, Does.Contain($"input_ids holds ids in {range}").And.Contain("VocabSize is 64"), model.GetName());

                // The host-side check the Trainer runs before moving a batch to an accelerator gives the same message.
                ex = Assert.Throws<ArgumentException>(() => model.ValidateBatch(batch), model.GetName())!;
                Assert.That(ex.Message, Does.Contain($"input_ids holds ids in {range}"), model.GetName());
            }

            using var cache = gpt.NewCache();
            using (torch.no_grad())
            {
                Assert.That(Assert.Throws<ArgumentException>(() => gpt.ForwardCached(ids, cache))!.Message, Does.Contain("VocabSize is 64"), "cached decoding");
            }
        }

        Assert.DoesNotThrow(() => mlm.ValidateBatch(RandomBatch(2, 5)));
    }

    [TestCase(false)]
    [TestCase(true)]
    public void AttentionMatchesAFloat64Reference(bool causal)
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(11);
        TransformerConfig config = Tiny();
        var attn = new MultiHeadSelfAttention(config, causal);
        attn.eval();
        const long b = 2, t = 7, h = 32, heads = 4, dh = 8;
        Tensor x = torch.randn(b, t, h);

        // Sample 1 has its last 3 positions padded; for the causal case the combined mask is built as the backbone does.
        Tensor keyMask = torch.ones(b, t, dtype: ScalarType.Bool);
        keyMask[1, TensorIndex.Slice(t - 3)] = false;
        Tensor allowed = keyMask.view(b, 1, 1, t).expand(b, 1, t, t);
        if (causal)
        {
            allowed = allowed.logical_and(torch.ones(t, t, dtype: ScalarType.Bool).tril()).logical_or(torch.eye(t, dtype: ScalarType.Bool));
        }

        Tensor actual = attn.call(x, allowed);

        var p = attn.named_parameters().ToDictionary(kv => kv.name, kv => kv.parameter.detach().to(ScalarType.Float64));
        Tensor x64 = x.to(ScalarType.Float64);
        Tensor qkv = x64.matmul(p["qkv.weight"].t()) + p["qkv.bias"];
        Tensor Heads(int i) => qkv.narrow(2, i * h, h).view(b, t, heads, dh).transpose(1, 2);
        Tensor scores = Heads(0).matmul(Heads(1).transpose(-2, -1)) / Math.Sqrt(dh);
        scores = scores.masked_fill(allowed.logical_not(), double.NegativeInfinity);
        Tensor mixed = scores.softmax(-1).matmul(Heads(2)).transpose(1, 2).reshape(b, t, h);
        Tensor expected = mixed.matmul(p["out_proj.weight"].t()) + p["out_proj.bias"];

        double maxError = (actual.to(ScalarType.Float64) - expected).abs().max().item<double>();
        Assert.That(maxError, Is.LessThan(1e-5), "fp32 attention vs float64 reference, max |difference|");
    }

    [Test]
    public void CausalDecoderOutputsDoNotDependOnFutureTokens()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(5);
        var gpt = new GptForCausalLM(Tiny("gpt-tiny"));
        var bert = new BertForMaskedLM(Tiny());
        gpt.eval();
        bert.eval();
        Batch a = RandomBatch(2, 12);
        Tensor changed = a["input_ids"].clone();
        changed[TensorIndex.Colon, TensorIndex.Slice(8)] = (changed[TensorIndex.Colon, TensorIndex.Slice(8)] + 1) % 60;
        var bBatch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = changed, ["attention_mask"] = a["attention_mask"] });

        Tensor pastA = gpt.call(a).narrow(1, 0, 8), pastB = gpt.call(bBatch).narrow(1, 0, 8);
        Assert.That((pastA - pastB).abs().max().item<float>(), Is.LessThan(1e-5f), "GPT positions 0-7 must ignore tokens 8-11");
        Assert.That((gpt.call(a).narrow(1, 8, 4) - gpt.call(bBatch).narrow(1, 8, 4)).abs().max().item<float>(), Is.GreaterThan(1e-3f));

        // The same change does reach earlier positions of the bidirectional encoder, so the check above can fail.
        Assert.That((bert.call(a).narrow(1, 0, 8) - bert.call(bBatch).narrow(1, 0, 8)).abs().max().item<float>(), Is.GreaterThan(1e-3f));
    }

    [Test]
    public void PaddedTokensDoNotAffectRealTokens()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(6);
        foreach (ComposerModel model in new ComposerModel[] { new BertForMaskedLM(Tiny()), new BertForMaskedLM(Tiny() with { PreLayerNorm = true }), new GptForCausalLM(Tiny("gpt-tiny")) })
        {
            model.eval();
            Batch a = RandomBatch(2, 10, padLast: 4);
            Tensor ids = a["input_ids"].clone();
            ids[0, TensorIndex.Slice(6)] = 7; // different ids under the padding mask
            var b = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = a["attention_mask"] });
            float diff = (model.call(a).narrow(1, 0, 6) - model.call(b).narrow(1, 0, 6)).abs().max().item<float>();
            Assert.That(diff, Is.LessThan(1e-5f), model.GetName());
        }
    }

    [Test]
    public void EveryLayerNormIsAPlainLayerNormInAReplaceableRegisteredField()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(8);
        var cases = new (ComposerModel Model, int LayerNorms)[]
        {
            (new BertForMaskedLM(Tiny()), 1 + 2 * 2 + 1), // embeddings, 2 per block, MLM head
            (new BertForSequenceClassification(Tiny() with { PreLayerNorm = true }), 2 * 2 + 1), // 2 per block, final
            (new GptForCausalLM(Tiny("gpt-tiny")), 2 * 2 + 1),
        };
        foreach ((ComposerModel model, int expected) in cases)
        {
            model.eval();
            Batch batch = RandomBatch(2, 6, labels: torch.zeros(2, dtype: ScalarType.Int64));
            Tensor before = model.call(batch);
            var found = model.named_modules().Where(m => m.module is LayerNorm).Select(m => m.name).ToList();
            Assert.That(found, Has.Count.EqualTo(expected), model.GetName());

            // Module surgery as an algorithm would do it: set the parent's field and re-register under the same name.
            foreach (string path in found)
            {
                int dot = path.LastIndexOf('.');
                nn.Module parent = dot < 0 ? model : model.named_modules().Single(m => m.name == path[..dot]).module;
                string name = path[(dot + 1)..];
                var field = parent.GetType().GetField(name, System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!;
                Assert.That(field, Is.Not.Null, path);
                Assert.That(field.FieldType.IsAssignableFrom(typeof(Identity)), Is.True, $"{path} must be typed Module<Tensor, Tensor>");
                var replacement = nn.Identity();
                field.SetValue(parent, replacement);
                parent.register_module(name, null!);
                parent.register_module(name, replacement);
            }

            Assert.That(model.named_modules().Count(m => m.module is LayerNorm), Is.Zero);
            Assert.That((model.call(batch) - before).abs().max().item<float>(), Is.GreaterThan(1e-4f), $"{model.GetName()} must use the replaced modules");
        }
    }
}
