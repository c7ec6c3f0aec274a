using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// A process group over NCCL for CUDA tensors. Bootstrap as usual: rank 0 creates the 128-byte unique id and
/// broadcasts it over the MPI group, then every rank calls <c>ncclCommInitRank</c> on its current CUDA device
/// (device 0 of the process: <c>composersharp launch</c> sets <c>CUDA_VISIBLE_DEVICES</c> to the local rank).
/// Collectives run on the default CUDA stream and are followed by a device synchronisation, so they are blocking
/// like the MPI ones. Barrier and host-side work go through the MPI group.
/// Unverified on a GPU: the development machine has no CUDA; the error paths are tested.
/// </summary>
public sealed class NcclProcessGroup : IProcessGroup
{
    private readonly MpiProcessGroup _mpi;
    private readonly NcclLibrary _nccl;
    private readonly IntPtr _comm;
    private bool _disposed;

    private NcclProcessGroup(MpiProcessGroup mpi, NcclLibrary nccl, IntPtr comm)
    {
        _mpi = mpi;
        _nccl = nccl;
        _comm = comm;
    }

    /// <summary>Creates the NCCL communicator for <paramref name="device"/>, bootstrapped over <paramref name="mpi"/> (which the group then owns).</summary>
    /// <exception cref="ArgumentException"><paramref name="device"/> is not a CUDA device, or not the process's device 0.</exception>
    /// <exception cref="DllNotFoundException">NCCL is not installed; the message says what to install.</exception>
    /// <exception cref="NcclException">NCCL failed to create the communicator.</exception>
    public static NcclProcessGroup Create(MpiProcessGroup mpi, Device device, IReadOnlyList<string>? libraryCandidates = null)
    {
        ArgumentNullException.ThrowIfNull(mpi);
        ArgumentNullException.ThrowIfNull(device);
        CheckDevice(device);
        NcclLibrary nccl = NcclLibrary.Load(libraryCandidates);
        NcclUniqueId id = mpi.Rank == 0 ? nccl.GetUniqueId() : default;
        Tensor idBytes = torch.empty(128, dtype: ScalarType.Byte);
        try
        {
            unsafe
            {
                new Span<byte>(id.Bytes, 128).CopyTo(new Span<byte>((void*)TensorMemory.DataPointer(idBytes), 128));
                mpi.Broadcast(idBytes, 0);
                new Span<byte>((void*)TensorMemory.DataPointer(idBytes), 128).CopyTo(new Span<byte>(id.Bytes, 128));
            }
        }
        finally
        {
            idBytes.Dispose();
        }

        IntPtr comm = nccl.CommInitRank(mpi.WorldSize, id, mpi.Rank);
        return new NcclProcessGroup(mpi, nccl, comm);
    }

    /// <inheritdoc/>
    public string Backend => "nccl";

    /// <inheritdoc/>
    public int Rank => _mpi.Rank;

    /// <inheritdoc/>
    public int WorldSize => _mpi.WorldSize;

    /// <inheritdoc/>
    public int LocalRank => _mpi.LocalRank;

    /// <inheritdoc/>
    public int LocalWorldSize => _mpi.LocalWorldSize;

    /// <inheritdoc/>
    public int NodeRank => _mpi.NodeRank;

