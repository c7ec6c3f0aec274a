using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// StochasticDepth for transformer blocks: Composer's linear/uniform rates over depth, skipping in training at the
/// set rate, the eval-mode scaling of the residual branches against a hand-written reference, and the warmup ramp
/// (after Composer's tests/algorithms/test_stochastic_depth.py, block method).
/// </summary>
[TestFixture]
public class StochasticDepthTests
{
    [TestCase(DropDistribution.Linear, new[] { 0.05, 0.1, 0.15, 0.2 })]
    [TestCase(DropDistribution.Uniform, new[] { 0.2, 0.2, 0.2, 0.2 })]
    public void RatesFollowTheDistributionOverDepth(DropDistribution distribution, double[] expected)
    {
        using var d = torch.NewDisposeScope();
        var model = new BertForMaskedLM(ModelTestData.Tiny() with { NumLayers = 4 });
        Assert.That(Functional.ApplyStochasticDepth(model, 0.2, distribution), Is.EqualTo(4));
        Assert.That(model.Backbone.Layers.Select(LayerDrop.RateOf), Is.EqualTo(expected).Within(1e-12));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void InTrainingABlockIsSkippedAtItsRate()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        var block = new TransformerBlock(ModelTestData.Tiny() with { Dropout = 0, AttentionDropout = 0 }, preLayerNorm: true, causal: false);
        block.train();
        Tensor x = TestTensors.Normal(gen, 2, 5, 32);

        block.ResidualPolicy = new LayerDrop(1.0);
        TestTensors.AssertBitwiseEqual(block.call(x, null), x, "rate 1: always the input");

        block.ResidualPolicy = new LayerDrop(0.5);
        int n = 400, skipped = 0;
        for (int i = 0; i < n; i++)
        {
            using var step = torch.NewDisposeScope();
            if (TestTensors.BitwiseEqual(block.call(x, null), x))
            {
                skipped++;
            }
        }

        // Binomial(400, 0.5): standard deviation 0.025; 4 of them.
        Assert.That(skipped / (double)n, Is.EqualTo(0.5).Within(0.1));
    }

    [TestCase(true)]
    [TestCase(false)]
    public void InEvaluationTheResidualBranchesAreScaledByTheSurvivalProbability(bool preLayerNorm)
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        var block = new TransformerBlock(ModelTestData.Tiny() with { Dropout = 0, AttentionDropout = 0 }, preLayerNorm, causal: false);
        block.eval();
        block.ResidualPolicy = new LayerDrop(0.3);
        Tensor x = TestTensors.Normal(gen, 2, 6, 32);

        Tensor y = block.call(x, null);

        double keep = 0.7;
        Tensor reference;
        if (preLayerNorm)
        {
            Tensor h = x + keep * block.Attention.call(block.LayerNorm1.call(x), null);
            reference = h + keep * block.Mlp.call(block.LayerNorm2.call(h));
        }
        else
        {
            Tensor h = block.LayerNorm1.call(x + keep * block.Attention.call(x, null));
            reference = block.LayerNorm2.call(h + keep * block.Mlp.call(h));
        }

        Assert.That((y - reference).abs().max().item<float>(), Is.LessThan(1e-6), "fp32, the same operations");
        block.ResidualPolicy = new LayerDrop(0);
        Assert.That((block.call(x, null) - y).abs().max().item<float>(), Is.GreaterThan(1e-4), "the scaling changes the output");
    }

    [Test]
    public void TheRateRampsUpOverTheWarmup()
    {
        using var d = torch.NewDisposeScope();
        var model = new BertForMaskedLM(ModelTestData.Tiny());
        var state = new State(model) { MaxDuration = Time.Parse("10ba") };
        var sd = new StochasticDepth(dropRate: 0.2, dropDistribution: DropDistribution.Linear, dropWarmup: 0.5);
        var logger = new Logger(state);

        Assert.That(sd.Match(Event.BatchStart, state), Is.True);
        sd.Apply(Event.Init, state, logger);
        Assert.That(model.Backbone.Layers.Select(LayerDrop.RateOf), Is.All.Zero, "a warmup starts at 0");

        state.Timestamp = new Timestamp { Batch = 3 };
        sd.Apply(Event.BatchStart, state, logger);
        Assert.That(sd.CurrentDropRate, Is.EqualTo(0.2 * 0.3 / 0.5).Within(1e-12));
        Assert.That(model.Backbone.Layers.Select(LayerDrop.RateOf), Is.EqualTo(new[] { 0.06, 0.12 }).Within(1e-12));

        state.Timestamp = new Timestamp { Batch = 7 };
        sd.Apply(Event.BatchStart, state, logger);
        Assert.That(sd.CurrentDropRate, Is.EqualTo(0.2));

        Assert.That(new StochasticDepth().Match(Event.BatchStart, state), Is.False, "no warmup: Init only");
        var back = (StochasticDepth)AlgorithmCatalog.Create(sd.Describe());
        Assert.That((back.DropRate, back.DropDistribution, back.DropWarmup), Is.EqualTo((0.2, DropDistribution.Linear, 0.5)));
        Assert.Throws<ArgumentOutOfRangeException>(() => _ = new StochasticDepth(dropRate: 1.2));
    }
}
