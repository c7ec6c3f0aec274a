using System.Runtime.InteropServices;
using TorchSharp;

namespace ComposerSharp.Interop;

/// <summary>Function pointers to libtorch's <c>at::autocast</c> functions, resolved once per process.</summary>
internal sealed unsafe class AutocastNative
{
    // Itanium C++ ABI names (Linux, macOS), seen working with libtorch_cpu.so 2.10 on Linux.
    internal static readonly string[] ItaniumNames =
    {
        "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb",
        "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE",
        "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE",
        "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE",
        "_ZN2at8autocast17increment_nestingEv",
        "_ZN2at8autocast17decrement_nestingEv",
        "_ZN2at8autocast11clear_cacheEv",
    };

    // MSVC names for the same functions on Windows. Written from MSVC's mangling rules; they could not be tested
    // here (no Windows machine): if they do not resolve, amp precisions fail with a clear error and fp32 works.
    internal static readonly string[] MsvcNames =
    {
        "?set_autocast_enabled@autocast@at@@YAXW4DeviceType@c10@@_N@Z",
        "?is_autocast_enabled@autocast@at@@YA_NW4DeviceType@c10@@@Z",
        "?set_autocast_dtype@autocast@at@@YAXW4DeviceType@c10@@W4ScalarType@4@@Z",
        "?get_autocast_dtype@autocast@at@@YA?AW4ScalarType@c10@@W4DeviceType@3@@Z",
        "?increment_nesting@autocast@at@@YAHXZ",
        "?decrement_nesting@autocast@at@@YAHXZ",
        "?clear_cache@autocast@at@@YAXXZ",
    };

    internal static readonly Lazy<AutocastNative> Instance = new(() => new AutocastNative(), LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly delegate* unmanaged<sbyte, byte, void> _setEnabled;
    private readonly delegate* unmanaged<sbyte, byte> _isEnabled;
    private readonly delegate* unmanaged<sbyte, sbyte, void> _setDtype;
    private readonly delegate* unmanaged<sbyte, sbyte> _getDtype;
    private readonly delegate* unmanaged<int> _incrementNesting;
    private readonly delegate* unmanaged<int> _decrementNesting;
    private readonly delegate* unmanaged<void> _clearCache;

    private AutocastNative()
    {
        string library = TorchCpuLibrary.FileName;
        if (TorchCpuLibrary.TryHandle() is not { } handle)
        {
            Error = $"libtorch's autocast is unavailable on {RuntimeInformation.OSDescription} ({RuntimeInformation.ProcessArchitecture}): {library} could not be found next to TorchSharp.";
            return;
        }

        string[] names = OperatingSystem.IsWindows() ? MsvcNames : ItaniumNames;
        var pointers = new IntPtr[names.Length];
        for (int i = 0; i < names.Length; i++)
        {
            if (!NativeLibrary.TryGetExport(handle, names[i], out pointers[i]))
            {
                Error = $"libtorch's autocast is unavailable on {RuntimeInformation.OSDescription} ({RuntimeInformation.ProcessArchitecture}): {library} does not export {names[i]}. " +
                        "Use precision fp32 on this platform.";
                return;
            }
        }

        _setEnabled = (delegate* unmanaged<sbyte, byte, void>)pointers[0];
        _isEnabled = (delegate* unmanaged<sbyte, byte>)pointers[1];
        _setDtype = (delegate* unmanaged<sbyte, sbyte, void>)pointers[2];
        _getDtype = (delegate* unmanaged<sbyte, sbyte>)pointers[3];
        _incrementNesting = (delegate* unmanaged<int>)pointers[4];
        _decrementNesting = (delegate* unmanaged<int>)pointers[5];
        _clearCache = (delegate* unmanaged<void>)pointers[6];
    }

    /// <summary>Why the entry points could not be resolved, or null when they were.</summary>
    internal string? Error { get; }

    internal static AutocastNative Get()
    {
        AutocastNative native = Instance.Value;
        if (native.Error is not null)
        {
            throw new PlatformNotSupportedException(native.Error);
        }

        return native;
    }

    // c10::DeviceType and c10::ScalarType are int8_t enums whose values TorchSharp's enums share (CPU 0, CUDA 1; Half 5, BFloat16 15).
    internal void SetEnabled(DeviceType device, bool enabled) => _setEnabled((sbyte)device, enabled ? (byte)1 : (byte)0);

    internal bool IsEnabled(DeviceType device) => _isEnabled((sbyte)device) != 0;

    internal void SetDtype(DeviceType device, torch.ScalarType dtype) => _setDtype((sbyte)device, (sbyte)dtype);

    internal torch.ScalarType GetDtype(DeviceType device) => (torch.ScalarType)_getDtype((sbyte)device);

    internal int IncrementNesting() => _incrementNesting();

    internal int DecrementNesting() => _decrementNesting();

    internal void ClearCache() => _clearCache();
}
