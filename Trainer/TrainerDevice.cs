using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>Device selection and precision checks done at Trainer construction (Composer's <c>get_device</c> and <c>_validate_precision</c>).</summary>
public static class TrainerDevice
{
    /// <summary>
    /// The device named by <paramref name="spec"/>: <c>cpu</c>; <c>cuda</c>, <c>cuda:N</c> or <c>gpu</c>; or
    /// <c>auto</c>, which is CUDA when TorchSharp reports a CUDA device (<c>torch.cuda.is_available()</c>) and CPU
    /// otherwise.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="spec"/> is not one of the names above.</exception>
    /// <exception cref="InvalidOperationException">CUDA was requested and TorchSharp reports none.</exception>
    public static Device Resolve(string spec)
    {
        string s = Normalize(spec);
        switch (s)
        {
            case "auto":
                return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
            case "cpu":
                return torch.CPU;
        }

        if (!torch.cuda.is_available())
        {
            throw new InvalidOperationException(
                $"Device '{spec}' was requested, but TorchSharp reports no CUDA device (torch.cuda.is_available() is false). " +
                "Either this build uses the TorchSharp-cpu backend (build with -p:TorchBackend=cuda-linux or cuda-windows) or no GPU/driver is visible. " +
                "Use device \"cpu\", or \"auto\" to take CUDA only when it is present.");
        }

        return torch.device(s);
    }

    /// <summary>
    /// The canonical form of a device name without looking for the device: <c>auto</c>, <c>cpu</c>, <c>cuda</c> or
    /// <c>cuda:N</c> (<c>gpu</c> means <c>cuda</c>; case and surrounding spaces are ignored). <see cref="Resolve"/>
    /// and the CLI both check names through it.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="spec"/> is null.</exception>
    /// <param name="spec">The device name.</param>
    /// <param name="paramName">The name reported as <see cref="ArgumentException.ParamName"/> (the caller's setting), or null.</param>
    /// <exception cref="ArgumentException"><paramref name="spec"/> is not one of those names; the message quotes it and lists them.</exception>
    public static string Normalize(string spec, string? paramName = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        string s = spec.Trim().ToLowerInvariant();
        if (s == "gpu")
        {
            return "cuda";
        }

        if (s is "auto" or "cpu" or "cuda" || (s.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(s.AsSpan(5), out int index) && index >= 0))
        {
            return s;
        }

        throw new ArgumentException($"Unknown device '{spec}'; expected \"cpu\", \"cuda\", \"cuda:N\", \"gpu\" or \"auto\".", paramName);
    }

    /// <summary>
    /// Checks that <paramref name="precision"/> can run on <paramref name="device"/>: the amp precisions need
    /// libtorch's autocast entry points and a cpu or cuda device, and each is probed by a small matmul under autocast on the device (no RNG
    /// is consumed), so a device without Float16 or BFloat16 kernels fails here instead of mid-training.
    /// </summary>
    /// <exception cref="NotSupportedException">The precision cannot run on this device; the message says why and what to use instead.</exception>
    public static void CheckPrecision(Precision precision, Device device)
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
