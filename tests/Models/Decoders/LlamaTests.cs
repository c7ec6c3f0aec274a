using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Models.Decoders;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models.Decoders;

/// <summary>
/// Llama against a float64 reference written here from transformers' modeling_llama.py and modeling_rope_utils.py
/// (independently of the model's code: per-head index mapping instead of repeat_kv, angles in float64, explicit
/// softmax attention), on fresh random weights and ids. Tolerance |Δlogit| &lt; 1e-4 in fp32.
/// </summary>
[TestFixture]
public class LlamaTests
{
    private static readonly LlamaConfig Tiny = LlamaConfig.Preset("llama-tiny") with { VocabSize = 97, InitializerRange = 0.2 };

    private static IEnumerable<TestCaseData> Configs()
    {
        yield return new TestCaseData(Tiny, 10).SetName("GQA 4 heads, 2 KV heads");
        yield return new TestCaseData(Tiny with { NumKeyValueHeads = 1, TieWordEmbeddings = true }, 10).SetName("MQA, tied embeddings");
        yield return new TestCaseData(Tiny with { NumKeyValueHeads = 4, AttentionBias = true, MlpBias = true, HeadDim = 8 }, 10).SetName("MHA, attention and MLP biases, head_dim 8");
        yield return new TestCaseData(Tiny with { RopeTheta = 500000, RopeScaling = new RopeScaling("linear", 4) }, 10).SetName("linear rope scaling");
        yield return new TestCaseData(Tiny with { MaxPositionEmbeddings = 8, RopeScaling = new RopeScaling("dynamic", 2) }, 13).SetName("dynamic rope scaling past max_position_embeddings");
        yield return new TestCaseData(Tiny with { RopeTheta = 500, RopeScaling = new RopeScaling("llama3", 8, 1, 4, 8) }, 10).SetName("llama3 rope scaling");
    }

