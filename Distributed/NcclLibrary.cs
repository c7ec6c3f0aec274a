using System.Runtime.InteropServices;

namespace ComposerSharp.Distributed;

/// <summary>The 128 bytes that name one NCCL communicator (<c>ncclUniqueId</c>, NCCL_UNIQUE_ID_BYTES = 128).</summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
internal unsafe struct NcclUniqueId
{
    public fixed byte Bytes[128];
}

/// <summary>
/// NCCL's C API (nccl.h), bound at run time: <c>ncclGetUniqueId</c>, <c>ncclCommInitRank</c>, <c>ncclAllReduce</c>,
/// <c>ncclBroadcast</c>, <c>ncclAllGather</c>, <c>ncclCommDestroy</c>, <c>ncclCommAbort</c>,
/// <c>ncclGetErrorString</c>. Looked up in <c>libnccl.so.2</c>, else in libtorch's <c>libtorch_cuda.so</c>, which
/// links NCCL statically in the CUDA builds (whether it exports the symbols depends on the build).
/// Written without a GPU on the development machine: only the load and argument errors are tested.
/// </summary>
internal sealed unsafe class NcclLibrary
{
    /// <summary>Library names tried in order.</summary>
    internal static readonly string[] Candidates = { "libnccl.so.2", "libnccl.so", "libtorch_cuda.so" };

    /// <summary>What to tell a user whose machine lacks NCCL.</summary>
    internal const string InstallHint =
        "Install NCCL (NVIDIA's package libnccl2, or the CUDA build of libtorch when it exports NCCL), or set dist_backend: mpi to communicate through the host.";

    private readonly delegate* unmanaged<NcclUniqueId*, int> _getUniqueId;
    private readonly delegate* unmanaged<IntPtr*, int, NcclUniqueId, int, int> _commInitRank;
    private readonly delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> _allReduce;
    private readonly delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int> _broadcast;
    private readonly delegate* unmanaged<IntPtr, IntPtr, nuint, int, IntPtr, IntPtr, int> _allGather;
    private readonly delegate* unmanaged<IntPtr, int> _commDestroy;
    private readonly delegate* unmanaged<IntPtr, int> _commAbort;
    private readonly delegate* unmanaged<int, IntPtr> _errorString;

    private NcclLibrary(IntPtr handle, string name)
    {
        Name = name;
        IntPtr F(string symbol) => NativeLibrary.GetExport(handle, symbol);
        _getUniqueId = (delegate* unmanaged<NcclUniqueId*, int>)F("ncclGetUniqueId");
        _commInitRank = (delegate* unmanaged<IntPtr*, int, NcclUniqueId, int, int>)F("ncclCommInitRank");
        _allReduce = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)F("ncclAllReduce");
        _broadcast = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, int, IntPtr, IntPtr, int>)F("ncclBroadcast");
        _allGather = (delegate* unmanaged<IntPtr, IntPtr, nuint, int, IntPtr, IntPtr, int>)F("ncclAllGather");
        _commDestroy = (delegate* unmanaged<IntPtr, int>)F("ncclCommDestroy");
        _commAbort = (delegate* unmanaged<IntPtr, int>)F("ncclCommAbort");
        _errorString = (delegate* unmanaged<int, IntPtr>)F("ncclGetErrorString");
    }

    /// <summary>The library file that was loaded.</summary>
    public string Name { get; }

    /// <summary>Loads NCCL from the first of <paramref name="candidates"/> that exports <c>ncclCommInitRank</c>.</summary>
    /// <exception cref="DllNotFoundException">None does; the message lists what was tried and what to install.</exception>
    public static NcclLibrary Load(IReadOnlyList<string>? candidates = null)
    {
        candidates ??= Candidates;
        var tried = new List<string>();
        foreach (string name in candidates)
        {
            if (!NativeLibrary.TryLoad(name, out IntPtr handle))
            {
                tried.Add($"{name} (not found)");
                continue;
            }

            if (!NativeLibrary.TryGetExport(handle, "ncclCommInitRank", out _))
            {
                tried.Add($"{name} (no NCCL symbols exported)");
                continue;
            }

            return new NcclLibrary(handle, name);
        }

        throw new DllNotFoundException($"The NCCL backend needs NCCL, but none of the libraries tried provides it: {string.Join(", ", tried)}. {InstallHint}");
    }

    /// <summary><c>ncclGetUniqueId</c>.</summary>
    public NcclUniqueId GetUniqueId()
    {
        NcclUniqueId id;
        Check(_getUniqueId(&id), "ncclGetUniqueId");
        return id;
    }

    /// <summary><c>ncclCommInitRank</c> on the current CUDA device.</summary>
    public IntPtr CommInitRank(int worldSize, NcclUniqueId id, int rank)
    {
        IntPtr comm;
        Check(_commInitRank(&comm, worldSize, id, rank), "ncclCommInitRank");
        return comm;
    }

    /// <summary><c>ncclAllReduce</c> on <paramref name="stream"/>.</summary>
    public void AllReduce(IntPtr send, IntPtr recv, ulong count, int type, int op, IntPtr comm, IntPtr stream) =>
        Check(_allReduce(send, recv, (nuint)count, type, op, comm, stream), "ncclAllReduce");

    /// <summary><c>ncclBroadcast</c> on <paramref name="stream"/>.</summary>
    public void Broadcast(IntPtr send, IntPtr recv, ulong count, int type, int root, IntPtr comm, IntPtr stream) =>
        Check(_broadcast(send, recv, (nuint)count, type, root, comm, stream), "ncclBroadcast");

    /// <summary><c>ncclAllGather</c> on <paramref name="stream"/>.</summary>
    public void AllGather(IntPtr send, IntPtr recv, ulong sendCount, int type, IntPtr comm, IntPtr stream) =>
        Check(_allGather(send, recv, (nuint)sendCount, type, comm, stream), "ncclAllGather");

    /// <summary><c>ncclCommDestroy</c>.</summary>
    public void CommDestroy(IntPtr comm) => Check(_commDestroy(comm), "ncclCommDestroy");

    /// <summary><c>ncclCommAbort</c>.</summary>
    public void CommAbort(IntPtr comm) => _commAbort(comm);

    private void Check(int result, string function)
    {
        if (result != 0)
        {
            throw new NcclException($"{function} failed: {Describe(result, Marshal.PtrToStringAnsi(_errorString(result)))}", result);
        }
    }

    /// <summary>A message for an <c>ncclResult_t</c>: NCCL's own text, with the enum name of nccl.h.</summary>
    internal static string Describe(int result, string? text)
    {
        string name = result switch
        {
            1 => "ncclUnhandledCudaError",
            2 => "ncclSystemError",
            3 => "ncclInternalError",
            4 => "ncclInvalidArgument",
            5 => "ncclInvalidUsage",
            6 => "ncclRemoteError",
            7 => "ncclInProgress",
            _ => $"ncclResult {result}",
        };
        return string.IsNullOrEmpty(text) ? name : $"{name}: {text}";
    }
}

/// <summary>An NCCL call returned an error.</summary>
public sealed class NcclException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What failed.</param>
    /// <param name="result">The <c>ncclResult_t</c>.</param>
    public NcclException(string message, int result)
        : base(message) => Result = result;

    /// <summary>The <c>ncclResult_t</c> returned.</summary>
    public int Result { get; }
}
