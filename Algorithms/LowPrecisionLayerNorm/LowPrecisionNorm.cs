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
#pragma warning disable CA1816 // On purpose: the original's finalizer would dispose the parameters it now shares (see above).
        GC.SuppressFinalize(original);
#pragma warning restore CA1816
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
