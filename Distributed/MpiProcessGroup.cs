using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// A process group over Open MPI for CPU tensors. It works on its own duplicate of <c>MPI_COMM_WORLD</c> with
/// <c>MPI_ERRORS_RETURN</c>, so MPI errors become <see cref="MpiException"/>s. MPI is initialised once per process
/// (<c>MPI_THREAD_MULTIPLE</c>) by the first group and finalised at process exit; later groups reuse it.
/// Float16 and BFloat16 tensors travel as Float32 (MPI has no half types); bool as bytes. AVG is a SUM divided by the
/// world size. Every collective is watched by a <see cref="CollectiveWatchdog"/> that aborts the job after the timeout.
/// </summary>
public sealed class MpiProcessGroup : IProcessGroup
{
    private readonly MpiLibrary _mpi;
    private readonly IntPtr _comm;
    private readonly CollectiveWatchdog _watchdog;
    private readonly ILogger _log;
    private readonly IntPtr _sum;
    private readonly IntPtr _max;
    private readonly IntPtr _min;
    private readonly Dictionary<ScalarType, IntPtr> _types;
    private readonly object _requestGate = new();
    private readonly List<MpiWork> _inFlight = new();
    private readonly bool _threadMultiple;
    private Thread? _progress;
    private bool _disposed;

    private MpiProcessGroup(MpiLibrary mpi, DistributedEnvironment env, TimeSpan timeout, ILogger log)
    {
        _mpi = mpi;
        _log = log;
        _comm = mpi.CommDup(mpi.CommWorld);
        Rank = mpi.CommRank(_comm);
        WorldSize = mpi.CommSize(_comm);
        LocalRank = env.LocalRank;
        LocalWorldSize = env.LocalWorldSize;
        NodeRank = env.NodeRank;
        _sum = mpi.Symbol("ompi_mpi_op_sum");
        _max = mpi.Symbol("ompi_mpi_op_max");
        _min = mpi.Symbol("ompi_mpi_op_min");
        _types = new Dictionary<ScalarType, IntPtr>
        {
            [ScalarType.Float32] = mpi.Symbol("ompi_mpi_float"),
            [ScalarType.Float64] = mpi.Symbol("ompi_mpi_double"),
            [ScalarType.Int64] = mpi.Symbol("ompi_mpi_int64_t"),
            [ScalarType.Int32] = mpi.Symbol("ompi_mpi_int32_t"),
            [ScalarType.Int16] = mpi.Symbol("ompi_mpi_int16_t"),
            [ScalarType.Int8] = mpi.Symbol("ompi_mpi_int8_t"),
            [ScalarType.Byte] = mpi.Symbol("ompi_mpi_uint8_t"),
        };
        _watchdog = new CollectiveWatchdog(timeout, OnTimeout);
        _threadMultiple = mpi.QueryThread() >= MpiLibrary.ThreadMultiple;
    }