    /// <inheritdoc/>
    public void AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        int type = Check(tensor, nameof(tensor));
        int ncclOp = op switch
        {
            ReduceOp.Sum => 0,
            ReduceOp.Max => 2,
            ReduceOp.Min => 3,
            ReduceOp.Avg => 4,
            _ => throw new ArgumentOutOfRangeException(nameof(op), op, "Expected Sum, Avg, Max or Min."),
        };
        TensorMemory.Staged(tensor, tensor.dtype == ScalarType.Bool ? ScalarType.Byte : tensor.dtype, writeBack: true, staged =>
        {
            IntPtr p = TensorMemory.DataPointer(staged);
            _nccl.AllReduce(p, p, (ulong)staged.numel(), type, ncclOp, _comm, IntPtr.Zero);
            torch.cuda.synchronize();
        });
    }

    /// <inheritdoc/>
    public void Broadcast(Tensor tensor, int root = 0)
    {
        int type = Check(tensor, nameof(tensor));
        if (root < 0 || root >= WorldSize)
        {
            throw new ArgumentOutOfRangeException(nameof(root), root, $"The root must be a rank in [0, {WorldSize}).");
        }

        TensorMemory.Staged(tensor, tensor.dtype == ScalarType.Bool ? ScalarType.Byte : tensor.dtype, writeBack: Rank != root, staged =>
        {
            IntPtr p = TensorMemory.DataPointer(staged);
            _nccl.Broadcast(p, p, (ulong)staged.numel(), type, root, _comm, IntPtr.Zero);
            torch.cuda.synchronize();
        });
    }

    /// <inheritdoc/>
    public Tensor AllGather(Tensor tensor)
    {
        int type = Check(tensor, nameof(tensor));
        using var scope = torch.NewDisposeScope();
        Tensor source = tensor.dtype == ScalarType.Bool ? tensor.to(ScalarType.Byte).contiguous() : tensor.contiguous();
        Tensor gathered = torch.empty(new[] { (long)WorldSize }.Concat(tensor.shape).ToArray(), dtype: source.dtype, device: tensor.device);
        _nccl.AllGather(TensorMemory.DataPointer(source), TensorMemory.DataPointer(gathered), (ulong)source.numel(), type, _comm, IntPtr.Zero);
        torch.cuda.synchronize();
        return gathered.to(tensor.dtype).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    public void Barrier() => _mpi.Barrier();

    /// <inheritdoc/>
    public void Abort(int exitCode)
    {
        _nccl.CommAbort(_comm);
        _mpi.Abort(exitCode);
    }

    /// <summary>Destroys the communicator and the MPI group under it.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _nccl.CommDestroy(_comm);
        _mpi.Dispose();
    }

    /// <summary>The <c>ncclDataType_t</c> of <paramref name="type"/> (nccl.h).</summary>
    /// <exception cref="ArgumentException">NCCL has no such type.</exception>
    internal static int DataType(ScalarType type) => type switch
    {
        ScalarType.Int8 => 0,
        ScalarType.Byte or ScalarType.Bool => 1,
        ScalarType.Int32 => 2,
        ScalarType.Int64 => 4,
        ScalarType.Float16 => 6,
        ScalarType.Float32 => 7,
        ScalarType.Float64 => 8,
        ScalarType.BFloat16 => 9,
        _ => throw new ArgumentException($"The NCCL backend cannot communicate {type} tensors; expected int8, uint8, bool, int32, int64, float16, bfloat16, float32 or float64.", nameof(type)),
    };

    /// <summary>Refuses devices NCCL cannot serve here.</summary>
    /// <exception cref="ArgumentException">Not CUDA, or a CUDA index other than 0.</exception>
    internal static void CheckDevice(Device device)
    {
        if (device.type != DeviceType.CUDA)
        {
            throw new ArgumentException($"The NCCL backend needs a CUDA device, but the device is '{device}'; use the MPI backend (dist_backend: mpi or auto) on CPU.", nameof(device));
        }

        if (device.index > 0)
        {
            throw new ArgumentException(
                $"The NCCL backend uses the process's current CUDA device (cuda:0), but the device is '{device}'. Give each rank one GPU with CUDA_VISIBLE_DEVICES (composersharp launch does) and use 'cuda'.", nameof(device));
        }
    }

    private int Check(Tensor tensor, string paramName)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(tensor, paramName);
        if (tensor.device_type != DeviceType.CUDA)
        {
            throw new ArgumentException($"The NCCL backend communicates CUDA tensors, but this one is on {tensor.device}.", paramName);
        }

        return DataType(tensor.dtype);
    }
}
