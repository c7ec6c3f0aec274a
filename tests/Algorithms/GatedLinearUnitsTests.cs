using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// GatedLinearUnits: the gated block against a float64 reference (Composer's test_glu_outputs, without the residual
/// and LayerNorm that our block keeps outside), the surgery of BERT and GPT, optimizers, the LowPrecisionLayerNorm
/// order, the description and the YAML name.
/// </summary>
[TestFixture]
public class GatedLinearUnitsTests
{
    [TestCase(GluActivation.Gelu, false, false)]
    [TestCase(GluActivation.GeluTanh, true, false)]
    [TestCase(GluActivation.Relu, false, true)]
    [TestCase(GluActivation.Silu, true, true)]
    public void TheGatedBlockMatchesAFloat64Reference(GluActivation act, bool gatedBias, bool nonGatedBias)
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        var glu = new GatedFeedForward(24, 40, act, gatedBias, nonGatedBias);
        using (torch.no_grad())
        {
            foreach (Parameter p in glu.parameters())
            {
                p.copy_(TestTensors.Normal(gen, p.shape) * 0.3); // biases non-zero too
            }
        }

        Tensor x = TestTensors.Normal(gen, 3, 7, 24);
        Tensor y = glu.call(x);

        Tensor x64 = x.to(ScalarType.Float64);
        Tensor Lin(Linear l, Tensor v) => torch.matmul(v, l.weight.to(ScalarType.Float64).t()) + (l.bias is null ? 0.0 : l.bias.to(ScalarType.Float64));
        Tensor gate = Lin(glu.GatedLayer, x64);
        gate = act switch
        {
            GluActivation.Gelu => gate * 0.5 * (1.0 + torch.erf(gate / Math.Sqrt(2.0))),
            GluActivation.GeluTanh => 0.5 * gate * (1.0 + torch.tanh(Math.Sqrt(2.0 / Math.PI) * (gate + 0.044715 * gate.pow(3)))),
            GluActivation.Relu => gate.clamp_min(0.0),
            _ => gate * torch.sigmoid(gate),
        };
        Tensor reference = Lin(glu.OutProjection, gate * Lin(glu.NonGatedLayer, x64));

