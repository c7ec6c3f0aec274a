using ComposerSharp.Algorithms.Kernels;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Base of the low-precision normalisation modules (<see cref="LPLayerNorm"/>, <see cref="LPGroupNorm"/>): holds the
/// original module's <c>weight</c> and <c>bias</c> <c>Parameter</c> objects, registered under the same names, so
/// state-dict keys, <c>requires_grad</c>, dtype and optimizer references are unchanged by the replacement.
/// </summary>
public abstract class LowPrecisionNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")]
    private Parameter? _weight;

    [ComponentName(Name = "bias")]
    private Parameter? _bias;

    /// <summary>
    /// Takes over <paramref name="weight"/> and <paramref name="bias"/> (each may be null) and the training flag of
    /// <paramref name="original"/>. The original keeps working but shares the parameters: do not dispose it
    /// (TorchSharp's <c>LayerNorm</c> and <c>GroupNorm</c> dispose their parameters in <c>Dispose</c>, even when called
    /// from the finalizer). For that reason the original's finalizer is suppressed here, so garbage-collecting it
    /// cannot free the shared parameters; its native module is still released by its own safe handle.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="original"/> is null.</exception>
    protected LowPrecisionNorm(string name, nn.Module original, Parameter? weight, Parameter? bias)
        : base(name)
    {
        ArgumentNullException.ThrowIfNull(original);
        _weight = weight;
        _bias = bias;
        if (_weight is not null)
        {
            register_parameter("weight", _weight);
        }

        if (_bias is not null)
        {
            register_parameter("bias", _bias);
        }

        train(original.training);
        GC.SuppressFinalize(original);
    }

    /// <summary>The scale (shape <c>normalized_shape</c> or <c>[C]</c>, dtype of the original, usually Float32); null when absent.</summary>
    /// <remarks>The setter exists because TorchSharp's <c>Module.to()</c> sets parameters through same-named properties; it disposes the previous parameter, as <c>LayerNorm.weight</c> does.</remarks>
    public Parameter? weight
    {
        get => _weight;
        set => SetParameter(ref _weight, value, "weight");
    }

    /// <summary>The shift (same shape as <see cref="weight"/>); null when absent.</summary>
    public Parameter? bias
    {
        get => _bias;
        set => SetParameter(ref _bias, value, "bias");
    }

    /// <summary>
    /// When autocast is enabled for <paramref name="input"/>'s device type, casts the input, weight and bias to that
    /// device's autocast dtype and runs <paramref name="norm"/> with autocast disabled for that device (Composer's
    /// <c>_cast_if_autocast_enabled</c> plus <c>torch.autocast(enabled=False)</c>, but checked for the input's device
    /// type rather than only CUDA); otherwise runs <paramref name="norm"/> on the tensors as they are. A tensor that
    /// already has the autocast dtype (e.g. the output of a previous low-precision norm) is used as it is, without a
    /// <c>.to()</c> call.
    /// </summary>
    /// <param name="input">The module's input.</param>
    /// <param name="norm">The normalisation outside autocast (on the tensors as they are).</param>
    /// <param name="autocastNorm">The normalisation under autocast, on the cast tensors; <paramref name="norm"/> when null.</param>
    protected Tensor RunLowPrecision(Tensor input, Func<Tensor, Tensor?, Tensor?, Tensor> norm, Func<Tensor, Tensor?, Tensor?, Tensor>? autocastNorm = null)
    {
        DeviceType deviceType = input.device_type;
        if (Autocast.ActiveDtype(deviceType) is not { } dtype)
        {
            return norm(input, _weight, _bias);
        }

        using var scope = torch.NewDisposeScope();
        Tensor x = CastIfNeeded(input, dtype);
        Tensor? w = _weight is null ? null : CastIfNeeded(_weight, dtype);
        Tensor? b = _bias is null ? null : CastIfNeeded(_bias, dtype);
        using (AutocastScope.Disabled(deviceType))
        {
            return (autocastNorm ?? norm)(x, w, b).MoveToOuterDisposeScope();
        }
    }

    private static Tensor CastIfNeeded(Tensor t, ScalarType dtype) => t.dtype == dtype ? t : t.to(dtype);

    private void SetParameter(ref Parameter? field, Parameter? value, string name)
    {
        if (ReferenceEquals(field, value))
        {
            return;
        }

        field?.Dispose();
        field = value?.DetachFromDisposeScope() as Parameter;
        ConditionallyRegisterParameter(name, field);
    }
}

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
/// <see cref="LowPrecisionLayerNormFunction.LayerNorm"/>: libtorch's CPU low-precision <c>layer_norm</c> backward
/// would reduce the weight and bias gradients over all rows in BFloat16/Float16 (7–13 % off at 4,096 rows with
/// BFloat16), so the affine part runs separately and those sums accumulate in Float32, as CUDA's kernel does. Without
/// recorded parameter gradients (<c>no_grad</c>, frozen or absent parameters) and on CUDA, libtorch's fused
/// <c>layer_norm</c> runs on the cast tensors, as in Composer.
/// </para>
/// <para>
/// Issue 16: with <see cref="LayerNormKernel.Fused"/> (the default when the CPU has AVX2), a contiguous Float32 or
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
            ? LowPrecisionLayerNormFunction.LayerNorm(x, normalized_shape, w, b, eps)
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

    /// <summary>libtorch's <c>layer_norm</c> (with the affine part split off while training, <see cref="LowPrecisionLayerNormFunction"/>).</summary>
    Libtorch,
}

