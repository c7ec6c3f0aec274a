using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Models;
using ComposerSharp.Tests.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Tests.Training;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms.Training;

/// <summary>A five-layer perceptron on the TestData problem (x [B, 4] → 3 classes): layers fc0 … fc4.</summary>
public sealed class FiveLayerMlp : ComposerModel
{
    private readonly Sequential _layers;

    public FiveLayerMlp()
        : base("five_layer_mlp")
    {
        _layers = nn.Sequential(("fc0", nn.Linear(4, 8)), ("fc1", nn.Linear(8, 8)), ("fc2", nn.Linear(8, 8)), ("fc3", nn.Linear(8, 8)), ("fc4", nn.Linear(8, 3)));
        RegisterComponents();
    }

    public override Tensor forward(Batch batch) => _layers.call(batch["x"]);

    public override Tensor Loss(Tensor outputs, Batch batch) => nn.functional.cross_entropy(outputs, batch["y"]);
}

/// <summary>
/// LayerFreezing: Composer's schedule and its two cases (tests/algorithms/test_layer_freezing.py: no freezing at 10 %
/// with start 0.5; the first layers' parameters gone from the optimizer at 80 % with start 0.05), freezing by epoch in
/// training with the optimizer state dropped, and an exact resume of a run with frozen layers.
/// </summary>
[TestFixture]
public class LayerFreezingTests
{
    [TestCase(0.3, 0.5, 1.0, 0.0)]
    [TestCase(0.75, 0.5, 1.0, 0.5)]
    [TestCase(1.0, 0.0, 0.6, 0.6)]
    [TestCase(0.8, 0.05, 1.0, 0.75 / 0.95)]
    public void TheScheduleIsComposersLinearRamp(double elapsed, double start, double level, double expected) =>
        Assert.That(LayerFreezing.FreezeSchedule(elapsed, start, level), Is.EqualTo(expected).Within(1e-12));

    [Test]
    public void EarlyInTrainingNothingIsFrozenAndLateTheFirstLayersLeaveTheOptimizer()
    {
        torch.manual_seed(2);
        var bert = new BertForMaskedLM(ModelTestData.Tiny());
        var sgd = torch.optim.SGD(bert.parameters(), 0.01, momentum: 0.99);
        TakeAStep(bert, sgd);
        int paramsBefore = sgd.parameters().Count();
        int statesBefore = TorchSharpInternals.OptimizerStates((OptimizerHelper)sgd).Count;

        Assert.That(LayerFreezing.FreezeLayers(bert, new[] { sgd }, 0.1, freezeStart: 0.5).LayersFrozen, Is.EqualTo(0));
        Assert.That(sgd.parameters().Count(), Is.EqualTo(paramsBefore), "test_freeze_layers_no_freeze: the groups are unchanged");

        IReadOnlyList<nn.Module> layers = LayerFreezing.Layers(bert);
        (int depth, double fraction) = LayerFreezing.FreezeLayers(bert, new[] { sgd }, 0.8, freezeStart: 0.05);

        Assert.That(depth, Is.EqualTo((int)(fraction * (layers.Count - 1))).And.GreaterThan(0));
        var frozen = layers.Take(depth).SelectMany(l => l.parameters()).ToList();
        var optimizerHandles = sgd.parameters().Select(p => p.Handle).ToHashSet();
        Assert.That(frozen.All(p => !p.requires_grad && p.grad is null), Is.True, "frozen parameters need no gradient");
        Assert.That(frozen.Any(p => optimizerHandles.Contains(p.Handle)), Is.False, "and are gone from the optimizer");
        Assert.That(sgd.parameters().Count(), Is.EqualTo(paramsBefore - frozen.Count));
        Assert.That(TorchSharpInternals.OptimizerStates((OptimizerHelper)sgd).Count, Is.EqualTo(statesBefore - frozen.Count), "their momentum is dropped");
        Assert.That(layers[^1].parameters().All(p => p.requires_grad), Is.True, "the last layer is never frozen");
        Assert.That(layers[0], Is.InstanceOf<Embedding>(), "the first layer is an embedding");
    }

