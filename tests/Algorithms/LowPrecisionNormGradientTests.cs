using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>
/// Gradients of <see cref="LPLayerNorm"/> and <see cref="LPGroupNorm"/> under autocast on CPU at real
/// activation sizes, against a float64 reference, on fresh random inputs (the seed is in every assertion message).
/// Each error is max |low − reference| / max |reference| of that gradient.
/// </summary>
/// <remarks>
/// On the fused path LPLayerNorm used before (libtorch's fused low-precision <c>layer_norm</c> and its backward) the LayerNorm
/// cases measured weight 6.8–10.7 % and bias 6.9–13.0 % of their largest value under amp_bf16 (both shapes fail),
/// and weight 0.9–1.5 %, bias 0.7–1.4 % under amp_fp16 ([4,2048,1024] fails; [8,512,768] sits at the 1 % limit and
/// fails in some runs only). The GroupNorm cases pass on the fused kernel, which LPGroupNorm keeps.
/// </remarks>
[TestFixture]
public class LowPrecisionNormGradientTests
{
    private const double ParameterGradientTolerance = 0.01;
    private const double InputGradientTolerance = 0.02;

    private static readonly object[] LayerNormCases =
    {
        new object[] { new long[] { 8, 512, 768 }, "amp_bf16", LayerNormKernel.Default },
        new object[] { new long[] { 8, 512, 768 }, "amp_fp16", LayerNormKernel.Default },
        new object[] { new long[] { 4, 2048, 1024 }, "amp_bf16", LayerNormKernel.Default },
        new object[] { new long[] { 4, 2048, 1024 }, "amp_fp16", LayerNormKernel.Default },
        new object[] { new long[] { 8, 512, 768 }, "amp_bf16", LayerNormKernel.Libtorch },
        new object[] { new long[] { 4, 2048, 1024 }, "amp_bf16", LayerNormKernel.Libtorch },
    };

    private static readonly object[] GroupNormCases =
    {
        new object[] { new long[] { 8, 320, 32, 32 }, 32L, "amp_bf16" },
        new object[] { new long[] { 8, 320, 32, 32 }, 32L, "amp_fp16" },
    };

    [TestCaseSource(nameof(LayerNormCases))]
    [Category(TestCategories.Slow)]
    public void LayerNormGradientsAtRealSizeMatchFloat64(long[] shape, string precisionName, LayerNormKernel kernel)
    {
        Precision precision = PrecisionFromName(precisionName);
        IgnoreIfFp16Missing(precision);
        using var d = torch.NewDisposeScope();
        (Generator gen, ulong seed) = NewGenerator();
        long hidden = shape[^1];
        LayerNorm original = nn.LayerNorm(hidden);
        TestTensors.RandomiseAffine(gen, original.weight, original.bias);
        Sequential model = nn.Sequential(original);
        Assert.That(Functional.ApplyLowPrecisionLayerNorm(model, precision, kernel: kernel), Is.EqualTo(1));
        var lp = (LPLayerNorm)model[0];
        Assert.That(lp.Kernel, Is.EqualTo(kernel == LayerNormKernel.Default && System.Runtime.Intrinsics.X86.Avx2.IsSupported ? LayerNormKernel.Fused : LayerNormKernel.Libtorch).Or.EqualTo(kernel));

        Tensor x = TestTensors.Normal(gen, shape);
        Tensor dy = TestTensors.Normal(gen, shape);
        Tensor[] reference = Float64Gradients(
            x, lp.weight!, lp.bias!, dy, (x64, w64, b64) => F.layer_norm(x64, new[] { hidden }, w64, b64, lp.eps));

        Tensor[] low = LowPrecisionGradients(precision, lp, x, lp.weight!, lp.bias!, dy);

        AssertGradients(low, reference, precision, $"LPLayerNorm [{string.Join(",", shape)}] {precisionName} kernel {lp.Kernel}, seed {seed}");
    }

