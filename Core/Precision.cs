using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// Numerical precision of training, named as in Composer's <c>composer.core.Precision</c>
/// (composer/core/precision.py): <c>fp32</c>, <c>amp_bf16</c>, <c>amp_fp16</c>.
/// Under the <c>amp_*</c> precisions the forward pass and loss run inside an <see cref="AutocastScope"/>
/// (PyTorch's automatic mixed precision); parameters, gradients and optimizer state stay Float32.
/// </summary>
public enum Precision
{
    /// <summary><c>fp32</c>: everything in Float32; no autocast.</summary>
    Fp32,
    /// <summary><c>amp_bf16</c>: autocast to BFloat16; no loss scaling needed.</summary>
    AmpBf16,
    /// <summary><c>amp_fp16</c>: autocast to Float16 with dynamic loss scaling (a gradient scaler).</summary>
    AmpFp16,
}

/// <summary>Parsing and properties of <see cref="Precision"/>.</summary>
public static class PrecisionExtensions
{
    private static readonly string[] Names = { "fp32", "amp_bf16", "amp_fp16" };

    /// <summary>Composer's name: <c>fp32</c>, <c>amp_bf16</c> or <c>amp_fp16</c>.</summary>
    public static string ToComposerName(this Precision p) => Names[(int)p];

    /// <summary>Parses <c>fp32</c>, <c>amp_bf16</c>, <c>amp_fp16</c> (case-insensitive; the C# names <c>AmpBf16</c> are accepted too).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="text"/> is null.</exception>
    /// <exception cref="FormatException">Not a precision; the message quotes the input and lists the accepted names.</exception>
    public static Precision Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string key = text.Trim();
        foreach (Precision p in Enum.GetValues<Precision>())
        {
            if (string.Equals(Names[(int)p], key, StringComparison.OrdinalIgnoreCase) ||
                string.Equals(p.ToString(), key, StringComparison.OrdinalIgnoreCase))
            {
                return p;
            }
        }

        if (string.Equals(key, "amp_fp8", StringComparison.OrdinalIgnoreCase))
        {
            throw new FormatException($"'{text}' (Composer's TransformerEngine FP8 precision) is not supported; expected one of: {string.Join(", ", Names)}.");
        }

        throw new FormatException($"'{text}' is not a precision; expected one of: {string.Join(", ", Names)}.");
    }

    /// <summary>True for the autocast precisions (<c>amp_bf16</c>, <c>amp_fp16</c>).</summary>
    public static bool IsAutocast(this Precision p) => p != Precision.Fp32;

    /// <summary>The autocast (low-precision) dtype: BFloat16 for <c>amp_bf16</c>, Float16 for <c>amp_fp16</c>, null for <c>fp32</c>.</summary>
    public static torch.ScalarType? AutocastDtype(this Precision p) => p switch
    {
        Precision.AmpBf16 => torch.ScalarType.BFloat16,
        Precision.AmpFp16 => torch.ScalarType.Float16,
        _ => null,
    };

    /// <summary>
    /// Opens the autocast scope for this precision on <paramref name="deviceType"/>: an enabled scope with
    /// <see cref="AutocastDtype"/> for the amp precisions, and a disabled one (plain Float32) for <c>fp32</c>
    /// (Composer's <c>get_precision_context</c>). Dispose it on the same thread.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">An amp precision on a platform whose libtorch autocast entry points cannot be found.</exception>
    public static AutocastScope Enter(this Precision p, DeviceType deviceType) =>
        p.IsAutocast() ? new AutocastScope(deviceType, p.AutocastDtype()!.Value, enabled: true) : AutocastScope.Disabled(deviceType);

    /// <summary>
    /// Checks that <paramref name="precision"/> can run on <paramref name="device"/>: the amp precisions need
    /// libtorch's autocast entry points and a cpu or cuda device, and each is probed by a small matmul under autocast on the device (no RNG
    /// is consumed), so a device without Float16 or BFloat16 kernels fails here instead of mid-training.
    /// </summary>
    /// <exception cref="NotSupportedException">The precision cannot run on this device; the message says why and what to use instead.</exception>
    public static void CheckSupported(this Precision precision, Device device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (!precision.IsAutocast())
        {
            return;
        }

        if (!Autocast.IsAvailable)
        {
            throw new NotSupportedException(
                $"Precision {precision.ToComposerName()} needs libtorch's autocast, which is unavailable on this platform; use fp32.");
        }

        ScalarType dtype = precision.AutocastDtype()!.Value;
        if (device.type is not (DeviceType.CPU or DeviceType.CUDA))
        {
            // libtorch aborts the process (an uncatchable c10::Error) when asked about autocast on other device types.
            throw new NotSupportedException(
                $"Precision {precision.ToComposerName()} needs {dtype} autocast kernels on device '{device}', but autocast exists only for cpu and cuda devices. Use fp32.");
        }

        try
        {
            using var scope = torch.NewDisposeScope();
            using (precision.Enter(device.type))
            {
                Tensor a = torch.ones(4, 4, device: device);
                Tensor product = a.matmul(a);
                if (product.dtype != dtype)
                {
                    throw new NotSupportedException($"autocast produced {product.dtype} instead of {dtype}");
                }

                _ = product.to(ScalarType.Float32).sum().item<float>();
            }
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            string alternative = precision == Precision.AmpFp16 ? "amp_bf16 or fp32" : "fp32";
            throw new NotSupportedException(
                $"Precision {precision.ToComposerName()} needs {dtype} kernels on device '{device}', and none usable were found ({ex.Message}). Use {alternative}.", ex);
        }
    }
}