    [TestCaseSource(nameof(Configs))]
    public void LogitsMatchTheFloat64Reference(LlamaConfig config, int length)
    {
        torch.manual_seed(11);
        using var model = new LlamaForCausalLM(config);
        model.eval();
        using var noGrad = torch.no_grad();
        Tensor ids = torch.randint(0, config.VocabSize, new long[] { 2, length }, dtype: ScalarType.Int64);
        Tensor logits = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids }));
        Tensor reference = ReferenceLogits(model, config, ids);
        double diff = (logits.to(ScalarType.Float64) - reference).abs().max().item<double>();
        Assert.That(diff, Is.LessThan(1e-4), $"max |logits − float64 reference| = {diff:E2}");
    }

    [Test]
    public void PaddedPositionsDoNotChangeTheRealOnes()
    {
        torch.manual_seed(12);
        using var model = new LlamaForCausalLM(Tiny);
        model.eval();
        using var noGrad = torch.no_grad();
        Tensor ids = torch.randint(0, Tiny.VocabSize, new long[] { 1, 9 }, dtype: ScalarType.Int64);
        Tensor padded = torch.cat(new[] { ids, torch.zeros(1, 3, dtype: ScalarType.Int64) }, 1);
        Tensor mask = torch.cat(new[] { torch.ones(1, 9, dtype: ScalarType.Int64), torch.zeros(1, 3, dtype: ScalarType.Int64) }, 1);
        Tensor a = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids }));
        Tensor b = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = padded, ["attention_mask"] = mask })).narrow(1, 0, 9);
        Assert.That((a - b).abs().max().item<float>(), Is.LessThan(1e-5));
    }

    [Test]
    public void CachedAndUncachedGreedyDecodingGiveTheSameTokens()
    {
        torch.manual_seed(13);
        using var model = new LlamaForCausalLM(Tiny with { NumKeyValueHeads = 1 });
        model.eval();
        using var noGrad = torch.no_grad();
        Tensor prompt = torch.randint(0, Tiny.VocabSize, new long[] { 1, 5 }, dtype: ScalarType.Int64);

        Tensor uncached = prompt;
        for (int i = 0; i < 12; i++)
        {
            Tensor next = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = uncached })).select(1, -1).argmax(-1, keepdim: true);
            uncached = torch.cat(new[] { uncached, next }, 1);
        }

        using KeyValueCache cache = model.NewCache();
        Tensor cached = prompt;
        Tensor step = model.ForwardCached(prompt, cache).select(1, -1).argmax(-1, keepdim: true);
        for (int i = 0; i < 12; i++)
        {
            cached = torch.cat(new[] { cached, step }, 1);
            step = model.ForwardCached(step, cache).select(1, -1).argmax(-1, keepdim: true);
        }

        Assert.That(cached.data<long>().ToArray(), Is.EqualTo(uncached.data<long>().ToArray()));
        Assert.That(cache.Length, Is.EqualTo(17));
    }

    [Test]
    public void TheCacheHoldsOnlyTheKeyValueHeads()
    {
        torch.manual_seed(14);
        using var model = new LlamaForCausalLM(Tiny);
        model.eval();
        using var noGrad = torch.no_grad();
        using KeyValueCache cache = model.NewCache();
        Tensor ids = torch.randint(0, Tiny.VocabSize, new long[] { 2, 7 }, dtype: ScalarType.Int64);
        Tensor full = model.call(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids }));
        Tensor first = model.ForwardCached(ids.narrow(1, 0, 4), cache);
        Tensor rest = model.ForwardCached(ids.narrow(1, 4, 3), cache);
        Assert.That(cache.KeyShape(1), Is.EqualTo(new long[] { 2, Tiny.NumKeyValueHeads, 7, Tiny.EffectiveHeadDim }));
        Assert.That((torch.cat(new[] { first, rest }, 1) - full).abs().max().item<float>(), Is.LessThan(1e-5));
    }

    [Test]
    public void TrainingStepsLowerTheLoss()
    {
        torch.manual_seed(15);
        using var model = new LlamaForCausalLM(Tiny);
        model.train();
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: 1e-2);
        Tensor ids = torch.randint(0, Tiny.VocabSize, new long[] { 4, 16 }, dtype: ScalarType.Int64);
        var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids });
        Assert.That(model.LossGeneratingTokens(batch), Is.EqualTo(4 * 15));
        double first = 0, last = 0;
        for (int i = 0; i < 10; i++)
        {
            optimizer.zero_grad();
            Tensor loss = model.Loss(model.call(batch), batch);
            loss.backward();
            optimizer.step();
            last = loss.item<float>();
            first = i == 0 ? last : first;
        }

        Assert.That(last, Is.LessThan(first * 0.9), $"loss {first} → {last}");
    }

    [Test]
    public void UnsupportedSettingsAreRefusedWithTheFieldNamed()
    {
        var yarn = Assert.Throws<ArgumentException>(() => new LlamaForCausalLM(Tiny with { RopeScaling = new RopeScaling("yarn", 4) }));
        Assert.That(yarn!.Message, Does.Contain("rope_scaling.rope_type 'yarn'").And.Contain("llama3"));
        var heads = Assert.Throws<ArgumentException>(() => new LlamaForCausalLM(Tiny with { NumKeyValueHeads = 3 }));
        Assert.That(heads!.Message, Does.Contain("num_key_value_heads 3"));
        var preset = Assert.Throws<ArgumentException>(() => LlamaConfig.Preset("llama-huge"));
        Assert.That(preset!.Message, Does.Contain("llama-tiny"));
    }

    [Test]
    public void TheStateDictUsesHuggingFaceNames()
    {
        using var model = new LlamaForCausalLM(Tiny with { NumLayers = 1 });
        var names = model.state_dict().Keys.ToHashSet();
        Assert.That(names, Is.SupersetOf(new[]
        {
            "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight",
        }));
        Assert.That(names.Count, Is.EqualTo(12));
    }

    /// <summary>transformers' _compute_*_rope_parameters, in float64.</summary>
    private static double[] ReferenceInvFreq(LlamaConfig c, long seqLen)
    {
        int d = c.EffectiveHeadDim;
        double baseTheta = c.RopeTheta;
        RopeScaling? s = c.RopeScaling;
        if (s?.RopeType == "dynamic" && seqLen > c.MaxPositionEmbeddings)
        {
            baseTheta = baseTheta * Math.Pow((s.Factor * seqLen / c.MaxPositionEmbeddings) - (s.Factor - 1), d / (double)(d - 2));
        }

        double[] inv = Enumerable.Range(0, d / 2).Select(i => Math.Pow(baseTheta, -(2.0 * i) / d)).ToArray();
        if (s?.RopeType == "linear")
        {
            return inv.Select(v => v / s.Factor).ToArray();
        }

        if (s?.RopeType == "llama3")
        {
            double oldLen = s.OriginalMaxPositionEmbeddings;
            double lowWave = oldLen / s.LowFreqFactor, highWave = oldLen / s.HighFreqFactor;
            return inv.Select(v =>
            {
                double wave = 2 * Math.PI / v;
                double scaled = wave > lowWave ? v / s.Factor : v;
                double smooth = ((oldLen / wave) - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                double smoothed = ((1 - smooth) * scaled / s.Factor) + (smooth * scaled);
                bool medium = !(wave < highWave) && !(wave > lowWave);
                return medium ? smoothed : scaled;
            }).ToArray();
        }

        return inv;
    }

    private static Tensor ReferenceLogits(LlamaForCausalLM model, LlamaConfig c, Tensor ids)
    {
        var w = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.detach().to(ScalarType.Float64));
        long b = ids.shape[0], t = ids.shape[1];
        int d = c.EffectiveHeadDim, nh = c.NumHeads, nkv = c.NumKeyValueHeads;
        double[] inv = ReferenceInvFreq(c, t);
        var cosArr = new double[t * d];
        var sinArr = new double[t * d];
        for (int p = 0; p < t; p++)
        {
            for (int j = 0; j < d; j++)
            {
                double angle = p * inv[j % (d / 2)];
                cosArr[(p * d) + j] = Math.Cos(angle);
                sinArr[(p * d) + j] = Math.Sin(angle);
            }
        }

        Tensor cos = torch.tensor(cosArr, ScalarType.Float64).view(t, d);
        Tensor sin = torch.tensor(sinArr, ScalarType.Float64).view(t, d);
        Tensor Rope(Tensor x) => (x * cos) + (torch.cat(new[] { -x.narrow(-1, d / 2, d / 2), x.narrow(-1, 0, d / 2) }, -1) * sin);
        Tensor Norm(Tensor x, string name) => w[name] * x / torch.sqrt(x.pow(2).mean(new long[] { -1 }, keepdim: true) + c.RmsNormEps);
        Tensor Lin(Tensor x, string name) => torch.matmul(x, w[name + ".weight"].t()) + (w.TryGetValue(name + ".bias", out Tensor? bias) ? bias : torch.zeros(1, dtype: ScalarType.Float64));
        Tensor h = w["model.embed_tokens.weight"].index_select(0, ids.flatten()).view(b, t, c.HiddenSize);
        Tensor future = torch.ones(t, t, dtype: ScalarType.Bool).triu(1);
        Tensor kvIndex = torch.tensor(Enumerable.Range(0, nh).Select(head => (long)(head / (nh / nkv))).ToArray());
        for (int layer = 0; layer < c.NumLayers; layer++)
        {
            string p = $"model.layers.{layer}.";
            Tensor x = Norm(h, p + "input_layernorm.weight");
            Tensor q = Rope(Lin(x, p + "self_attn.q_proj").view(b, t, nh, d).permute(0, 2, 1, 3));
            Tensor k = Rope(Lin(x, p + "self_attn.k_proj").view(b, t, nkv, d).permute(0, 2, 1, 3)).index_select(1, kvIndex);
            Tensor v = Lin(x, p + "self_attn.v_proj").view(b, t, nkv, d).permute(0, 2, 1, 3).index_select(1, kvIndex);
            Tensor scores = torch.matmul(q, k.transpose(-1, -2)) / Math.Sqrt(d);
            Tensor probs = scores.masked_fill(future, double.NegativeInfinity).softmax(-1);
            Tensor attended = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, t, nh * d);
            h = h + Lin(attended, p + "self_attn.o_proj");
            x = Norm(h, p + "post_attention_layernorm.weight");
            Tensor gate = Lin(x, p + "mlp.gate_proj");
            h = h + Lin(gate * torch.sigmoid(gate) * Lin(x, p + "mlp.up_proj"), p + "mlp.down_proj");
        }

        h = Norm(h, "model.norm.weight");
        Tensor head = c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
        return torch.matmul(h, head.t());
    }
}
