using System.Runtime.CompilerServices;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.Logging;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>The low-precision LayerNorm module and its functional form (output dtype, tolerance against Float32, absent weight or bias, gradients reaching the original parameters, fp32 leaving the model alone).</summary>
[TestFixture]
public class LowPrecisionLayerNormTests
{
    private const double Bf16MaxError = 0.05;
    private const double Bf16MeanError = 0.01;
    private const double Fp16MaxError = 0.01;

    [Test]
    public void UnderBf16TheSurgeredModelReturnsBFloat16WhereThePlainLayerNormReturnsFloat32()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        Sequential model = nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32));
        var plainNorm = (nn.Module<Tensor, Tensor>)model[1];
        Tensor x = TestTensors.Normal(gen, 8, 32);

        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            Assert.That(plainNorm.call(x).dtype, Is.EqualTo(ScalarType.Float32), "plain LayerNorm on a Float32 input under amp_bf16");
        }

        int replaced = Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16);

        Assert.That(replaced, Is.EqualTo(1));
        Assert.That(model[1], Is.InstanceOf<LPLayerNorm>());
        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            Assert.That(model.call(x).dtype, Is.EqualTo(ScalarType.BFloat16), "surgered model under amp_bf16");
            Assert.That(((nn.Module<Tensor, Tensor>)model[1]).call(x).dtype, Is.EqualTo(ScalarType.BFloat16), "LPLayerNorm on a Float32 input");
        }

        Assert.That(model.call(x).dtype, Is.EqualTo(ScalarType.Float32), "outside autocast");
    }

    [Test]
    public void Bf16OutputIsWithinToleranceOfFp32AndBitwiseEqualOutsideAutocast()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        (Sequential model, LayerNorm original) = RandomLayerNormModel(gen, 64);
        Tensor x = TestTensors.Normal(gen, 4, 16, 64);
        Tensor reference = original.call(x);

        Assert.That(Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16), Is.EqualTo(1));

        TestTensors.AssertClose(TestTensors.CallUnder(Precision.AmpBf16, model, x), reference, ScalarType.BFloat16, Bf16MaxError, Bf16MeanError);

        Tensor outside = model.call(x);
        Assert.That(outside.dtype, Is.EqualTo(ScalarType.Float32));
        TestTensors.AssertBitwiseEqual(outside, reference, "outside autocast the output must be bitwise the original's");
    }

    [Test]
    public void Fp16OutputIsWithinToleranceOfFp32WhereTheCpuHasTheKernels()
    {
        if (TestTensors.MissingHalfKernels() is { } reason)
        {
            Assert.Ignore(reason);
        }

        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        (Sequential model, LayerNorm original) = RandomLayerNormModel(gen, 64);
        Tensor x = TestTensors.Normal(gen, 4, 16, 64);
        Tensor reference = original.call(x);

        Assert.That(Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpFp16), Is.EqualTo(1));
        TestTensors.AssertClose(TestTensors.CallUnder(Precision.AmpFp16, model, x), reference, ScalarType.Float16, Fp16MaxError);
    }

    [TestCase(false, true, TestName = "LayerNormWithoutElementwiseAffineIsReplacedAndMeetsTolerance")]
    [TestCase(true, false, TestName = "LayerNormWithoutBiasIsReplacedAndMeetsTolerance")]
    public void LayerNormWithAbsentParametersIsReplacedAndMeetsTolerance(bool elementwiseAffine, bool bias)
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        LayerNorm original = nn.LayerNorm(64, elementwise_affine: elementwiseAffine, bias: bias);
        // TorchSharp declares LayerNorm.weight non-nullable but returns null without elementwise_affine.
        TestTensors.RandomiseAffine(gen, (Parameter?)original.weight, original.bias);
        Sequential model = nn.Sequential(("norm", original));
        string[] keysBefore = model.state_dict().Keys.ToArray();
        Tensor x = TestTensors.Normal(gen, 4, 16, 64);
        Tensor reference = original.call(x);

        Assert.That(Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16), Is.EqualTo(1));

        var lp = (LPLayerNorm)model[0];
        Assert.That(lp.weight is null, Is.EqualTo(!elementwiseAffine), "weight present iff elementwise_affine");
        Assert.That(lp.bias is null, Is.EqualTo(!(elementwiseAffine && bias)), "bias absent when bias: false or no affine");
        Assert.That(lp.elementwise_affine, Is.EqualTo(elementwiseAffine));
        Assert.That(model.state_dict().Keys, Is.EqualTo(keysBefore));
        Assert.That(keysBefore, Is.EqualTo(elementwiseAffine ? new[] { "norm.weight" } : Array.Empty<string>()));

        TestTensors.AssertClose(TestTensors.CallUnder(Precision.AmpBf16, model, x), reference, ScalarType.BFloat16, Bf16MaxError, Bf16MeanError);
        TestTensors.AssertBitwiseEqual(model.call(x), reference, "bitwise outside autocast");
    }

    [Test]
    public void Bf16GradientsReachTheOriginalFloat32ParametersAndMatchFp32Gradients()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        (Sequential model, LayerNorm original) = RandomLayerNormModel(gen, 64);
        Parameter weight = original.weight;
        Parameter bias = original.bias!;
        LayerNorm reference = nn.LayerNorm(64);
        using (torch.no_grad())
        {
            reference.weight.copy_(weight);
            reference.bias!.copy_(bias);
        }

        Tensor x = TestTensors.Normal(gen, 4, 16, 64);
        Tensor g = TestTensors.Normal(gen, 4, 16, 64);
        const double rows = 4 * 16;

        Tensor xRef = x.clone().requires_grad_(true);
        ((reference.call(xRef) * g).sum() / rows).backward();

        Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16);
        Tensor xLow = x.clone().requires_grad_(true);
        Tensor loss;
        using (Precision.AmpBf16.Enter(DeviceType.CPU))
        {
            Tensor y = model.call(xLow);
            Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16));
            loss = (y.to(ScalarType.Float32) * g).sum() / rows;
        }

        loss.backward();

        Assert.That(weight.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(bias.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(weight.grad, Is.Not.Null, "gradient must reach the original weight Parameter");
        Assert.That(bias.grad, Is.Not.Null, "gradient must reach the original bias Parameter");
        Assert.That(weight.grad!.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(bias.grad!.dtype, Is.EqualTo(ScalarType.Float32));
        Assert.That(xLow.grad!.dtype, Is.EqualTo(ScalarType.Float32));

        foreach ((string name, Tensor low, Tensor fp32) in new[]
                 {
                     ("weight", weight.grad!, reference.weight.grad!), ("bias", bias.grad!, reference.bias.grad!), ("input", xLow.grad!, xRef.grad!),
                 })
        {
            (double max, _) = TestTensors.AbsError(low, fp32);
            double relative = (low - fp32).norm().item<float>() / fp32.norm().item<float>();
            TestContext.Out.WriteLine($"{name} grad: max |fp32| {fp32.abs().max().item<float>():E3}, max abs err {max:E3}, relative L2 err {relative:E3}");
            Assert.That(max, Is.LessThanOrEqualTo(2e-2), $"{name} gradient");
            Assert.That(relative, Is.LessThanOrEqualTo(2e-2), $"{name} gradient, relative L2 error");
        }
    }

    [Test]
    public void Fp32PrecisionReplacesNothingAndWarns()
    {
        using var d = torch.NewDisposeScope();
        var log = new CapturingLoggerFactory();
        Sequential model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8));

        int replaced = Functional.ApplyLowPrecisionLayerNorm(model, Precision.Fp32, logger: log.CreateLogger("test"));

        Assert.That(replaced, Is.EqualTo(0));
        Assert.That(model[1], Is.InstanceOf<LayerNorm>());
        Assert.That(log.Warnings.Single(), Does.Contain("no effect").And.Contain("fp32"));
    }

    [Test]
    public void AModelWithoutLayerNormGetsAWarning()
    {
        using var d = torch.NewDisposeScope();
        var log = new CapturingLoggerFactory();
        Sequential model = nn.Sequential(nn.Linear(8, 8), nn.ReLU());

        Assert.That(Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16, logger: log.CreateLogger("test")), Is.EqualTo(0));
        Assert.That(log.Warnings.Single(), Does.Contain("found no LayerNorm"));
    }

    [Test]
    public void NativeTransformerModulesAreNamedInAWarning()
    {
        using var d = torch.NewDisposeScope();
        var log = new CapturingLoggerFactory();
        Sequential model = nn.Sequential(("encoder", nn.TransformerEncoderLayer(16, 2)), ("final_norm", nn.LayerNorm(16)));

        int replaced = Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16, logger: log.CreateLogger("test"));

        Assert.That(replaced, Is.EqualTo(1), "the managed LayerNorm is still replaced");
        string warning = log.Warnings.Single();
        Assert.That(warning, Does.Contain("encoder (TransformerEncoderLayer)"));
        Assert.That(log.Entries.Where(e => e.Level == LogLevel.Information).Select(e => e.Message), Has.Some.Contains("replaced 1 LayerNorm"));
    }

    [Test]
    public void TheModelItselfBeingALayerNormIsRefusedWithAClearMessage()
    {
        using var d = torch.NewDisposeScope();
        var ex = Assert.Throws<ArgumentException>(() => Functional.ApplyLowPrecisionLayerNorm(nn.LayerNorm(4), Precision.AmpBf16));
        Assert.That(ex!.Message, Does.Contain("itself a LayerNorm"));
    }

    /// <summary>
    /// TorchSharp's LayerNorm disposes its parameters even from its finalizer; the replacement shares them, so
    /// collecting the replaced LayerNorm must not free them.
    /// </summary>
    [Test]
    public void CollectingTheReplacedLayerNormDoesNotFreeTheSharedParameters()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        (Sequential model, Tensor expected) = SurgeredModelWhoseOriginalIsUnreachable(gen);
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        var lp = (LPLayerNorm)model[0];
        Assert.That(lp.weight!.IsInvalid, Is.False, "weight handle freed by the collected LayerNorm's finalizer");
        Assert.That(lp.bias!.IsInvalid, Is.False, "bias handle freed by the collected LayerNorm's finalizer");
        TestTensors.AssertBitwiseEqual(lp.weight, expected);
    }

    [Test]
    public void SurgeredModelCanStillBeMovedToAnotherDtype()
    {
        using var d = torch.NewDisposeScope();
        Generator gen = TestTensors.NewGenerator();
        (Sequential model, LayerNorm original) = RandomLayerNormModel(gen, 16);
        Tensor x = TestTensors.Normal(gen, 3, 16);
        Tensor reference = original.call(x).to(ScalarType.Float64);
        Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16);

        model.to(ScalarType.Float64);

        var lp = (LPLayerNorm)model[0];
        Assert.That(lp.weight!.dtype, Is.EqualTo(ScalarType.Float64));
        Assert.That(model.state_dict()["0.weight"].dtype, Is.EqualTo(ScalarType.Float64));
        Tensor y = model.call(x.to(ScalarType.Float64));
        Assert.That(TestTensors.AbsError(y, reference).Max, Is.LessThanOrEqualTo(1e-5));
    }

    internal static (Sequential Model, LayerNorm Original) RandomLayerNormModel(Generator gen, long features)
    {
        LayerNorm norm = nn.LayerNorm(features);
        TestTensors.RandomiseAffine(gen, norm.weight, norm.bias);
        return (nn.Sequential(norm), norm);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (Sequential Model, Tensor ExpectedWeight) SurgeredModelWhoseOriginalIsUnreachable(Generator gen)
    {
        (Sequential model, LayerNorm original) = RandomLayerNormModel(gen, 16);
        Tensor expected = original.weight.detach().clone().DetachFromDisposeScope();
        Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16);
        return (model, expected);
    }
}