    /// <summary>
    /// LPGroupNorm keeps libtorch's fused low-precision kernel: its weight and bias gradients measured 0.2–0.4 %
    /// (bf16) and 0.05 % (fp16) here, so it does not have LayerNorm's fault; this guards that.
    /// </summary>
    [TestCaseSource(nameof(GroupNormCases))]
    [Category(TestCategories.Slow)]
    public void GroupNormGradientsAtRealSizeMatchFloat64(long[] shape, long groups, string precisionName)
    {
        Precision precision = PrecisionFromName(precisionName);
        IgnoreIfFp16Missing(precision);
        using var d = torch.NewDisposeScope();
        (Generator gen, ulong seed) = NewGenerator();
        GroupNorm original = nn.GroupNorm(groups, shape[1]);
        TestTensors.RandomiseAffine(gen, original.weight, original.bias);
        Sequential model = nn.Sequential(original);
        Assert.That(Functional.ApplyLowPrecisionGroupNorm(model, precision), Is.EqualTo(1));
        var lp = (LPGroupNorm)model[0];

        Tensor x = TestTensors.Normal(gen, shape);
        Tensor dy = TestTensors.Normal(gen, shape);
        Tensor[] reference = Float64Gradients(
            x, lp.weight!, lp.bias!, dy, (x64, w64, b64) => F.group_norm(x64, groups, w64, b64, lp.eps));

        Tensor[] low = LowPrecisionGradients(precision, lp, x, lp.weight!, lp.bias!, dy);

        AssertGradients(low, reference, precision, $"LPGroupNorm [{string.Join(",", shape)}] groups {groups} {precisionName}, seed {seed}");
    }

