using ComposerSharp.Core;
using ComposerSharp.Models;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static ComposerSharp.Tests.Models.ModelTestData;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Models;

[TestFixture]
public class ActivationCheckpointTests
{
    /// <summary>One forward and backward of a GPT with dropout on; returns the loss, the gradients by name, and the next draw of the CPU generator.</summary>
    private static (Tensor Loss, Dictionary<string, Tensor> Grads, Tensor NextDraw) Step(bool checkpointing, Precision precision)
    {
        torch.manual_seed(11);
        var model = new GptForCausalLM(Tiny("gpt-tiny") with { Dropout = 0.2, AttentionDropout = 0.2 });
        model.Backbone.SetActivationCheckpointing(checkpointing);
        model.train();
        torch.manual_seed(5);
        Batch batch = RandomBatch(3, 12, padLast: 4);
        torch.manual_seed(1234);
        Tensor loss;
        using (precision.Enter(DeviceType.CPU))
        {
            loss = model.Loss(model.call(batch), batch);
        }

        loss.backward();
        var grads = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        return (loss.detach(), grads, torch.rand(8));
    }

    /// <summary>Same shape, dtype and every element bitwise equal.</summary>
    private static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [TestCase("fp32")]
    [TestCase("amp_bf16")]
    public void GradientsAreBitwiseThoseWithoutCheckpointingWithDropoutOn(string precisionName)
    {
        using var d = torch.NewDisposeScope();
        Precision precision = PrecisionExtensions.Parse(precisionName);
        var plain = Step(checkpointing: false, precision);
        var checkpointed = Step(checkpointing: true, precision);

        Assert.That(checkpointed.Loss.item<float>(), Is.EqualTo(plain.Loss.item<float>()));
        Assert.That(checkpointed.Grads.Keys, Is.EquivalentTo(plain.Grads.Keys));
        foreach ((string name, Tensor g) in plain.Grads)
        {
            Assert.That(g.abs().sum().item<float>(), Is.GreaterThan(0f), $"{name} has a gradient");
            Assert.That(Same(checkpointed.Grads[name], g), Is.True, $"{name}: bitwise equal");
        }

        Assert.That(Same(checkpointed.NextDraw, plain.NextDraw), Is.True, "the recomputation leaves the step's RNG stream where it was");
    }

    [Test]
    public void WithoutReplayTheDropoutMasksWouldDiffer()
    {
        // The test above can fail: rerunning the block under another RNG state changes its gradients.
        using var d = torch.NewDisposeScope();
        torch.manual_seed(11);
        var model = new GptForCausalLM(Tiny("gpt-tiny") with { Dropout = 0.2, AttentionDropout = 0.2 });
        model.train();
        Batch batch = RandomBatch(2, 8);
        torch.manual_seed(1);
        Tensor a = model.call(batch);
        torch.manual_seed(2);
        Tensor b = model.call(batch);
        Assert.That(Same(a, b), Is.False);
    }

    [Test]
    public void GradientsOfAFunctionMatchTheFloat64Reference()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(3);
        Tensor x = torch.randn(5, 4, dtype: ScalarType.Float64).requires_grad_(true);
        var w = new Parameter(torch.randn(4, 3, dtype: ScalarType.Float64));
        var frozen = new Parameter(torch.randn(3, dtype: ScalarType.Float64), requires_grad: false);
        Tensor mask = torch.tensor(new[] { 1.0, 0.0, 2.0 }, dtype: ScalarType.Float64);
        int calls = 0;
        Tensor Unit(Tensor input, Tensor? context)
        {
            calls++;
            return torch.tanh(input.matmul(w) + frozen) * context!;
        }

        Tensor y = ActivationCheckpoint.Apply(Unit, x, mask, [w, frozen]);
        Assert.That(calls, Is.EqualTo(1));
        Tensor g = torch.randn(5, 3, dtype: ScalarType.Float64);
        (y * g).sum().backward();
        Assert.That(calls, Is.EqualTo(2), "the forward reran in backward");

        // d/dz tanh(z) = 1 − tanh²(z); z = xW + b.
        using (torch.no_grad())
        {
            Tensor t = torch.tanh(x.matmul(w) + frozen);
            Tensor dz = g * mask * (1 - (t * t));
            Assert.That(torch.allclose(y, t * mask, rtol: 0, atol: 1e-15), Is.True);
            Assert.That(torch.allclose(x.grad!, dz.matmul(w.t()), rtol: 1e-12, atol: 1e-14), Is.True);
            Assert.That(torch.allclose(w.grad!, x.t().matmul(dz), rtol: 1e-12, atol: 1e-14), Is.True);
        }

        Assert.That(frozen.grad, Is.Null, "a frozen parameter gets no gradient");
    }

    [Test]
    public void UnderNoGradTheFunctionRunsOnceAndTheBlockIsUnchangedInEvalMode()
    {
        using var d = torch.NewDisposeScope();
        torch.manual_seed(3);
        var w = new Parameter(torch.randn(4, 4));
        int calls = 0;
        using (torch.no_grad())
        {
            ActivationCheckpoint.Apply((i, _) => { calls++; return i.matmul(w); }, torch.randn(2, 4), null, [w]);
        }

        Assert.That(calls, Is.EqualTo(1));

        var model = new GptForCausalLM(Tiny("gpt-tiny"));
        model.eval();
        Batch batch = RandomBatch(2, 8);
        Tensor plain = model.call(batch);
        model.Backbone.SetActivationCheckpointing(true);
        Assert.That(Same(model.call(batch), plain), Is.True);
        Assert.That(model.Backbone.Layers.All(l => l.ActivationCheckpointing), Is.True);
    }
}
