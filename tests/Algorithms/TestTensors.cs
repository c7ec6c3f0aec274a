using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using NUnit.Framework;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Algorithms;

/// <summary>Fresh random inputs for the algorithm tests: a new seed per test, printed so a failure can be replayed.</summary>
internal static class TestTensors
{
    public static Generator NewGenerator()
    {
        ulong seed = (ulong)Random.Shared.NextInt64(1, long.MaxValue);
        TestContext.Out.WriteLine($"random seed: {seed}");
        torch.manual_seed((long)(seed % int.MaxValue)); // module initialisation uses the global generator
        return new Generator(seed);
    }

    /// <summary>U(lo, hi) Float32.</summary>
    public static Tensor Uniform(Generator gen, double lo, double hi, params long[] shape) =>
        torch.rand(shape, generator: gen) * (hi - lo) + lo;

    public static Tensor Normal(Generator gen, params long[] shape) => torch.randn(shape, generator: gen);

    /// <summary>Sets a LayerNorm's (or GroupNorm's) affine parameters to weight ~ U(0.5, 1.5), bias ~ U(-0.1, 0.1).</summary>
    public static void RandomiseAffine(Generator gen, Parameter? weight, Parameter? bias)
    {
        using var noGrad = torch.no_grad();
        if (weight is not null)
        {
            weight.copy_(Uniform(gen, 0.5, 1.5, weight.shape));
        }

        if (bias is not null)
        {
            bias.copy_(Uniform(gen, -0.1, 0.1, bias.shape));
        }
    }

    /// <summary>Whether this CPU build has Float16 layer_norm / group_norm kernels.</summary>
    public static string? MissingHalfKernels()
    {
        try
        {
            using var d = torch.NewDisposeScope();
            var x = torch.randn(2, 4, 3).half();
            nn.functional.layer_norm(x, new long[] { 3 }, torch.ones(3).half(), torch.zeros(3).half());
            nn.functional.group_norm(x, 2, torch.ones(4).half(), torch.zeros(4).half());
            return null;
        }
        catch (Exception ex)
        {
            return $"this CPU libtorch has no Float16 layer_norm/group_norm kernel: {ex.Message}";
        }
    }

    /// <summary>Same dtype, shape and elements (libtorch's at::equal).</summary>
    public static bool BitwiseEqual(Tensor a, Tensor b) => a.dtype == b.dtype && a.Equals(b);

    /// <summary>Asserts <see cref="BitwiseEqual"/>; a failure names the dtypes, shapes and the first differing values.</summary>
    public static void AssertBitwiseEqual(Tensor actual, Tensor expected, string? message = null)
    {
        if (!BitwiseEqual(actual, expected))
        {
            Assert.Fail($"{message}{(message is null ? "" : ": ")}not bitwise equal: {TensorDifference.Describe(actual, expected)}");
        }
    }

    /// <summary>Calls <paramref name="model"/> on <paramref name="x"/> inside <paramref name="precision"/>'s CPU autocast scope.</summary>
    public static Tensor CallUnder(Precision precision, nn.Module<Tensor, Tensor> model, Tensor x)
    {
        using (precision.Enter(DeviceType.CPU))
        {
            return model.call(x);
        }
    }

    /// <summary>Asserts the dtype of <paramref name="low"/> and its max (and mean) absolute error against <paramref name="reference"/>.</summary>
    public static void AssertClose(Tensor low, Tensor reference, ScalarType dtype, double maxError, double? meanError = null)
    {
        Assert.That(low.dtype, Is.EqualTo(dtype));
        (double max, double mean) = AbsError(low, reference);
        TestContext.Out.WriteLine($"{dtype} vs Float32 reference: max abs err {max:E3}, mean {mean:E3}");
        Assert.That(max, Is.LessThanOrEqualTo(maxError), "max absolute error");
        Assert.That(max, Is.GreaterThan(0), "the low-precision path must actually round");
        if (meanError is { } limit)
        {
            Assert.That(mean, Is.LessThanOrEqualTo(limit), "mean absolute error");
        }
    }

    /// <summary>max |a - b| and mean |a - b|, computed in Float64.</summary>
    public static (double Max, double Mean) AbsError(Tensor a, Tensor b)
    {
        using var d = torch.NewDisposeScope();
        Tensor err = (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs();
        return (err.max().item<double>(), err.mean().item<double>());
    }
}
