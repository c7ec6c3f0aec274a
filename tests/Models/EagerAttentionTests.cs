using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using static ComposerSharp.Tests.Models.ModelTestData;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Tests.Models;

/// <summary>
/// The written-out attention that <see cref="MultiHeadSelfAttention"/> uses for BFloat16 training on the CPU:
/// the same function as libtorch's scaled_dot_product_attention (Float32, every mask form, dropout unbiased), and
/// in the module under amp_bf16 as close to a float64 reference as the scaled_dot_product_attention path is, in
/// output and gradients.
/// </summary>
[TestFixture]
public class EagerAttentionTests
{
    private static Tensor Rand(params long[] shape) => torch.randn(shape, dtype: ScalarType.Float32);

    [TestCase("none", false)]
    [TestCase("none", true)]
    [TestCase("bool", false)]
    [TestCase("additive", false)]
    public void MatchesScaledDotProductAttentionInFloat32(string maskKind, bool causal)
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(21);
        const long b = 3, h = 2, t = 5, s = 9, dh = 8; // S ≠ T: is_causal's top-left alignment
        Tensor q = Rand(b, h, t, dh), k = Rand(b, h, s, dh), v = Rand(b, h, s, dh);
        Tensor? mask = maskKind switch
        {
            "bool" => torch.rand(b, 1, t, s).gt(0.3).logical_or(torch.eye(t, s, dtype: ScalarType.Bool)),
            "additive" => Rand(1, h, t, s),
            _ => null,
        };

