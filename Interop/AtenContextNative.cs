using System.Runtime.InteropServices;

namespace ComposerSharp.Interop;

/// <summary>
/// libtorch's global <c>at::Context</c> switches for determinism (aten/src/ATen/Context.h), which TorchSharp 0.107
/// does not expose: member functions called with the context from <c>at::globalContext()</c> as <c>this</c>.
/// Itanium C++ ABI names (Linux, macOS), seen working with libtorch_cpu.so 2.10; null where they do not resolve.
/// </summary>
internal sealed unsafe class AtenContextNative
{
    internal static readonly Lazy<AtenContextNative?> Instance = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly IntPtr _context;
    private readonly delegate* unmanaged<IntPtr, int, int, void> _setDeterministicAlgorithms;
    private readonly delegate* unmanaged<IntPtr, byte> _deterministicAlgorithms;
    private readonly delegate* unmanaged<IntPtr, int, void> _setDeterministicCudnn;
    private readonly delegate* unmanaged<IntPtr, int, void> _setBenchmarkCudnn;

    private AtenContextNative(IntPtr context, IntPtr[] functions)
    {
        _context = context;
        _setDeterministicAlgorithms = (delegate* unmanaged<IntPtr, int, int, void>)functions[0];
        _deterministicAlgorithms = (delegate* unmanaged<IntPtr, byte>)functions[1];
        _setDeterministicCudnn = (delegate* unmanaged<IntPtr, int, void>)functions[2];
        _setBenchmarkCudnn = (delegate* unmanaged<IntPtr, int, void>)functions[3];
    }

    // C++ bool arguments are passed as zero-extended ints, which both GCC- and Clang-built callees accept.
    internal void SetDeterministicAlgorithms(bool on) => _setDeterministicAlgorithms(_context, on ? 1 : 0, 0);

    internal bool DeterministicAlgorithms() => _deterministicAlgorithms(_context) != 0;

    internal void SetDeterministicCudnn(bool on) => _setDeterministicCudnn(_context, on ? 1 : 0);

    internal void SetBenchmarkCudnn(bool on) => _setBenchmarkCudnn(_context, on ? 1 : 0);

    private static readonly string[] Names =
    {
        "_ZN2at7Context26setDeterministicAlgorithmsEbb",
        "_ZNK2at7Context23deterministicAlgorithmsEv",
        "_ZN2at7Context21setDeterministicCuDNNEb",
        "_ZN2at7Context17setBenchmarkCuDNNEb",
    };

    private static AtenContextNative? Load()
    {
        if (OperatingSystem.IsWindows())
        {
            // The MSVC names of these member functions were not verified (no Windows machine here).
            return null;
        }

        IntPtr handle = TorchCpuLibrary.Handle();
        if (!NativeLibrary.TryGetExport(handle, "_ZN2at13globalContextEv", out IntPtr globalContext))
        {
            return null;
        }

        var functions = new IntPtr[Names.Length];
        for (int i = 0; i < Names.Length; i++)
        {
            if (!NativeLibrary.TryGetExport(handle, Names[i], out functions[i]))
            {
                return null;
            }
        }

        IntPtr context = ((delegate* unmanaged<IntPtr>)globalContext)();
        return new AtenContextNative(context, functions);
    }
}
