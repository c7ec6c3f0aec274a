using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;

namespace ComposerSharp.Interop;

/// <summary>The handle of libtorch's <c>torch_cpu</c> library, loaded by TorchSharp.</summary>
internal static class TorchCpuLibrary
{
    /// <summary>The library's file name on this platform.</summary>
    internal static string FileName =>
        OperatingSystem.IsWindows() ? "torch_cpu.dll" : OperatingSystem.IsMacOS() ? "libtorch_cpu.dylib" : "libtorch_cpu.so";

    /// <summary>Loads TorchSharp's natives (which makes torch_cpu resident) and returns torch_cpu's handle.</summary>
    /// <exception cref="DllNotFoundException">torch_cpu cannot be found next to TorchSharp.</exception>
    internal static IntPtr Handle() =>
        TryHandle() ?? throw new DllNotFoundException($"{FileName} could not be found next to TorchSharp on {RuntimeInformation.OSDescription}.");

    /// <summary>Loads TorchSharp's natives and returns torch_cpu's handle, or null when it cannot be found.</summary>
    internal static IntPtr? TryHandle()
    {
        torch.InitializeDeviceType(DeviceType.CPU);
        Assembly torchAssembly = typeof(torch).Assembly;
        return NativeLibrary.TryLoad(FileName, torchAssembly, null, out IntPtr handle) || NativeLibrary.TryLoad(FileName, out handle)
            ? handle
            : null;
    }
}