        Tensor expected = F.scaled_dot_product_attention(q, k, v, mask, 0.0, causal);
        Tensor actual = EagerAttention.Attend(q, k, v, mask, 0.0, causal);
        double error = (actual - expected).abs().max().item<float>();
        Assert.That(error, Is.LessThan(1e-5), $"max |eager − scaled_dot_product_attention|, mask {maskKind}, causal {causal}");
    }

    [TestCase("bool")]
    [TestCase("additive")]
    public void AQueryWithNoKeyGetsZerosAndFiniteGradientsAsScaledDotProductAttention(string maskKind)
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(24);
        const long b = 2, h = 2, t = 5, dh = 8;
        Tensor q = Rand(b, h, t, dh).requires_grad_(), k = Rand(b, h, t, dh).requires_grad_(), v = Rand(b, h, t, dh).requires_grad_();
        Tensor keys = torch.ones(b, 1, 1, t, dtype: ScalarType.Bool);
        keys[1] = torch.zeros(1, 1, t, dtype: ScalarType.Bool); // sample 1 is all padding
        Tensor mask = maskKind == "bool" ? keys : torch.zeros(b, 1, 1, t).masked_fill(keys.logical_not(), double.NegativeInfinity);
        Tensor expected = F.scaled_dot_product_attention(q, k, v, mask, 0.0, false);
        Tensor actual = EagerAttention.Attend(q, k, v, mask, 0.0, false);
        Assert.That((actual - expected).abs().max().item<float>(), Is.LessThan(1e-5), "vs scaled_dot_product_attention (zeros for sample 1)");
        Assert.That(actual[1].abs().max().item<float>(), Is.EqualTo(0f), "the all-padding sample's output");

        Tensor dy = torch.randn_like(actual);
        IList<Tensor> grads = torch.autograd.grad(new[] { actual }, new[] { q, k, v }, new[] { dy });
        IList<Tensor> expectedGrads = torch.autograd.grad(new[] { expected }, new[] { q, k, v }, new[] { dy });
        for (int i = 0; i < 3; i++)
        {
            Assert.That(grads[i].isfinite().all().item<bool>(), Is.True, $"finite gradient {"qkv"[i]}");
            Assert.That((grads[i] - expectedGrads[i]).abs().max().item<float>(), Is.LessThan(1e-5), $"gradient {"qkv"[i]} vs scaled_dot_product_attention");
        }
    }

    [Test]
    public void DropoutOnTheWeightsIsUnbiased()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(22);
        const long copies = 20000, t = 4, dh = 8;
        Tensor q = Rand(1, 1, t, dh).expand(copies, 1, t, dh), k = Rand(1, 1, t, dh).expand(copies, 1, t, dh), v = Rand(1, 1, t, dh).expand(copies, 1, t, dh);
        Tensor plain = EagerAttention.Attend(q.narrow(0, 0, 1), k.narrow(0, 0, 1), v.narrow(0, 0, 1), null, 0.0, false);
        Tensor dropped = EagerAttention.Attend(q, k, v, null, 0.25, false);

        // Each copy drops its own weights; their mean is the attention without dropout (weights scaled by 1/(1-p)).
        double error = (dropped.mean(new long[] { 0 }, keepdim: true) - plain).abs().max().item<float>();
        double scale = v.abs().max().item<float>();
        Assert.That(error, Is.LessThan(0.03 * scale), "mean over 20,000 dropout draws vs no dropout (≈ 5 standard errors)");
        Assert.That(dropped.eq(plain).all().item<bool>(), Is.False, "dropout changed nothing");
    }

    [Test]
    public void ModuleUnderAmpBf16IsAsCloseToFloat64AsScaledDotProductAttention()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(23);
        TransformerConfig config = Tiny() with { AttentionDropout = 0.0 };
        var attn = new MultiHeadSelfAttention(config, causal: false);
        attn.train();
        const long b = 2, t = 7;
        long hidden = config.HiddenSize, heads = config.NumHeads, dh = hidden / heads;
        Tensor keyMask = torch.ones(b, t, dtype: ScalarType.Bool);
        keyMask[1, TensorIndex.Slice(t - 3)] = false;
        Tensor mask = keyMask.view(b, 1, 1, t);
        Tensor x = Rand(b, t, hidden);
        Tensor dy = Rand(b, t, hidden);

        // float64 reference of the output and of the gradients w.r.t. x and the qkv weight.
        var p = attn.named_parameters().ToDictionary(kv => kv.name, kv => kv.parameter.detach().to(ScalarType.Float64).requires_grad_());
        Tensor x64 = x.to(ScalarType.Float64).requires_grad_();
        Tensor qkv = x64.matmul(p["qkv.weight"].t()) + p["qkv.bias"];
        Tensor Heads(int i) => qkv.narrow(2, i * hidden, hidden).view(b, t, heads, dh).transpose(1, 2);
        Tensor scores = (Heads(0).matmul(Heads(1).transpose(-2, -1)) / Math.Sqrt(dh)).masked_fill(mask.logical_not(), double.NegativeInfinity);
        Tensor expected = scores.softmax(-1).matmul(Heads(2)).transpose(1, 2).reshape(b, t, hidden).matmul(p["out_proj.weight"].t()) + p["out_proj.bias"];
        IList<Tensor> expectedGrads = torch.autograd.grad(new[] { expected }, new[] { x64, p["qkv.weight"] }, new[] { dy.to(ScalarType.Float64) });

        (double Out, double Dx, double Dw) Errors(bool eager)
        {
            Tensor xi = x.detach().requires_grad_();
            Tensor y;
            using (Precision.AmpBf16.Enter(DeviceType.CPU))
            {
                Tensor q = torch.randn(1, 1, 1, 1).to(ScalarType.BFloat16);
                Assert.That(EagerAttention.Preferred(q, t, 0.0), Is.True, "BFloat16 CPU query with gradients on, short sequence");
                y = eager
                    ? attn.call(xi, mask)
                    : SdpaModule(attn, xi, mask, heads);
            }

            IList<Tensor> grads = torch.autograd.grad(new[] { y }, new Tensor[] { xi, attn.named_parameters().Single(n => n.name == "qkv.weight").parameter }, new[] { dy.to(y.dtype) });
            static double Rel(Tensor a, Tensor e) => ((a.to(ScalarType.Float64) - e).abs().max() / e.abs().max()).item<double>();
            return (Rel(y, expected.detach()), Rel(grads[0], expectedGrads[0]), Rel(grads[1], expectedGrads[1]));
        }

        (double Out, double Dx, double Dw) eagerErr = Errors(eager: true), sdpaErr = Errors(eager: false);
        TestContext.Out.WriteLine($"relative max errors vs float64, eager / SDPA: output {eagerErr.Out:E2} / {sdpaErr.Out:E2}, dx {eagerErr.Dx:E2} / {sdpaErr.Dx:E2}, dW_qkv {eagerErr.Dw:E2} / {sdpaErr.Dw:E2}");

        // BFloat16 has an 8-bit significand (relative rounding 2^-9 ≈ 0.2 %); a few roundings in a row stay below 3 %.
        Assert.That(eagerErr.Out, Is.LessThan(0.03), "output");
        Assert.That(eagerErr.Dx, Is.LessThan(0.03), "input gradient");
        Assert.That(eagerErr.Dw, Is.LessThan(0.03), "qkv weight gradient");

        // And not much worse than the scaled_dot_product_attention path (whose math keeps scores and weights in Float32).
        Assert.That(eagerErr.Out, Is.LessThan(3 * sdpaErr.Out + 2e-3), "output vs the SDPA path");
        Assert.That(eagerErr.Dx, Is.LessThan(3 * sdpaErr.Dx + 2e-3), "input gradient vs the SDPA path");
    }

    [Test]
    public void PreferredOnlyForBFloat16TrainingOnTheCpu()
    {
        using var d = torch.NewDisposeScope();
        Tensor bf16 = torch.zeros(1, 1, 4, 8, dtype: ScalarType.BFloat16), f32 = torch.zeros(1, 1, 4, 8), f16 = torch.zeros(1, 1, 4, 8, dtype: ScalarType.Float16);
        Assert.That(EagerAttention.Preferred(bf16, 128, 0.1), Is.True);
        Assert.That(EagerAttention.Preferred(bf16, 4096, 0.1), Is.True, "dropout: SDPA's math fallback would materialise the scores anyway");
        Assert.That(EagerAttention.Preferred(bf16, 4096, 0.0), Is.False, "long and no dropout: the flash kernel saves the T × S memory");
        Assert.That(EagerAttention.Preferred(f32, 128, 0.1), Is.False, "Float32");
        Assert.That(EagerAttention.Preferred(f16, 128, 0.1), Is.False, "Float16");
        using (torch.no_grad())
        {
            Assert.That(EagerAttention.Preferred(bf16, 128, 0.1), Is.False, "inference");
        }
    }

    /// <summary>The module's forward with libtorch's scaled_dot_product_attention, from its own Linears (the path it takes outside BFloat16 training).</summary>
    private static Tensor SdpaModule(MultiHeadSelfAttention attn, Tensor x, Tensor mask, long heads)
    {
        var named = attn.named_modules().Where(m => m.module is TorchSharp.Modules.Linear).ToDictionary(m => m.name, m => (TorchSharp.Modules.Linear)m.module);
        long b = x.shape[0], t = x.shape[1], hidden = x.shape[2];
        Tensor[] parts = named["qkv"].call(x).view(b, t, 3, heads, hidden / heads).permute(2, 0, 3, 1, 4).unbind(0);
        Tensor attended = F.scaled_dot_product_attention(parts[0], parts[1], parts[2], mask, 0.0, false);
        return named["out_proj"].call(attended.transpose(1, 2).reshape(b, t, hidden));
    }
}
