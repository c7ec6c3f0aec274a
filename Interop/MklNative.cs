using System.Runtime.InteropServices;

namespace ComposerSharp.Interop;

/// <summary>
/// MKL's CNR service functions exported by libtorch's bundled MKL (<c>mkl_serv_cbwr_get</c>/<c>_set</c>, the
/// functions behind MKL's documented <c>mkl_cbwr_get</c>/<c>mkl_cbwr_set</c>), or null when libtorch has no MKL.
/// </summary>
internal sealed unsafe class MklNative
{
    // Values of mkl_cbwr.h.
    internal const int BranchQuery = 1;
    internal const int BranchOff = 1;
    internal const int BranchAuto = 2;
    internal const int ErrModeChangeFailure = -8;

    internal static readonly Lazy<MklNative?> Instance = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly delegate* unmanaged<int, int> _get;
    private readonly delegate* unmanaged<int, int> _set;

    private MklNative(IntPtr get, IntPtr set)
    {
        _get = (delegate* unmanaged<int, int>)get;
        _set = (delegate* unmanaged<int, int>)set;
    }

    internal int GetBranch() => _get(BranchQuery);

    internal int SetBranch(int branch) => _set(branch);

    internal static string BranchName(int branch) => branch switch
    {
        1 => "OFF",
        2 => "AUTO",
        3 => "COMPATIBLE",
        4 => "SSE2",
        6 => "SSSE3",
        7 => "SSE4_1",
        8 => "SSE4_2",
        9 => "AVX",
        10 => "AVX2",
        12 => "AVX512",
        14 => "AVX512_E1",
        _ when (branch & 0x10000) != 0 => BranchName(branch & ~0x10000) + ",STRICT",
        _ => $"branch {branch}",
    };

    private static MklNative? Load()
    {
        IntPtr handle = TorchCpuLibrary.Handle();
        return NativeLibrary.TryGetExport(handle, "mkl_serv_cbwr_get", out IntPtr get) && NativeLibrary.TryGetExport(handle, "mkl_serv_cbwr_set", out IntPtr set)
            ? new MklNative(get, set)
            : null;
    }
}
