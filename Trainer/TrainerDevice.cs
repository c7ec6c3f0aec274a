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
}
