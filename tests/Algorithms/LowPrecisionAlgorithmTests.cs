using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// The LowPrecisionLayerNorm / LowPrecisionGroupNorm algorithms run by the Engine, their descriptions, and state-dict
/// compatibility of surgered models (fp32 leaves the model alone, LayerNorms added at Init by an earlier algorithm are converted, and state dicts stay compatible).
/// </summary>
[TestFixture]
public class LowPrecisionAlgorithmTests
{
    [Test]
    public void LayerNormsAddedAtInitByAnEarlierAlgorithmAreConvertedToo()
    {
        using var d = torch.NewDisposeScope();
        Sequential model = nn.Sequential(("fc", nn.Linear(8, 8)), ("norm", nn.LayerNorm(8)));
        var log = new CapturingLoggerFactory();
        var state = new State(model, precision: Precision.AmpBf16)
        {
            Optimizers = { new Adam(model.parameters().ToList()) },
            LoggerFactory = log,
        };
        var lpln = new LowPrecisionLayerNorm();
        state.Algorithms.Add(lpln);
        state.Algorithms.Add(new AddLayerNormAtInit());
        using var engine = new Engine(state, new Logger(state));

        IReadOnlyList<Trace> traces = engine.RunEvent(Event.Init);

        Assert.That(traces.Select(t => t.Name), Is.EqualTo(new[] { "add_layer_norm_at_init", "low_precision_layernorm" }));
        Assert.That(traces.All(t => t.Run), Is.True);
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LayerNorm)), Is.EqualTo(0), "no plain LayerNorm left");
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LPLayerNorm)), Is.EqualTo(2));
        Assert.That(log.Entries.Any(e => e.Category == typeof(LowPrecisionLayerNorm).FullName && e.Message.Contains("replaced 2 LayerNorm", StringComparison.Ordinal)),
            Is.True, "the count is logged through state.LoggerFactory");
        Assert.That(log.Warnings, Is.Empty);

        // AfterLoad needs no dataloader (the engine requires one from FitStart on, which this state does not have).
        engine.RunEvent(Event.AfterLoad);
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LPLayerNorm)), Is.EqualTo(2), "runs only at apply_at");
    }

    // Through the engine.
    [Test]
    public void WithFp32PrecisionTheAlgorithmReplacesNothingAndWarns()
    {
        using var d = torch.NewDisposeScope();
        Sequential model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8));
        var log = new CapturingLoggerFactory();
        var state = new State(model, precision: Precision.Fp32) { LoggerFactory = log };
        state.Algorithms.Add(new LowPrecisionLayerNorm());
        using var engine = new Engine(state, new Logger(state));

        engine.RunEvent(Event.Init);

        Assert.That(model[1], Is.InstanceOf<LayerNorm>());
        Assert.That(log.Warnings.Single(), Does.Contain("LowPrecisionLayerNorm has no effect with precision fp32"));
    }

    [TestCase(Event.Init)]
    [TestCase(Event.BeforeLoad)]
    [TestCase(Event.AfterLoad)]
    public void ApplyAtMayBeInitBeforeLoadOrAfterLoadAndIsDescribed(Event applyAt)
    {
        var algorithm = new LowPrecisionLayerNorm(applyAt);

        Assert.That(algorithm.Name, Is.EqualTo("low_precision_layernorm"));
        Assert.That(algorithm.RequiredOnLoad, Is.True);
        Assert.That(algorithm.Match(applyAt, new State(nn.Linear(1, 1))), Is.True);
        Assert.That(algorithm.Match(Event.FitStart, new State(nn.Linear(1, 1))), Is.False);
        AlgorithmDescription description = algorithm.Describe();
        Assert.That(description.Hyperparameters["apply_at"], Is.EqualTo(applyAt.ToComposerName()));
        var recreated = (LowPrecisionLayerNorm)AlgorithmCatalog.Create(description);
        Assert.That(recreated.ApplyAt, Is.EqualTo(applyAt));
        Assert.That(recreated.Describe(), Is.EqualTo(description));
    }

    [TestCase(LayerNormKernel.Libtorch, LayerNormKernel.Libtorch)]
    [TestCase(LayerNormKernel.Fused, LayerNormKernel.Fused)]
    public void TheKernelChoiceReachesEveryReplacement(LayerNormKernel chosen, LayerNormKernel expected)
    {
        using var d = torch.NewDisposeScope();
        Sequential model = nn.Sequential(("a", nn.LayerNorm(8)), ("fc", nn.Linear(8, 8)), ("b", nn.LayerNorm(8)));
        var state = new State(model, precision: Precision.AmpBf16);
        state.Algorithms.Add(new LowPrecisionLayerNorm(kernel: chosen));
        using var engine = new Engine(state, new Logger(state));
        engine.RunEvent(Event.Init);
        var replaced = model.modules().OfType<LPLayerNorm>().ToList();
        Assert.That(replaced, Has.Count.EqualTo(2));
        Assert.That(replaced.Select(m => m.Kernel), Is.All.EqualTo(expected));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LowPrecisionLayerNorm(kernel: (LayerNormKernel)7));
    }

    [TestCase(Event.FitStart)]
    [TestCase(Event.BeforeForward)]
    public void ApplyAtAnyOtherEventThrows(Event applyAt)
    {
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => new LowPrecisionLayerNorm(applyAt));
        Assert.That(ex!.Message, Does.Contain(applyAt.ToComposerName()).And.Contain("init, before_load or after_load"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new LowPrecisionGroupNorm(applyAt));
    }

    [Test]
    public void TheCatalogRefusesUnknownNamesAndHyperparameters()
    {
        var unknown = Assert.Throws<ArgumentException>(() => AlgorithmCatalog.Create(new AlgorithmDescription("blurpool")));
        Assert.That(unknown!.Message, Does.Contain("blurpool").And.Contain("low_precision_layernorm"));
        var badKey = Assert.Throws<ArgumentException>(() => AlgorithmCatalog.Create(
            new AlgorithmDescription("low_precision_groupnorm", new Dictionary<string, string> { ["eps"] = "1e-5" })));
        Assert.That(badKey!.Message, Does.Contain("eps"));
        Assert.That(AlgorithmCatalog.Create(new AlgorithmDescription("low_precision_groupnorm")), Is.InstanceOf<LowPrecisionGroupNorm>());
    }

    [Test]
    public void LowPrecisionGroupNormConvertsGroupNormWithinToleranceAndBitwiseOutsideAutocast()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        GroupNorm original = nn.GroupNorm(4, 8);
        TestTensors.RandomiseAffine(gen, original.weight, original.bias);
        Sequential model = nn.Sequential(("conv", nn.Conv1d(8, 8, 3, padding: 1)), ("gn", original));
        Dictionary<string, Tensor> stateBefore = model.state_dict();
        Tensor x = TestTensors.Normal(gen, 4, 8, 16);
        Tensor h = ((nn.Module<Tensor, Tensor>)model[0]).call(x);
        Tensor reference = original.call(h);
        var log = new CapturingLoggerFactory();
        var state = new State(model, precision: Precision.AmpBf16) { LoggerFactory = log };
        var algorithm = new LowPrecisionGroupNorm();
        state.Algorithms.Add(algorithm);
        using var engine = new Engine(state, new Logger(state));

        engine.RunEvent(Event.Init);

        Assert.That(algorithm.Name, Is.EqualTo("low_precision_groupnorm"));
        Assert.That(model[1], Is.InstanceOf<LPGroupNorm>());
        ModuleSurgeryTests.AssertSameState(stateBefore, model.state_dict());
        var lp = (LPGroupNorm)model[1];
        Assert.That(TestTensors.CallUnder(Precision.AmpBf16, original, h).dtype, Is.EqualTo(ScalarType.Float32), "plain GroupNorm on a Float32 input");
        TestTensors.AssertClose(TestTensors.CallUnder(Precision.AmpBf16, lp, h), reference, ScalarType.BFloat16, 0.05, 0.01);
        TestTensors.AssertBitwiseEqual(lp.call(h), reference, "bitwise outside autocast");
        Assert.That(log.Warnings, Is.Empty);
    }

    /// <summary>
    /// The model half of the checkpoint round trip (the Trainer half is in LowPrecisionCheckpointTests): surgery keeps every
    /// state-dict key and tensor, and a state dict saved from a surgered model loads into a plain one and back.
    /// </summary>
    [Test]
    public void StateDictsOfSurgeredAndPlainModelsAreInterchangeable()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-lpln-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            Sequential surgered = RandomModel(gen);
            Dictionary<string, Tensor> before = surgered.state_dict();
            Assert.That(Functional.ApplyLowPrecisionLayerNorm(surgered, Precision.AmpBf16), Is.EqualTo(2));
            ModuleSurgeryTests.AssertSameState(before, surgered.state_dict());

            // Surgered → plain.
            string fromSurgered = Path.Combine(folder, "surgered.dat");
            surgered.save(fromSurgered);
            Sequential plain = RandomModel(gen);
            plain.load(fromSurgered);
            AssertEqualValues(surgered.state_dict(), plain.state_dict());

            // Plain → surgered.
            Sequential plainSource = RandomModel(gen);
            string fromPlain = Path.Combine(folder, "plain.dat");
            plainSource.save(fromPlain);
            Sequential target = RandomModel(gen);
            Functional.ApplyLowPrecisionLayerNorm(target, Precision.AmpBf16);
            Dictionary<string, Tensor> targetBefore = target.state_dict();
            target.load(fromPlain);
            AssertEqualValues(plainSource.state_dict(), target.state_dict());
            ModuleSurgeryTests.AssertSameState(targetBefore, target.state_dict());
            Assert.That(ModuleSurgery.CountModuleInstances(target, typeof(LPLayerNorm)), Is.EqualTo(2));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static Sequential RandomModel(Generator gen)
    {
        LayerNorm first = nn.LayerNorm(8);
        LayerNorm second = nn.LayerNorm(8, bias: false);
        TestTensors.RandomiseAffine(gen, first.weight, first.bias);
        TestTensors.RandomiseAffine(gen, second.weight, second.bias);
        return nn.Sequential(("norm1", first), ("fc", nn.Linear(8, 8)), ("norm2", second));
    }

    private static void AssertEqualValues(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> actual)
    {
        Assert.That(actual.Keys, Is.EquivalentTo(expected.Keys));
        foreach ((string key, Tensor tensor) in expected)
        {
            TestTensors.AssertBitwiseEqual(actual[key], tensor, key);
        }
    }

    /// <summary>An algorithm that appends a LayerNorm to a Sequential model at Init (another algorithm running before LowPrecisionLayerNorm at Init).</summary>
    private sealed class AddLayerNormAtInit : Algorithm
    {
        public override bool Match(Event e, State state) => e == Event.Init;

        public override int? Apply(Event e, State state, Logger logger)
        {
            ((Sequential)state.Model).append("added_norm", nn.LayerNorm(8));
            return null;
        }
    }
}
