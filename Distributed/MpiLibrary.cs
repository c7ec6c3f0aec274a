using System.Runtime.InteropServices;

namespace ComposerSharp.Distributed;

/// <summary>
/// Open MPI's C API (<c>libmpi.so.40</c>) bound at run time through <see cref="NativeLibrary"/>, with no compiled
/// glue. In Open MPI the handles are the addresses of exported objects (<c>MPI_COMM_WORLD</c> is
/// <c>&amp;ompi_mpi_comm_world</c>, <c>MPI_FLOAT</c> is <c>&amp;ompi_mpi_float</c>, <c>MPI_SUM</c> is
/// <c>&amp;ompi_mpi_op_sum</c>) and <c>MPI_IN_PLACE</c> is the address 1 (mpi.h of Open MPI 4.1). MPICH and its
/// derivatives use integer handles and are not supported.
/// </summary>
internal sealed unsafe class MpiLibrary
{
    /// <summary>Library names tried in order.</summary>
    internal static readonly string[] Candidates = { "libmpi.so.40", "libmpi.so" };

    /// <summary>What to tell a user whose machine lacks Open MPI.</summary>
    internal const string InstallHint =
        "Install Open MPI (Debian/Ubuntu: 'apt-get install openmpi-bin', which brings libopenmpi3 and mpirun; RHEL: 'dnf install openmpi'), " +
        "or run a single process (world size 1), which needs no MPI.";

    /// <summary><c>MPI_THREAD_MULTIPLE</c> in Open MPI's mpi.h.</summary>
    internal const int ThreadMultiple = 3;

    private readonly delegate* unmanaged<int*, int> _initialized;
    private readonly delegate* unmanaged<int*, int> _finalized;
    private readonly delegate* unmanaged<IntPtr, IntPtr, int, int*, int> _initThread;
    private readonly delegate* unmanaged<int> _finalize;
    private readonly delegate* unmanaged<IntPtr, int*, int> _commRank;
    private readonly delegate* unmanaged<IntPtr, int*, int> _commSize;
    private readonly delegate* unmanaged<IntPtr, IntPtr*, int> _commDup;
    private readonly delegate* unmanaged<IntPtr*, int> _commFree;
    private readonly delegate* unmanaged<IntPtr, IntPtr, int> _commSetErrhandler;
    private readonly delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, int> _allreduce;
    private readonly delegate* unmanaged<IntPtr, int, IntPtr, int, IntPtr, int> _bcast;
    private readonly delegate* unmanaged<IntPtr, int, IntPtr, IntPtr, int, IntPtr, IntPtr, int> _allgather;
    private readonly delegate* unmanaged<IntPtr, int> _barrier;
    private readonly delegate* unmanaged<IntPtr, int, int> _abort;
    private readonly delegate* unmanaged<int, byte*, int*, int> _errorString;
    private readonly delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, IntPtr*, int> _iallreduce;
    private readonly delegate* unmanaged<IntPtr*, int*, IntPtr, int> _test;
    private readonly delegate* unmanaged<IntPtr*, IntPtr, int> _wait;
    private readonly delegate* unmanaged<int*, int> _queryThread;