    /// <summary>
    /// The contract of the CPU path that a fused kernel must keep: low-precision output, gradients in the
    /// parameters' and input's dtypes, weight and bias gradients accumulated in Float32 (checked at 16,384 rows
    /// against float64, where BFloat16 accumulation is off by more than 10 %).
    /// </summary>
    [Test]
    [Category(TestCategories.Slow)]
    public void FunctionalFormKeepsTheContractOnManyRows()
    {
        using var d = torch.NewDisposeScope();
        (Generator gen, ulong seed) = NewGenerator();
        const long hidden = 256;
        Tensor x = TestTensors.Normal(gen, 16384, hidden);
        Tensor dy = TestTensors.Normal(gen, 16384, hidden);
        Tensor weight = TestTensors.Uniform(gen, 0.5, 1.5, hidden).requires_grad_(true);
        Tensor bias = TestTensors.Uniform(gen, -0.1, 0.1, hidden).requires_grad_(true);
        Tensor[] reference = Float64Gradients(x, weight, bias, dy, (x64, w64, b64) => F.layer_norm(x64, new[] { hidden }, w64, b64, 1e-5));

        Tensor xLow = x.clone().requires_grad_(true);
        Tensor y = SplitAffineLayerNorm.Apply(
            xLow.to(ScalarType.BFloat16), new[] { hidden }, weight.to(ScalarType.BFloat16), bias.to(ScalarType.BFloat16), 1e-5);
        Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16), "output in the low-precision dtype");
        Tensor[] low = torch.autograd.grad(new[] { y }, new[] { xLow, weight, bias }, new[] { dy.to(ScalarType.BFloat16) }).ToArray();

        Assert.That(low.Select(g => g.dtype), Is.All.EqualTo(ScalarType.Float32), "gradients in the Float32 dtypes of input, weight and bias");
        AssertGradients(low, reference, Precision.AmpBf16, $"SplitAffineLayerNorm [16384,{hidden}] bf16, seed {seed}");
    }

    /// <summary>The fused CPU kernel and the libtorch path of the same <c>LPLayerNorm</c> agree (output, all three gradients).</summary>
    [Test]
    [Category(TestCategories.Slow)]
    public void FusedAndLibtorchKernelsOfTheModuleAgree()
    {
        if (!System.Runtime.Intrinsics.X86.Avx2.IsSupported)
        {
            Assert.Ignore("this CPU has no AVX2: LPLayerNorm's default is the libtorch path");
        }

        using var d = torch.NewDisposeScope();
        (Generator gen, ulong seed) = NewGenerator();
        const long hidden = 768;
        LayerNorm original = nn.LayerNorm(hidden);
        TestTensors.RandomiseAffine(gen, original.weight, original.bias);
        var fused = new LPLayerNorm(original);
        var libtorch = new LPLayerNorm(original, LayerNormKernel.Libtorch);
        Assert.That(fused.Kernel, Is.EqualTo(LayerNormKernel.Fused), "default on an AVX2 CPU");
        Tensor x = TestTensors.Normal(gen, 4, 256, hidden);
        Tensor dy = TestTensors.Normal(gen, 4, 256, hidden);
        Tensor[] a = LowPrecisionGradients(Precision.AmpBf16, fused, x, fused.weight!, fused.bias!, dy);
        Tensor[] b = LowPrecisionGradients(Precision.AmpBf16, libtorch, x, libtorch.weight!, libtorch.bias!, dy);
        string[] names = { "input", "weight", "bias" };
        for (int i = 0; i < 3; i++)
        {
            double err = RelativeMaxError(a[i], b[i].to(ScalarType.Float64));
            TestContext.Out.WriteLine($"fused vs libtorch {names[i]} gradient: {err:E2}");
            Assert.That(err, Is.LessThanOrEqualTo(0.02), $"{names[i]} gradient, fused vs libtorch path, seed {seed}");
        }

        Tensor yFused = TestTensors.CallUnder(Precision.AmpBf16, fused, x);
        Tensor yLib = TestTensors.CallUnder(Precision.AmpBf16, libtorch, x);
        Assert.That(yFused.dtype, Is.EqualTo(ScalarType.BFloat16));
        // The libtorch path rounds x̂, the weight, w·x̂ and the sum with the bias to BFloat16, the fused one only the
        // output: up to 5 roundings of 2⁻⁹ relative to the terms |w·x̂| + |b|, so |a − b| ≤ 2⁻⁵·(|w·x̂| + |b|) + 1e-3.
        Tensor a64 = yFused.to(ScalarType.Float64), b64 = yLib.to(ScalarType.Float64);
        Tensor terms = (F.layer_norm(x, new[] { hidden }, null, null, fused.eps) * fused.weight!).abs() + fused.bias!.abs();
        Tensor allowed = terms.detach().to(ScalarType.Float64) * Math.Pow(2, -5) + 1e-3;
        Tensor diff = (a64 - b64).abs();
        Assert.That(diff.gt(allowed).any().item<bool>(), Is.False, $"output, fused vs libtorch path: max abs diff {diff.max().item<double>():E3}, seed {seed}");
    }

    [Test]
    public void FunctionalFormRefusesParametersOfAnotherDtype()
    {
        using var d = torch.NewDisposeScope();
        Tensor x = torch.zeros(2, 4, ScalarType.BFloat16);
        var ex = Assert.Throws<ArgumentException>(() => SplitAffineLayerNorm.Apply(x, new long[] { 4 }, torch.ones(4), null, 1e-5));
        Assert.That(ex!.Message, Does.Contain("weight has dtype Float32").And.Contain("BFloat16"));
    }

    /// <summary>Without recorded gradients (evaluation) the fused kernel runs; its output agrees with the training path's.</summary>
    [Test]
    public void UnderNoGradTheOutputMatchesTheTrainingPath()
    {
        using var d = torch.NewDisposeScope();
        (Generator gen, ulong seed) = NewGenerator();
        (Sequential model, LayerNorm original) = LowPrecisionLayerNormTests.RandomLayerNormModel(gen, 768);
        Tensor x = TestTensors.Normal(gen, 4, 128, 768);
        Tensor reference = original.call(x);
        Functional.ApplyLowPrecisionLayerNorm(model, Precision.AmpBf16);

        Tensor training = TestTensors.CallUnder(Precision.AmpBf16, model, x);
        Tensor evaluation;
        using (torch.no_grad())
        {
            evaluation = TestTensors.CallUnder(Precision.AmpBf16, model, x);
        }

        Assert.That(training.requires_grad, Is.True, $"seed {seed}");
        Assert.That(evaluation.dtype, Is.EqualTo(ScalarType.BFloat16));
        TestTensors.AssertClose(evaluation, reference, ScalarType.BFloat16, 0.05, 0.01);
        Assert.That(TestTensors.AbsError(training, evaluation).Max, Is.LessThanOrEqualTo(0.05), $"training vs evaluation path, seed {seed}");
    }

    private static (Generator Gen, ulong Seed) NewGenerator()
    {
        Generator gen = TestTensors.NewGenerator();
        return (gen, unchecked((ulong)gen.initial_seed()));
    }

    private static Precision PrecisionFromName(string name) => name switch
    {
        "amp_bf16" => Precision.AmpBf16,
        "amp_fp16" => Precision.AmpFp16,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "expected amp_bf16 or amp_fp16"),
    };

    private static void IgnoreIfFp16Missing(Precision precision)
    {
        if (precision == Precision.AmpFp16 && TestTensors.MissingHalfKernels() is { } reason)
        {
            Assert.Ignore(reason);
        }
    }

    /// <summary>Gradients of Σ norm(x)·dy w.r.t. x, weight and bias, all in Float64.</summary>
    private static Tensor[] Float64Gradients(Tensor x, Tensor weight, Tensor bias, Tensor dy, Func<Tensor, Tensor, Tensor, Tensor> norm)
    {
        using var scope = torch.NewDisposeScope();
        Tensor x64 = x.to(ScalarType.Float64).requires_grad_(true);
        Tensor w64 = weight.detach().to(ScalarType.Float64).requires_grad_(true);
        Tensor b64 = bias.detach().to(ScalarType.Float64).requires_grad_(true);
        Tensor y = norm(x64, w64, b64);
        return torch.autograd.grad(new[] { y }, new[] { x64, w64, b64 }, new[] { dy.to(ScalarType.Float64) })
            .Select(g => g.MoveToOuterDisposeScope()).ToArray();
    }

    /// <summary>
    /// Gradients through the module under <paramref name="precision"/>'s autocast on CPU, with the output gradient
    /// in the output's dtype (as the next layer sends it); checks the dtypes on the way.
    /// </summary>
    private static Tensor[] LowPrecisionGradients(Precision precision, nn.Module<Tensor, Tensor> module, Tensor x, Tensor weight, Tensor bias, Tensor dy)
    {
        Tensor xLow = x.clone().requires_grad_(true);
        Tensor y;
        using (precision.Enter(DeviceType.CPU))
        {
            y = module.call(xLow);
        }

        ScalarType lowDtype = precision == Precision.AmpBf16 ? ScalarType.BFloat16 : ScalarType.Float16;
        Assert.That(y.dtype, Is.EqualTo(lowDtype), "the forward output stays in the autocast dtype");
        Tensor[] grads = torch.autograd.grad(new[] { y }, new[] { xLow, weight, bias }, new[] { dy.to(lowDtype) }).ToArray();
        Assert.That(grads.Select(g => g.dtype), Is.All.EqualTo(ScalarType.Float32), "input, weight and bias gradients in their own (Float32) dtypes");
        return grads;
    }

    private static void AssertGradients(Tensor[] low, Tensor[] reference, Precision precision, string what)
    {
        string[] names = { "input", "weight", "bias" };
        double[] errors = low.Zip(reference, RelativeMaxError).ToArray();
        string summary = $"{what}: relative max error input {errors[0]:P2}, weight {errors[1]:P2}, bias {errors[2]:P2}";
        TestContext.Out.WriteLine(summary);
        for (int i = 0; i < 3; i++)
        {
            double tolerance = i == 0 ? InputGradientTolerance : ParameterGradientTolerance;
            Assert.That(errors[i], Is.LessThanOrEqualTo(tolerance), $"{names[i]} gradient under {precision.ToComposerName()}; {summary}");
        }

        Assert.That(errors.Max(), Is.GreaterThan(0), $"the low-precision path must actually round; {summary}");
    }

    private static double RelativeMaxError(Tensor low, Tensor reference)
    {
        using var scope = torch.NewDisposeScope();
        return (low.to(ScalarType.Float64) - reference).abs().max().item<double>() / reference.abs().max().item<double>();
    }
}