        Assert.That(glu.GatedLayer.bias is not null, Is.EqualTo(gatedBias));
        Assert.That(glu.NonGatedLayer.bias is not null, Is.EqualTo(nonGatedBias));
        Assert.That(glu.OutProjection.bias, Is.Not.Null, "wo keeps its bias, as Composer's");
        double err = (y.to(ScalarType.Float64) - reference).abs().max().item<double>();
        double scale = reference.abs().max().item<double>();
        Assert.That(err, Is.LessThan(1e-5 * scale + 1e-6), "fp32 against float64: relative 1e-5 of the output's range");
    }

    [Test]
    public void BertFeedForwardsBecomeGatedAndTheOutputLayerNormsAreRebuilt()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new BertForMaskedLM(ModelTestData.Tiny() with { Dropout = 0, AttentionDropout = 0 });
        TransformerBlock[] blocks = model.Backbone.Layers.ToArray();
        nn.Module[] ln1Before = blocks.Select(b => (nn.Module)b.LayerNorm1).ToArray();
        nn.Module[] ln2Before = blocks.Select(b => (nn.Module)b.LayerNorm2).ToArray();
        var adam = new Adam(model.parameters().ToList(), lr: 1e-2);

        int replaced = Functional.ApplyGatedLinearUnits(model, new[] { adam });

        Assert.That(replaced, Is.EqualTo(2));
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(FeedForward)), Is.Zero);
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(GatedFeedForward)), Is.EqualTo(2));
        for (int i = 0; i < blocks.Length; i++)
        {
            var glu = (GatedFeedForward)blocks[i].Mlp;
            Assert.That(glu.Activation, Is.EqualTo(GluActivation.Gelu), "BERT's own activation");
            Assert.That(glu.GatedLayer.bias, Is.Null, "Composer's default: no bias");
            Assert.That(glu.GatedLayer.weight.shape, Is.EqualTo(new long[] { 64, 32 }), "d_ff kept");
            Assert.That(blocks[i].LayerNorm1, Is.SameAs(ln1Before[i]));
            Assert.That(blocks[i].LayerNorm2, Is.Not.SameAs(ln2Before[i]).And.InstanceOf<LayerNorm>(), "the post-LN output LayerNorm is rebuilt");
        }

        Dictionary<string, Tensor> sd = model.state_dict();
        Assert.That(sd.Keys, Does.Contain("backbone.layers.0.mlp.gated_layer.weight").And.Contain("backbone.layers.1.mlp.wo.bias"));
        Assert.That(sd.Keys.Any(k => k.Contains("fc_in", StringComparison.Ordinal)), Is.False);
        Assert.That(adam.parameters(), Is.EquivalentTo(model.parameters()).Using<Parameter>(ReferenceEquals), "the optimizer holds the new parameters");

        // One step trains the gated layers.
        Batch batch = ModelTestData.RandomBatch(2, 12, labels: torch.randint(0, 60, new long[] { 2, 12 }, dtype: ScalarType.Int64));
        Tensor before = ((GatedFeedForward)blocks[0].Mlp).GatedLayer.weight.detach().clone();
        Tensor loss = model.Loss(model.call(batch), batch);
        Assert.That(float.IsFinite(loss.item<float>()), Is.True);
        loss.backward();
        adam.step();
        Assert.That(TestTensors.BitwiseEqual(((GatedFeedForward)blocks[0].Mlp).GatedLayer.weight, before), Is.False);

        Assert.That(Functional.ApplyGatedLinearUnits(model), Is.Zero, "a second surgery finds nothing to replace");
    }

    [Test]
    public void GptKeepsItsPreLayerNormsAndItsTanhGelu()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new GptForCausalLM(ModelTestData.Tiny("gpt-tiny"));
        nn.Module[] ln2Before = model.Backbone.Layers.Select(b => (nn.Module)b.LayerNorm2).ToArray();

        Assert.That(Functional.ApplyGatedLinearUnits(model, actFn: null), Is.EqualTo(2));

        Assert.That(model.Backbone.Layers.Select(b => ((GatedFeedForward)b.Mlp).Activation), Is.All.EqualTo(GluActivation.GeluTanh));
        Assert.That(model.Backbone.Layers.Select(b => (nn.Module)b.LayerNorm2), Is.EqualTo(ln2Before).Using<nn.Module>(ReferenceEquals),
            "a pre-LN block's LayerNorm is the feed-forward's input norm, not part of the output sublayer");
    }

    [Test]
    public void LowPrecisionLayerNormGivenFirstStillConvertsTheRebuiltLayerNorms()
    {
        using var d = torch.NewDisposeScope();
        TestTensors.NewGenerator();
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        var state = new State(model, precision: Precision.AmpBf16) { Optimizers = { new Adam(model.parameters().ToList()) } };
        state.Algorithms.Add(new LowPrecisionLayerNorm());
        state.Algorithms.Add(new GatedLinearUnits(GluActivation.Silu));
        using var engine = new Engine(state, new Logger(state));

        IReadOnlyList<Trace> traces = engine.RunEvent(Event.Init);

        Assert.That(traces.Where(t => t.Run).Select(t => t.Name), Is.EqualTo(new[] { "gated_linear_units", "low_precision_layernorm" }), "the default pass sorts LPLN last");
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LayerNorm)), Is.Zero, "every LayerNorm, the rebuilt ones included, runs in low precision");
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LPLayerNorm)), Is.EqualTo(2 * 2 + 1 + 1), "ln_1, ln_2 per block, emb_ln, mlm_ln");

        // The order matters: LPLN first, then GLU, leaves plain LayerNorms (what the pass prevents).
        var model2 = new BertForMaskedLM(ModelTestData.Tiny());
        Functional.ApplyLowPrecisionLayerNorm(model2, Precision.AmpBf16);
        Functional.ApplyGatedLinearUnits(model2);
        Assert.That(ModuleSurgery.CountModuleInstances(model2, typeof(LayerNorm)), Is.EqualTo(2));
    }

    [Test]
    public void MixedActivationsWithoutActFnAreAClearError()
    {
        using var d = torch.NewDisposeScope();
        var model = nn.Sequential(
            ("a", new FeedForward(ModelTestData.Tiny(), HiddenActivation.Gelu)),
            ("b", new FeedForward(ModelTestData.Tiny(), HiddenActivation.GeluTanh)));

        var ex = Assert.Throws<ArgumentException>(() => Functional.ApplyGatedLinearUnits(model));
        Assert.That(ex!.Message, Does.Contain("act_fn").And.Contain("Gelu, GeluTanh"));
        Assert.That(Functional.ApplyGatedLinearUnits(model, actFn: GluActivation.Relu), Is.EqualTo(2));
    }

    [Test]
    public void TheDescriptionRoundTripsAndBadValuesAreNamed()
    {
        var glu = new GatedLinearUnits(GluActivation.GeluTanh, gatedLayerBias: true);
        AlgorithmDescription description = glu.Describe();
        Assert.That(description.Hyperparameters["act_fn"], Is.EqualTo("gelu_tanh"));
        var back = (GatedLinearUnits)AlgorithmCatalog.Create(description);
        Assert.That((back.ActFn, back.GatedLayerBias, back.NonGatedLayerBias), Is.EqualTo((GluActivation.GeluTanh, true, false)));
        Assert.That(back.RequiredOnLoad, Is.True);
        Assert.That(((GatedLinearUnits)AlgorithmCatalog.Create(new GatedLinearUnits().Describe())).ActFn, Is.Null);

        var bad = new AlgorithmDescription("gated_linear_units", new Dictionary<string, string> { ["act_fn"] = "tanh" });
        var ex = Assert.Throws<ArgumentException>(() => AlgorithmCatalog.Create(bad));
        Assert.That(ex!.Message, Does.Contain("'tanh'").And.Contain("gelu, gelu_tanh, relu, silu"));
    }
}