    /// <summary>
    /// Joins the MPI job this process was started in (by <c>mpirun</c>, directly or through
    /// <c>composersharp launch</c>).
    /// </summary>
    /// <param name="env">The launcher's view of this process; its world size and rank must match MPI's.</param>
    /// <param name="timeout">How long one collective may wait before the job is aborted.</param>
    /// <param name="logger">Diagnostics.</param>
    /// <param name="libraryCandidates">Library names to try (the standard Open MPI names when null).</param>
    /// <exception cref="DllNotFoundException">Open MPI is not installed; the message says what to install.</exception>
    /// <exception cref="InvalidOperationException">MPI's rank or size differs from <paramref name="env"/>'s (the process was not started by mpirun, or by a different job).</exception>
    public static MpiProcessGroup Create(DistributedEnvironment env, TimeSpan timeout, ILogger? logger = null, IReadOnlyList<string>? libraryCandidates = null)
    {
        ArgumentNullException.ThrowIfNull(env);
        MpiLibrary mpi = MpiLibrary.Load(libraryCandidates);
        if (mpi.IsFinalized())
        {
            throw new InvalidOperationException("MPI was already finalised in this process; a process can join one MPI job only once.");
        }

        if (!mpi.IsInitialized())
        {
            int provided = mpi.InitThread(MpiLibrary.ThreadMultiple);
            if (provided < MpiLibrary.ThreadMultiple)
            {
                (logger ?? NullLogger.Instance).LogWarning("Open MPI provides thread level {Provided}, below MPI_THREAD_MULTIPLE; collectives must stay on one thread.", provided);
            }

            AppDomain.CurrentDomain.ProcessExit += (_, _) =>
            {
                if (!mpi.IsFinalized())
                {
                    mpi.FinalizeMpi();
                }
            };
        }

        var group = new MpiProcessGroup(mpi, env, timeout, logger ?? NullLogger.Instance);
        if (group.WorldSize != env.WorldSize || group.Rank != env.Rank)
        {
            group.Dispose();
            throw new InvalidOperationException(
                $"MPI sees rank {group.Rank} of {group.WorldSize}, but the environment says rank {env.Rank} of {env.WorldSize} ({env.Source}). " +
                "Start every rank with mpirun (or 'composersharp launch'), which sets both.");
        }

        return group;
    }

    /// <inheritdoc/>
    public string Backend => "mpi";

    /// <inheritdoc/>
    public int Rank { get; }

    /// <inheritdoc/>
    public int WorldSize { get; }

    /// <inheritdoc/>
    public int LocalRank { get; }

    /// <inheritdoc/>
    public int LocalWorldSize { get; }

    /// <inheritdoc/>
    public int NodeRank { get; }

    /// <summary>Chunk limit in elements for one MPI call; <see cref="int.MaxValue"/> except in tests of the split.</summary>
    internal long MaxChunk { get; set; } = TensorMemory.MaxChunk;