/// <summary>
/// Group normalisation that runs in the autocast low-precision dtype (Composer's <c>LPGroupNorm</c>,
/// composer/algorithms/low_precision_groupnorm). Input <c>[N, C, *]</c> (at least 3 dimensions, as TorchSharp's
/// <c>GroupNorm</c> requires), output the same shape. Same dtype rule and parameter sharing as <see cref="LPLayerNorm"/>.
/// </summary>
/// <remarks>
/// Unlike LayerNorm, libtorch's fused CPU low-precision <c>group_norm</c> is kept for training: measured at
/// [8,320,32,32] with 32 groups, its weight and bias gradients are within 0.4 % (BFloat16) and 0.05 % (Float16) of
/// a float64 reference (<c>tests/Algorithms/LowPrecisionNormGradientTests.cs</c> guards it). The likely
/// reason, not read in libtorch's source: the per-(sample, channel) sums are Float32, and the weight and bias
/// gradients then add only N of them.
/// </remarks>
public sealed class LPGroupNorm : LowPrecisionNorm
{
    private readonly Func<Tensor, Tensor?, Tensor?, Tensor> _norm;

    /// <summary>Creates the low-precision module from <paramref name="original"/>, taking over its parameters.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="original"/> is null.</exception>
    public LPGroupNorm(GroupNorm original)
        : base(nameof(LPGroupNorm), original, original?.weight, original?.bias)
    {
        num_groups = original!.num_groups;
        eps = original.eps;
        affine = original.affine;
        _norm = (x, w, b) => F.group_norm(x, num_groups, w, b, eps);
    }

    /// <summary>Number of channel groups.</summary>
    public long num_groups { get; }

    /// <summary>The value added to the variance for numerical stability.</summary>
    public double eps { get; }

    /// <summary>Whether the original had learnable per-channel affine parameters.</summary>
    public bool affine { get; }

    /// <summary>Normalises <paramref name="input"/> of shape <c>[N, C, *]</c>.</summary>
    /// <exception cref="ArgumentException"><paramref name="input"/> has fewer than 3 dimensions.</exception>
    public override Tensor forward(Tensor input)
    {
        if (input.Dimensions < 3)
        {
            throw new ArgumentException($"Invalid number of dimensions for GroupNorm argument: {input.Dimensions}; expected at least 3 ([N, C, *]).", nameof(input));
        }

        return RunLowPrecision(input, _norm);
    }
}
