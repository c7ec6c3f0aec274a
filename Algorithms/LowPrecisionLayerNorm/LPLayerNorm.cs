using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Layer normalisation that runs in the autocast low-precision dtype (Composer's <c>LPLayerNorm</c>,
/// composer/algorithms/low_precision_layernorm). Input and output: any shape <c>[*, normalized_shape]</c>.
/// When autocast is enabled for the input's device type (CPU or CUDA), the input, weight and bias are cast to that
/// device's autocast dtype (BFloat16 or Float16) and <c>layer_norm</c> runs with autocast disabled, so the output has
/// the low-precision dtype; otherwise the result is bitwise that of the original <c>LayerNorm</c>.
/// </summary>
/// <remarks>
/// <para>
/// On CPU, when gradients are recorded for the weight or bias, the low-precision step is
/// <see cref="SplitAffineLayerNorm.Apply"/>: libtorch's CPU low-precision <c>layer_norm</c> backward
/// would reduce the weight and bias gradients over all rows in BFloat16/Float16 (7–13 % off at 4,096 rows with
/// BFloat16), so the affine part runs separately and those sums accumulate in Float32, as CUDA's kernel does. Without
/// recorded parameter gradients (<c>no_grad</c>, frozen or absent parameters) and on CUDA, libtorch's fused
/// <c>layer_norm</c> runs on the cast tensors, as in Composer.
/// </para>
/// <para>
/// The fused CPU kernel: with <see cref="LayerNormKernel.Fused"/> (the default when the CPU has AVX2), a contiguous Float32 or
/// BFloat16 CPU input under BFloat16 autocast with Float32 (or absent) weight and bias goes to
/// <see cref="FusedLayerNorm"/> instead: one pass that reads the input once and writes BFloat16 once, Float32
/// weight and bias used as they are, their gradients reduced in Float32 in a fixed order. Float16 autocast,
/// non-contiguous inputs and other dtypes keep the path above; <see cref="LayerNormKernel.Libtorch"/> keeps it always
/// (for comparison). CUDA always uses libtorch's kernel.
/// </para>
/// <para>
/// Built from a TorchSharp <c>LayerNorm</c>, it keeps the normalized shape, eps and the original <c>Parameter</c>
/// objects (see <see cref="LowPrecisionNorm"/>). Absent weight (<c>elementwise_affine: false</c>) or bias
/// (<c>bias: false</c>) stay absent.
/// </para>
/// </remarks>
public sealed class LPLayerNorm : LowPrecisionNorm
{
    private readonly Func<Tensor, Tensor?, Tensor?, Tensor> _norm;
    private readonly Func<Tensor, Tensor?, Tensor?, Tensor> _autocastNorm;

    private readonly FusedLayerNormOptions _fusedOptions;

    /// <summary>Creates the low-precision module from <paramref name="original"/>, taking over its parameters.</summary>
    /// <param name="original">The LayerNorm replaced.</param>
    /// <param name="kernel">Which CPU kernel runs under BFloat16 autocast; <see cref="LayerNormKernel.Default"/> picks fused when the CPU has AVX2.</param>
    /// <param name="fusedOptions">Options of the fused kernel (SIMD path, workers); null for the defaults.</param>
    /// <exception cref="ArgumentNullException"><paramref name="original"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="kernel"/> is not a defined value.</exception>
    public LPLayerNorm(LayerNorm original, LayerNormKernel kernel = LayerNormKernel.Default, FusedLayerNormOptions? fusedOptions = null)
        : base(nameof(LPLayerNorm), original, original?.weight, original?.bias)
    {
        Kernel = kernel switch
        {
            LayerNormKernel.Default => System.Runtime.Intrinsics.X86.Avx2.IsSupported ? LayerNormKernel.Fused : LayerNormKernel.Libtorch,
            LayerNormKernel.Fused or LayerNormKernel.Libtorch => kernel,
            _ => throw new ArgumentOutOfRangeException(nameof(kernel), kernel, "expected Default, Fused or Libtorch"),
        };
        _fusedOptions = fusedOptions ?? new FusedLayerNormOptions();
        normalized_shape = (long[])original!.normalized_shape.Clone();
        eps = original.eps;
        elementwise_affine = original.elementwise_affine;
        _norm = (x, w, b) => F.layer_norm(x, normalized_shape, w, b, eps);
        _autocastNorm = (x, w, b) => RecordsParameterGradientsOnCpu(x, w, b)
            ? SplitAffineLayerNorm.Apply(x, normalized_shape, w, b, eps)
            : F.layer_norm(x, normalized_shape, w, b, eps);
    }

    /// <summary>The trailing shape normalised over, as in <c>LayerNorm</c>.</summary>
    public long[] normalized_shape { get; }

    /// <summary>The value added to the variance for numerical stability.</summary>
    public double eps { get; }

    /// <summary>Whether the original had learnable affine parameters.</summary>
    public bool elementwise_affine { get; }

    /// <summary>The CPU kernel under BFloat16 autocast: <see cref="LayerNormKernel.Fused"/> or <see cref="LayerNormKernel.Libtorch"/> (never Default).</summary>
    public LayerNormKernel Kernel { get; }

    /// <summary>Normalises <paramref name="input"/> (shape <c>[*, normalized_shape]</c>); see the class summary for the dtype rule.</summary>
    public override Tensor forward(Tensor input)
    {
        if (Kernel == LayerNormKernel.Fused && input.device_type == DeviceType.CPU && Autocast.ActiveDtype(DeviceType.CPU) == ScalarType.BFloat16
            && FusedLayerNorm.Unsupported(input, normalized_shape, weight, bias, ScalarType.BFloat16) is null)
        {
            return FusedLayerNorm.Apply(input, normalized_shape, weight, bias, eps, _fusedOptions);
        }

        return RunLowPrecision(input, _norm, _autocastNorm);
    }

    private static bool RecordsParameterGradientsOnCpu(Tensor x, Tensor? w, Tensor? b) =>
        x.device_type == DeviceType.CPU && torch.is_grad_enabled() && (w is { requires_grad: true } || b is { requires_grad: true });
}

/// <summary>Which CPU kernel <see cref="LPLayerNorm"/> runs under BFloat16 autocast: the fused C# kernel or libtorch's.</summary>
public enum LayerNormKernel
{
    /// <summary><see cref="Fused"/> when the CPU has AVX2, else <see cref="Libtorch"/>.</summary>
    Default,

    /// <summary>The C# fused kernel, <see cref="FusedLayerNorm"/>.</summary>
    Fused,

    /// <summary>libtorch's <c>layer_norm</c> (with the affine part split off while training, <see cref="SplitAffineLayerNorm"/>).</summary>
    Libtorch,
}