    /// <inheritdoc/>
    public void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        ScalarType wire = Check(tensor, nameof(tensor));
        IntPtr mpiOp = op switch
        {
            ReduceOp.Sum or ReduceOp.Avg => _sum,
            ReduceOp.Max => _max,
            ReduceOp.Min => _min,
            _ => throw new ArgumentOutOfRangeException(nameof(op), op, "Expected Sum, Avg, Max or Min."),
        };
        using CollectiveWatchdog.Scope watch = _watchdog.Enter($"all_reduce({op}) of {tensor.numel()} {tensor.dtype} elements");
        TensorMemory.Staged(tensor, wire, writeBack: true, staged =>
        {
            IntPtr type = _types[wire];
            TensorMemory.ForEachChunk(TensorMemory.DataPointer(staged), staged.numel(), TensorMemory.ElementSize(wire), (address, count) =>
                _mpi.Allreduce(MpiLibrary.InPlace, address, count, type, mpiOp, _comm), MaxChunk);
            if (op == ReduceOp.Avg)
            {
                using var noGrad = torch.no_grad();
                if (staged.is_floating_point())
                {
                    staged.div_(WorldSize);
                }
                else
                {
                    staged.div_(WorldSize, RoundingMode.trunc);
                }
            }
        });
    }

    /// <summary>
    /// Starts an in-place <c>MPI_Iallreduce</c> of <paramref name="tensor"/> (one request per chunk of at most
    /// <see cref="int.MaxValue"/> elements). A tensor that would need staging (not contiguous, or a dtype MPI lacks
    /// such as Float16/BFloat16) and <see cref="ReduceOp.Avg"/> are reduced at once by the blocking path instead.
    /// Open MPI progresses the collective inside MPI calls, so <see cref="ICollectiveWork.Test"/> should be called
    /// now and then while other work runs. <see cref="ICollectiveWork.Wait"/> is watched by the timeout.
    /// </summary>
    public ICollectiveWork StartAllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        ScalarType wire = Check(tensor, nameof(tensor));
        if (op == ReduceOp.Avg || wire != tensor.dtype || !tensor.is_contiguous())
        {
            AllReduce(tensor, op);
            return CompletedWork.Instance;
        }

        IntPtr mpiOp = op switch
        {
            ReduceOp.Sum => _sum,
            ReduceOp.Max => _max,
            ReduceOp.Min => _min,
            _ => throw new ArgumentOutOfRangeException(nameof(op), op, "Expected Sum, Avg, Max or Min."),
        };
        IntPtr type = _types[wire];
        var requests = new List<IntPtr>();
        lock (_requestGate)
        {
            TensorMemory.ForEachChunk(TensorMemory.DataPointer(tensor), tensor.numel(), TensorMemory.ElementSize(wire), (address, count) =>
                requests.Add(_mpi.Iallreduce(MpiLibrary.InPlace, address, count, type, mpiOp, _comm)), MaxChunk);
            var work = new MpiWork(this, requests.ToArray(), $"all_reduce({op}) of {tensor.numel()} {tensor.dtype} elements (non-blocking)");
            if (_threadMultiple)
            {
                _inFlight.Add(work);
                _progress ??= StartProgressThread();
                Monitor.PulseAll(_requestGate);
            }

            return work;
        }
    }

    /// <summary>
    /// Open MPI advances a non-blocking collective only inside MPI calls, and backward makes none between two
    /// buckets; this thread tests the requests in flight every millisecond (sleeping in between, so it takes little
    /// of the core it shares with the rank's compute thread). Only with <c>MPI_THREAD_MULTIPLE</c>.
    /// </summary>
    private Thread StartProgressThread()
    {
        var thread = new Thread(() =>
        {
            while (true)
            {
                lock (_requestGate)
                {
                    while (_inFlight.Count == 0 && !_disposed)
                    {
                        Monitor.Wait(_requestGate);
                    }

                    if (_disposed)
                    {
                        return;
                    }

                    _inFlight.RemoveAll(w => w.TestLocked());
                }

                Thread.Sleep(1);
            }
        })
        { IsBackground = true, Name = "mpi-progress" };
        thread.Start();
        return thread;
    }

    /// <inheritdoc/>
    public void Broadcast(Tensor tensor, int root = 0)
    {
        ScalarType wire = Check(tensor, nameof(tensor));
        CheckRoot(root);
        using CollectiveWatchdog.Scope watch = _watchdog.Enter($"broadcast from rank {root} of {tensor.numel()} {tensor.dtype} elements");
        TensorMemory.Staged(tensor, wire, writeBack: Rank != root, staged =>
        {
            IntPtr type = _types[wire];
            TensorMemory.ForEachChunk(TensorMemory.DataPointer(staged), staged.numel(), TensorMemory.ElementSize(wire), (address, count) =>
                _mpi.Bcast(address, count, type, root, _comm), MaxChunk);
        });
    }

    /// <inheritdoc/>
    public Tensor AllGather(Tensor tensor)
    {
        ScalarType wire = Check(tensor, nameof(tensor));
        using CollectiveWatchdog.Scope watch = _watchdog.Enter($"all_gather of {tensor.numel()} {tensor.dtype} elements");
        long numel = tensor.numel();
        long[] shape = new[] { (long)WorldSize }.Concat(tensor.shape).ToArray();
        Tensor result = torch.empty(shape, dtype: tensor.dtype, device: tensor.device);
        using var scope = torch.NewDisposeScope();
        Tensor source = tensor.to(wire).contiguous().reshape(-1);
        Tensor rows = result.view(WorldSize, numel);
        IntPtr type = _types[wire];
        for (long offset = 0; offset < numel || (numel == 0 && offset == 0); offset += MaxChunk)
        {
            long count = Math.Min(MaxChunk, numel - offset);
            if (count <= 0)
            {
                break;
            }

            Tensor chunk = source.narrow(0, offset, count).contiguous();
            Tensor gathered = torch.empty(new[] { (long)WorldSize, count }, dtype: wire);
            _mpi.Allgather(TensorMemory.DataPointer(chunk), (int)count, type, TensorMemory.DataPointer(gathered), _comm);
            using var noGrad = torch.no_grad();
            rows.narrow(1, offset, count).copy_(gathered);
        }

        return result;
    }

    /// <summary>
    /// A bare in-place <c>MPI_Allreduce(MPI_SUM)</c> of <paramref name="count"/> floats at <paramref name="address"/> on
    /// this group's communicator, without staging, chunking or the watchdog: the baseline of the bandwidth benchmark.
    /// </summary>
    internal void RawAllreduceFloatSum(IntPtr address, int count) =>
        _mpi.Allreduce(MpiLibrary.InPlace, address, count, _types[ScalarType.Float32], _sum, _comm);

    /// <inheritdoc/>
    public void Barrier()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using CollectiveWatchdog.Scope watch = _watchdog.Enter("barrier");
        _mpi.Barrier(_comm);
    }

    /// <inheritdoc/>
    public void Abort(int exitCode)
    {
        Console.Error.Flush();
        _mpi.Abort(_mpi.CommWorld, exitCode);
    }

    /// <summary>Frees the communicator and stops the watchdog; MPI itself stays initialised until the process exits.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        lock (_requestGate)
        {
            _disposed = true;
            Monitor.PulseAll(_requestGate);
        }

        _progress?.Join();
        _watchdog.Dispose();
        if (!_mpi.IsFinalized())
        {
            _mpi.CommFree(_comm);
        }
    }

    private void OnTimeout(string message)
    {
        _log.LogCritical("Rank {Rank}: {Message} Aborting the job.", Rank, message);
        Console.Error.WriteLine($"[rank {Rank}] {message} Aborting the job.");
        Abort(DistributedDefaults.TimeoutExitCode);
    }

    /// <summary>The requests of one <see cref="StartAllReduce"/>; each is tested or waited for until complete.</summary>
    private sealed class MpiWork(MpiProcessGroup group, IntPtr[] requests, string description) : ICollectiveWork
    {
        private readonly bool[] _done = new bool[requests.Length];

        public bool Test()
        {
            lock (group._requestGate)
            {
                return TestLocked();
            }
        }

        /// <summary><see cref="Test"/> with the request gate held.</summary>
        public bool TestLocked()
        {
            bool all = true;
            for (int i = 0; i < requests.Length; i++)
            {
                if (!_done[i])
                {
                    _done[i] = group._mpi.Test(ref requests[i]);
                    all &= _done[i];
                }
            }

            return all;
        }

        public void Wait()
        {
            if (_done.All(d => d))
            {
                return;
            }

            using CollectiveWatchdog.Scope watch = group._watchdog.Enter(description);
            lock (group._requestGate)
            {
                for (int i = 0; i < requests.Length; i++)
                {
                    if (!_done[i])
                    {
                        group._mpi.Wait(ref requests[i]);
                        _done[i] = true;
                    }
                }

                group._inFlight.Remove(this);
            }
        }
    }

    private ScalarType Check(Tensor tensor, string paramName)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(tensor, paramName);
        if (tensor.device_type != DeviceType.CPU)
        {
            throw new ArgumentException($"The MPI backend communicates CPU tensors, but this one is on {tensor.device}; use the NCCL backend for CUDA tensors.", paramName);
        }

        return tensor.dtype switch
        {
            ScalarType.Float16 or ScalarType.BFloat16 => ScalarType.Float32,
            ScalarType.Bool => ScalarType.Byte,
            ScalarType t when _types.ContainsKey(t) => t,
            ScalarType t => throw new ArgumentException($"The MPI backend cannot communicate {t} tensors; expected a float, integer or bool dtype.", paramName),
        };
    }

    private void CheckRoot(int root)
    {
        if (root < 0 || root >= WorldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(root), root, $"The root must be a rank in [0, {WorldSize}).");
        }
    }
}