    private MpiLibrary(IntPtr handle, string name)
    {
        Handle = handle;
        Name = name;
        IntPtr F(string symbol) => NativeLibrary.GetExport(handle, symbol);
        _initialized = (delegate* unmanaged<int*, int>)F("MPI_Initialized");
        _finalized = (delegate* unmanaged<int*, int>)F("MPI_Finalized");
        _initThread = (delegate* unmanaged<IntPtr, IntPtr, int, int*, int>)F("MPI_Init_thread");
        _finalize = (delegate* unmanaged<int>)F("MPI_Finalize");
        _commRank = (delegate* unmanaged<IntPtr, int*, int>)F("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<IntPtr, int*, int>)F("MPI_Comm_size");
        _commDup = (delegate* unmanaged<IntPtr, IntPtr*, int>)F("MPI_Comm_dup");
        _commFree = (delegate* unmanaged<IntPtr*, int>)F("MPI_Comm_free");
        _commSetErrhandler = (delegate* unmanaged<IntPtr, IntPtr, int>)F("MPI_Comm_set_errhandler");
        _allreduce = (delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, int>)F("MPI_Allreduce");
        _bcast = (delegate* unmanaged<IntPtr, int, IntPtr, int, IntPtr, int>)F("MPI_Bcast");
        _allgather = (delegate* unmanaged<IntPtr, int, IntPtr, IntPtr, int, IntPtr, IntPtr, int>)F("MPI_Allgather");
        _barrier = (delegate* unmanaged<IntPtr, int>)F("MPI_Barrier");
        _abort = (delegate* unmanaged<IntPtr, int, int>)F("MPI_Abort");
        _errorString = (delegate* unmanaged<int, byte*, int*, int>)F("MPI_Error_string");
        _iallreduce = (delegate* unmanaged<IntPtr, IntPtr, int, IntPtr, IntPtr, IntPtr, IntPtr*, int>)F("MPI_Iallreduce");
        _test = (delegate* unmanaged<IntPtr*, int*, IntPtr, int>)F("MPI_Test");
        _wait = (delegate* unmanaged<IntPtr*, IntPtr, int>)F("MPI_Wait");
        _queryThread = (delegate* unmanaged<int*, int>)F("MPI_Query_thread");
        CommWorld = F("ompi_mpi_comm_world");
        ErrorsReturn = F("ompi_mpi_errors_return");
    }

    /// <summary>The native library handle.</summary>
    public IntPtr Handle { get; }

    /// <summary>The file name that was loaded.</summary>
    public string Name { get; }

    /// <summary><c>MPI_COMM_WORLD</c>.</summary>
    public IntPtr CommWorld { get; }

    /// <summary><c>MPI_ERRORS_RETURN</c>.</summary>
    public IntPtr ErrorsReturn { get; }

    /// <summary><c>MPI_IN_PLACE</c>.</summary>
    public static IntPtr InPlace => 1;

    /// <summary>Loads Open MPI from <paramref name="candidates"/> (the standard names when null).</summary>
    /// <exception cref="DllNotFoundException">No candidate loads; the message says what to install.</exception>
    /// <exception cref="NotSupportedException">The library loaded is not Open MPI (e.g. MPICH).</exception>
    public static MpiLibrary Load(IReadOnlyList<string>? candidates = null)
    {
        candidates ??= Candidates;
        foreach (string name in candidates)
        {
            if (NativeLibrary.TryLoad(name, out IntPtr handle))
            {
                if (!NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out _))
                {
                    throw new NotSupportedException($"'{name}' loaded but is not Open MPI (no ompi_mpi_comm_world export); only Open MPI's ABI is supported. {InstallHint}");
                }

                return new MpiLibrary(handle, name);
            }
        }

        throw new DllNotFoundException(
            $"World size > 1 needs Open MPI, but none of {string.Join(", ", candidates)} could be loaded. {InstallHint}");
    }

    /// <summary>The address of the exported object <paramref name="symbol"/> (a datatype or operation handle).</summary>
    public IntPtr Symbol(string symbol) => NativeLibrary.GetExport(Handle, symbol);

    /// <summary><c>MPI_Initialized</c>.</summary>
    public bool IsInitialized()
    {
        int flag;
        Check(_initialized(&flag), "MPI_Initialized");
        return flag != 0;
    }

    /// <summary><c>MPI_Finalized</c>.</summary>
    public bool IsFinalized()
    {
        int flag;
        Check(_finalized(&flag), "MPI_Finalized");
        return flag != 0;
    }

    /// <summary><c>MPI_Init_thread(NULL, NULL, required, &amp;provided)</c>; returns the thread level provided.</summary>
    public int InitThread(int required)
    {
        int provided;
        Check(_initThread(IntPtr.Zero, IntPtr.Zero, required, &provided), "MPI_Init_thread");
        return provided;
    }

    /// <summary><c>MPI_Query_thread</c>: the thread level MPI was initialised with.</summary>
    public int QueryThread()
    {
        int provided;
        Check(_queryThread(&provided), "MPI_Query_thread");
        return provided;
    }

    /// <summary><c>MPI_Finalize</c>.</summary>
    public void FinalizeMpi() => Check(_finalize(), "MPI_Finalize");

