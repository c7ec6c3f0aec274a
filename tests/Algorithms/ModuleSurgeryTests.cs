using System.Reflection;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>ModuleSurgery.ReplaceModuleClasses: every reference, containers, optimizers (optimizers built before surgery, modules held in fields, properties and containers).</summary>
[TestFixture]
public class ModuleSurgeryTests
{
    private static readonly SurgeryPolicy[] LayerNormPolicy = { SurgeryPolicy.For<LayerNorm>((ln, _) => new LPLayerNorm(ln)) };

    [Test]
    public void AdamBuiltBeforeSurgeryKeepsItsGroupsAndStepsTheLayerNormWeight()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        Sequential model = nn.Sequential(("fc", nn.Linear(32, 32)), ("norm", nn.LayerNorm(32)));
        TestTensors.RandomiseAffine(gen, ((LayerNorm)model[1]).weight, ((LayerNorm)model[1]).bias);
        var decay = new Adam.ParamGroup(((nn.Module)model[0]).parameters().ToList(), lr: 1e-2, weight_decay: 0.01);
        var noDecay = new Adam.ParamGroup(((nn.Module)model[1]).parameters().ToList(), lr: 1e-2, weight_decay: 0);
        var adam = new Adam(new[] { decay, noDecay }, lr: 1e-2);
        Parameter[][] groupsBefore = adam.ParamGroups.Cast<ParamGroup>().Select(g => g.Parameters.ToArray()).ToArray();

        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, LayerNormPolicy, new[] { adam });

        Assert.That(replaced, Has.Count.EqualTo(1));
        ParamGroup[] groupsAfter = adam.ParamGroups.Cast<ParamGroup>().ToArray();
        Assert.That(groupsAfter, Has.Length.EqualTo(2));
        Assert.That(groupsAfter[0], Is.SameAs(decay));
        Assert.That(groupsAfter[1], Is.SameAs(noDecay));
        Assert.That(groupsAfter[0].Parameters, Is.EqualTo(groupsBefore[0]).Using<Parameter>(ReferenceEquals));
        Assert.That(groupsAfter[1].Parameters, Is.EqualTo(groupsBefore[1]).Using<Parameter>(ReferenceEquals));
        Assert.That(groupsAfter.SelectMany(g => g.Parameters), Is.EqualTo(model.parameters()).Using<Parameter>(ReferenceEquals),
            "the optimizer holds exactly the model's parameters, in order");
        Assert.That(((nn.Module)model[1]).parameters(), Is.EqualTo(groupsBefore[1]).Using<Parameter>(ReferenceEquals),
            "the LPLayerNorm owns the no-decay group's parameters");

        var lp = (LPLayerNorm)model[1];
        Tensor weightBefore = lp.weight!.detach().clone();
        Tensor x = TestTensors.Normal(gen, 8, 32);
        Tensor target = TestTensors.Normal(gen, 8, 32);
        adam.zero_grad();
        Tensor loss;
        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            loss = nn.functional.mse_loss(model.call(x).to(ScalarType.Float32), target);
        }

        loss.backward();
        adam.step();

        Assert.That(TestTensors.BitwiseEqual(lp.weight, weightBefore), Is.False, "one Adam step must change the LayerNorm weight");
        Assert.That(lp.weight.dtype, Is.EqualTo(ScalarType.Float32));
    }

    [Test]
    public void LayerNormsInFieldsAutoPropertiesAndRenamedFieldsAreReplacedEverywhere()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        var model = new FieldModel(16);
        Dictionary<string, Tensor> stateBefore = model.state_dict();
        Tensor x = TestTensors.Normal(gen, 4, 16);
        Tensor reference = model.call(x);

        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, LayerNormPolicy);

        Assert.That(replaced, Has.Count.EqualTo(3));
        Assert.That(model.PlainField, Is.InstanceOf<LPLayerNorm>(), "plain field");
        Assert.That(model.AutoProperty, Is.InstanceOf<LPLayerNorm>(), "auto-property backing field");
        Assert.That(model.RenamedField, Is.InstanceOf<LPLayerNorm>(), "[ComponentName] field");
        Dictionary<string, nn.Module> children = model.named_children().ToDictionary(c => c.name, c => c.module);
        Assert.That(children["norm"], Is.SameAs(model.PlainField));
        Assert.That(children["<AutoProperty>k__BackingField"], Is.SameAs(model.AutoProperty));
        Assert.That(children["renamed_norm"], Is.SameAs(model.RenamedField));
        Assert.That(model.named_modules().Count(m => m.module is LayerNorm), Is.EqualTo(0));
        AssertSameState(stateBefore, model.state_dict());

        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            Assert.That(model.call(x).dtype, Is.EqualTo(ScalarType.BFloat16), "forward goes through the replaced fields");
        }

        TestTensors.AssertBitwiseEqual(model.call(x), reference, "bitwise outside autocast");
    }

    [Test]
    public void AFieldDeclaredAsLayerNormIsReportedAndTheModelIsLeftUnchanged()
    {
        using var d = torch.NewDisposeScope();
        var model = new TypedFieldModel(8);
        LayerNorm original = model.Norm;

        var ex = Assert.Throws<InvalidOperationException>(() => ModuleSurgery.ReplaceModuleClasses(model, LayerNormPolicy));

        Assert.That(ex!.Message, Does.Contain("TypedFieldModel._norm").And.Contain("declared as LayerNorm").And.Contain("not changed"));
        Assert.That(model.Norm, Is.SameAs(original));
        Assert.That(model.named_children().Single(c => c.name == "_norm").module, Is.SameAs(original));
        Assert.That(model.Other, Is.InstanceOf<LayerNorm>(), "the other, replaceable, LayerNorm is left alone too");
    }

    [Test]
    public void ReplacementInsideSequentialModuleListAndModuleDictIsSeenByForwardAndStateDict()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        var model = new ContainerModel(12);
        foreach (LayerNorm ln in model.modules().OfType<LayerNorm>())
        {
            TestTensors.RandomiseAffine(gen, ln.weight, ln.bias);
        }

        Dictionary<string, Tensor> stateBefore = model.state_dict();
        string[] moduleNamesBefore = model.named_modules().Select(m => m.name).ToArray();
        Tensor x = TestTensors.Normal(gen, 5, 12);
        Tensor reference = model.call(x);

        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, LayerNormPolicy);

        Assert.That(replaced, Has.Count.EqualTo(3));
        Assert.That(model.Seq[0], Is.InstanceOf<LPLayerNorm>(), "Sequential's list");
        Assert.That(model.List[0], Is.InstanceOf<LPLayerNorm>(), "ModuleList's list");
        Assert.That(model.Dict["norm"], Is.InstanceOf<LPLayerNorm>(), "ModuleDict's dictionary");
        Assert.That(model.Dict[1].Item2, Is.SameAs(model.Dict["norm"]), "ModuleDict's ordered list");
        Assert.That(model.named_modules().Select(m => m.name), Is.EqualTo(moduleNamesBefore));
        Dictionary<string, nn.Module> modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        Assert.That(new[] { modules["seq.0"], modules["list.0"], modules["dict.norm"] }, Has.All.InstanceOf<LPLayerNorm>());
        Assert.That(model.named_modules().Count(m => m.module is LayerNorm), Is.EqualTo(0));
        AssertSameState(stateBefore, model.state_dict());

        // Each norm gets a Float32 input, so a BFloat16 output proves forward reached the replacement in that container.
        Assert.That(TestTensors.CallUnder(Precision.AmpBf16, model, x).dtype, Is.EqualTo(ScalarType.BFloat16));
        Assert.That(model.ForwardDtypes, Is.EqualTo(new[] { ScalarType.BFloat16, ScalarType.BFloat16, ScalarType.BFloat16 }));
        TestTensors.AssertBitwiseEqual(model.call(x), reference, "bitwise outside autocast");
    }

    [Test]
    public void AnUnregisteredModuleListAtTheRootIsTraversed()
    {
        using var d = torch.NewDisposeScope();
        ModuleList<nn.Module<Tensor, Tensor>> list = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.LayerNorm(4), nn.Linear(4, 4));

        Assert.That(ModuleSurgery.ReplaceModuleClasses(list, LayerNormPolicy), Has.Count.EqualTo(1));
        Assert.That(list[0], Is.InstanceOf<LPLayerNorm>());
    }

    [Test]
    public void AModuleReachableByTwoPathsIsReplacedOnceEverywhereAndASecondRunChangesNothing()
    {
        using var d = torch.NewDisposeScope();
        LayerNorm shared = nn.LayerNorm(8);
        Sequential inner = nn.Sequential(("shared", shared), ("fc", nn.Linear(8, 8)));
        Sequential model = nn.Sequential(("a", shared), ("inner", inner), ("b", shared));
        int policyCalls = 0;
        var policy = new[] { SurgeryPolicy.For<LayerNorm>((ln, _) => { policyCalls++; return new LPLayerNorm(ln); }) };

        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, policy);

        Assert.That(replaced, Has.Count.EqualTo(1));
        Assert.That(policyCalls, Is.EqualTo(1));
        nn.Module replacement = replaced[shared];
        Assert.That(model[0], Is.SameAs(replacement));
        Assert.That(model[2], Is.SameAs(replacement));
        Assert.That(inner[0], Is.SameAs(replacement));
        Assert.That(ModuleSurgery.CountModuleInstances(model, typeof(LPLayerNorm)), Is.EqualTo(1));

        Assert.That(ModuleSurgery.ReplaceModuleClasses(model, policy), Is.Empty, "second run");
        Assert.That(policyCalls, Is.EqualTo(1));
    }

    [Test]
    public void AReplacementWithNewParametersUpdatesTheOptimizerGroupInPlaceAndDropsStaleState()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        Sequential model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3));
        // A lazy group (model.parameters() is re-enumerated by the optimizer) is the hardest case.
        var adam = new Adam(model.parameters(), lr: 1e-2);
        Step(model, adam, gen);
        var group = (ParamGroup)adam.ParamGroups.Single();
        var oldLinear = (Linear)model[2];
        Parameter[] before = group.Parameters.ToArray();

        var policy = new[] { SurgeryPolicy.For<Linear>((lin, index) => index == 1 ? nn.Linear(6, 3) : null) };
        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, policy, new[] { adam });

        Assert.That(replaced.Keys.Single(), Is.SameAs(oldLinear));
        var newLinear = (Linear)model[2];
        Assert.That(adam.ParamGroups.Single(), Is.SameAs(group), "same group object");
        Parameter[] after = group.Parameters.ToArray();
        Assert.That(after.Take(2), Is.EqualTo(before.Take(2)).Using<Parameter>(ReferenceEquals), "untouched parameters keep their place");
        Assert.That(after[2], Is.SameAs(newLinear.weight), "new weight takes the old weight's position");
        Assert.That(after[3], Is.SameAs(newLinear.bias), "new bias takes the old bias's position");
        Assert.That(after, Is.EqualTo(model.parameters()).Using<Parameter>(ReferenceEquals));
        IntPtr[] stateKeys = OptimizerStateKeys(adam);
        Assert.That(stateKeys, Is.EquivalentTo(after.Select(p => p.Handle)), "state only for the current parameters");

        Tensor weightBefore = newLinear.weight.detach().clone();
        Step(model, adam, gen);
        Assert.That(TestTensors.BitwiseEqual(newLinear.weight, weightBefore), Is.False, "the new parameters are trained");
    }

    [Test]
    public void APolicyForANonModuleTypeIsRefused()
    {
        var ex = Assert.Throws<ArgumentException>(() => new SurgeryPolicy(typeof(string), (m, _) => m));
        Assert.That(ex!.Message, Does.Contain("System.String"));
    }

    private static void Step(Sequential model, Adam adam, Generator gen)
    {
        using var d = torch.NewDisposeScope();
        adam.zero_grad();
        nn.functional.mse_loss(model.call(TestTensors.Normal(gen, 4, 6)), TestTensors.Normal(gen, 4, 3)).backward();
        adam.step();
    }

    private static IntPtr[] OptimizerStateKeys(OptimizerHelper optimizer)
    {
        var state = (OrderedDict<IntPtr, OptimizerState>)typeof(OptimizerHelper)
            .GetField("_state", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(optimizer)!;
        return state.keys().ToArray();
    }

    internal static void AssertSameState(Dictionary<string, Tensor> before, Dictionary<string, Tensor> after)
    {
        Assert.That(after.Keys, Is.EqualTo(before.Keys), "state-dict keys and order");
        foreach ((string key, Tensor tensor) in before)
        {
            Assert.That(after[key].Handle, Is.EqualTo(tensor.Handle), $"state-dict entry {key} must be the same tensor");
        }
    }

    private sealed class FieldModel : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> fc;
        private nn.Module<Tensor, Tensor> norm;

        [ComponentName(Name = "renamed_norm")]
        private nn.Module<Tensor, Tensor> _third;

        public FieldModel(long features)
            : base(nameof(FieldModel))
        {
            fc = nn.Linear(features, features);
            norm = nn.LayerNorm(features);
            AutoProperty = nn.LayerNorm(features);
            _third = nn.LayerNorm(features);
            RegisterComponents();
        }

        public nn.Module<Tensor, Tensor> AutoProperty { get; private set; }

        public nn.Module<Tensor, Tensor> PlainField => norm;

        public nn.Module<Tensor, Tensor> RenamedField => _third;

        public override Tensor forward(Tensor input) => _third.call(AutoProperty.call(norm.call(fc.call(input))));
    }

    private sealed class TypedFieldModel : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> _other;
        private readonly LayerNorm _norm;

        public TypedFieldModel(long features)
            : base(nameof(TypedFieldModel))
        {
            _other = nn.LayerNorm(features);
            _norm = nn.LayerNorm(features);
            RegisterComponents();
        }

        public LayerNorm Norm => _norm;

        public nn.Module<Tensor, Tensor> Other => _other;

        public override Tensor forward(Tensor input) => _norm.call(_other.call(input));
    }

    private sealed class ContainerModel : nn.Module<Tensor, Tensor>
    {
        private readonly Sequential seq;
        private readonly ModuleList<nn.Module<Tensor, Tensor>> list;
        private readonly ModuleDict<nn.Module<Tensor, Tensor>> dict;

        public ContainerModel(long features)
            : base(nameof(ContainerModel))
        {
            seq = nn.Sequential(nn.LayerNorm(features), nn.ReLU());
            list = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.LayerNorm(features), nn.Linear(features, features));
            dict = nn.ModuleDict<nn.Module<Tensor, Tensor>>(("fc", nn.Linear(features, features)), ("norm", nn.LayerNorm(features)));
            RegisterComponents();
        }

        public Sequential Seq => seq;

        public ModuleList<nn.Module<Tensor, Tensor>> List => list;

        public ModuleDict<nn.Module<Tensor, Tensor>> Dict => dict;

        /// <summary>Output dtypes of the three LayerNorm positions in the last forward.</summary>
        public List<ScalarType> ForwardDtypes { get; } = new();

        public override Tensor forward(Tensor input)
        {
            ForwardDtypes.Clear();
            Tensor h = seq.call(input);
            ForwardDtypes.Add(h.dtype);
            h = list[0].call(h.to(ScalarType.Float32));
            ForwardDtypes.Add(h.dtype);
            h = list[1].call(h);
            h = dict["fc"].call(h);
            h = dict["norm"].call(h.to(ScalarType.Float32));
            ForwardDtypes.Add(h.dtype);
            return h;
        }
    }
}