    private static void TakeAStep(ComposerModel model, optim.Optimizer optimizer)
    {
        using var scope = torch.NewDisposeScope();
        Batch batch = ModelTestData.RandomBatch(2, 8, labels: torch.randint(0, 60, new long[] { 2, 8 }));
        model.Loss(model.call(batch), batch).backward();
        optimizer.step();
    }

    [Test]
    public void InTrainingOneMoreLayerFreezesAtEachEpochEndAndStopsChanging()
    {
        var weightsAtEpochEnd = new List<double[][]>();
        var callbacks = new ICallback[] { new ActionCallback(Event.EpochEnd, s => weightsAtEpochEnd.Add(LayerWeights(s.Model))) };
        torch.manual_seed(4);
        var model = new FiveLayerMlp();
        var freezing = new LayerFreezing(freezeStart: 0.0, freezeLevel: 1.0);
        var memory = new MemoryLogger();
        using Trainer trainer = TestData.Trainer(model, TestData.Loader(16, 8), "4ep", callbacks: callbacks, loggers: new[] { memory },
            algorithms: new[] { freezing }, optimizerFactory: p => torch.optim.SGD(p, 0.1, momentum: 0.9, weight_decay: 0.01));

        trainer.Fit();

        Assert.That(memory.Values("layer_freezing/layers_frozen"), Is.EqualTo(new double[] { 1, 2, 3, 4 }), "⌊(e/4) · 4⌋ after epoch e");
        for (int e = 1; e < 4; e++)
        {
            for (int layer = 0; layer < 5; layer++)
            {
                bool frozenBefore = layer < e; // frozen at the end of epoch e, so unchanged through epoch e + 1
                bool same = weightsAtEpochEnd[e][layer].SequenceEqual(weightsAtEpochEnd[e - 1][layer]);
                Assert.That(same, Is.EqualTo(frozenBefore), $"layer fc{layer} during epoch {e + 1}");
            }
        }

        Assert.That(trainer.State.Optimizers[0].parameters().Count(), Is.EqualTo(2), "only fc4's weight and bias are left to the optimizer");
    }

    private static double[][] LayerWeights(nn.Module model) =>
        LayerFreezing.Layers(model).Select(l => TestData.Weights(l)).ToArray();

    [Test]
    [Category(TestCategories.Slow)]
    public void ResumeWithFrozenLayersIsBitwiseExact()
    {
        Trainer Run(CheckpointOptions? options, params ICallback[] callbacks)
        {
            torch.manual_seed(4);
            return TestData.Trainer(new FiveLayerMlp(), TestData.Loader(16, 8, shuffle: true), "4ep", callbacks: callbacks, checkpoint: options, runName: "freeze-resume",
                algorithms: new[] { new LayerFreezing(0.0, 1.0) }, optimizerFactory: p => torch.optim.Adam(p, 0.01));
        }

        using Trainer uninterrupted = Run(null);
        uninterrupted.Fit();

        var options = new CheckpointOptions { SaveFolder = TestData.TempFolder(), SaveInterval = "1ep", Autoresume = true };
        using (Trainer interrupted = Run(options, TestData.StopAt(Event.EpochEnd, 2)))
        {
            interrupted.Fit();
        }

        using Trainer resumed = Run(options);
        Assert.That(resumed.State.Timestamp.Epoch, Is.EqualTo(2));
        Assert.That(resumed.State.Optimizers[0].parameters().Count(), Is.EqualTo(6), "two layers frozen again before the optimizer state was loaded");
        resumed.Fit();

        TestData.AssertBitwiseEqual(resumed.Model, uninterrupted.Model);
    }

    [Test]
    public void BadArgumentsAndTheDescription()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LayerFreezing(freezeStart: 1.0));
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new LayerFreezing(freezeLevel: -0.5));
        Assert.That(ex!.Message, Does.Contain("freeze_level").And.Contain("-0.5"));
        var lf = new LayerFreezing(0.25, 0.75);
        Assert.That(AlgorithmCatalog.Create(lf.Describe()).Describe(), Is.EqualTo(lf.Describe()));
    }
}