    /// <summary><c>MPI_Comm_rank</c>.</summary>
    public int CommRank(IntPtr comm)
    {
        int v;
        Check(_commRank(comm, &v), "MPI_Comm_rank");
        return v;
    }

    /// <summary><c>MPI_Comm_size</c>.</summary>
    public int CommSize(IntPtr comm)
    {
        int v;
        Check(_commSize(comm, &v), "MPI_Comm_size");
        return v;
    }

    /// <summary><c>MPI_Comm_dup</c>, with <c>MPI_ERRORS_RETURN</c> set on the copy so errors become exceptions.</summary>
    public IntPtr CommDup(IntPtr comm)
    {
        IntPtr copy;
        Check(_commDup(comm, &copy), "MPI_Comm_dup");
        Check(_commSetErrhandler(copy, ErrorsReturn), "MPI_Comm_set_errhandler");
        return copy;
    }

    /// <summary><c>MPI_Comm_free</c>.</summary>
    public void CommFree(IntPtr comm) => Check(_commFree(&comm), "MPI_Comm_free");

    /// <summary><c>MPI_Allreduce</c>.</summary>
    public void Allreduce(IntPtr send, IntPtr recv, int count, IntPtr datatype, IntPtr op, IntPtr comm) =>
        Check(_allreduce(send, recv, count, datatype, op, comm), "MPI_Allreduce");

    /// <summary><c>MPI_Iallreduce</c>: starts the all-reduce and returns its request handle (an <c>ompi_request_t*</c>).</summary>
    public IntPtr Iallreduce(IntPtr send, IntPtr recv, int count, IntPtr datatype, IntPtr op, IntPtr comm)
    {
        IntPtr request;
        Check(_iallreduce(send, recv, count, datatype, op, comm, &request), "MPI_Iallreduce");
        return request;
    }

    /// <summary><c>MPI_Test(&amp;request, &amp;flag, MPI_STATUS_IGNORE)</c>: progresses the request; true when it is complete.</summary>
    public bool Test(ref IntPtr request)
    {
        int flag;
        IntPtr r = request;
        Check(_test(&r, &flag, IntPtr.Zero), "MPI_Test");
        request = r;
        return flag != 0;
    }

    /// <summary><c>MPI_Wait(&amp;request, MPI_STATUS_IGNORE)</c>: blocks until the request is complete.</summary>
    public void Wait(ref IntPtr request)
    {
        IntPtr r = request;
        Check(_wait(&r, IntPtr.Zero), "MPI_Wait");
        request = r;
    }

    /// <summary><c>MPI_Bcast</c>.</summary>
    public void Bcast(IntPtr buffer, int count, IntPtr datatype, int root, IntPtr comm) =>
        Check(_bcast(buffer, count, datatype, root, comm), "MPI_Bcast");

    /// <summary><c>MPI_Allgather</c> with the same count and type on both sides.</summary>
    public void Allgather(IntPtr send, int count, IntPtr datatype, IntPtr recv, IntPtr comm) =>
        Check(_allgather(send, count, datatype, recv, count, datatype, comm), "MPI_Allgather");

    /// <summary><c>MPI_Barrier</c>.</summary>
    public void Barrier(IntPtr comm) => Check(_barrier(comm), "MPI_Barrier");

    /// <summary><c>MPI_Abort</c>: ends every process of the job with <paramref name="code"/>.</summary>
    public void Abort(IntPtr comm, int code) => _abort(comm, code);

    private void Check(int code, string function)
    {
        if (code == 0)
        {
            return;
        }

        const int maxLength = 256; // MPI_MAX_ERROR_STRING in Open MPI
        byte* text = stackalloc byte[maxLength + 1];
        int length = 0;
        string message = _errorString(code, text, &length) == 0 ? System.Text.Encoding.ASCII.GetString(text, Math.Clamp(length, 0, maxLength)) : "unknown error";
        throw new MpiException($"{function} failed with MPI error {code}: {message}", code);
    }
}

/// <summary>An MPI call returned an error code.</summary>
public sealed class MpiException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What failed.</param>
    /// <param name="errorCode">The MPI error code.</param>
    public MpiException(string message, int errorCode)
        : base(message) => ErrorCode = errorCode;

    /// <summary>The MPI error code returned.</summary>
    public int ErrorCode { get; }
}
