using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Distributed;

/// <summary>
/// Chooses and creates the process group for a device (Composer's <c>dist.initialize_dist</c>): world size 1 gives
/// a <see cref="SingleProcessGroup"/> without touching any library; otherwise CPU devices get
/// <see cref="MpiProcessGroup"/> and CUDA devices <see cref="NcclProcessGroup"/>, unless
/// <see cref="DistributedOptions.Backend"/> says otherwise.
/// </summary>
public static class ProcessGroupFactory
{
    /// <summary>
    /// After a failure on this rank: when the process is part of an MPI job that is still running, prints nothing
    /// more and ends every rank with <paramref name="exitCode"/> (<c>MPI_Abort</c>), so no peer waits for ever;
    /// otherwise returns <paramref name="exitCode"/> for the caller to exit with.
    /// </summary>
    public static int AbortJobIfDistributed(int exitCode)
    {
        if (DistributedEnvironment.FromVariables(Environment.GetEnvironmentVariable) is not { WorldSize: > 1 })
        {
            return exitCode;
        }

        try
        {
            MpiLibrary mpi = MpiLibrary.Load();
            if (mpi.IsInitialized() && !mpi.IsFinalized())
            {
                Console.Out.Flush();
                Console.Error.Flush();
                mpi.Abort(mpi.CommWorld, exitCode);
            }
        }
        catch (Exception e) when (e is DllNotFoundException or NotSupportedException or InvalidOperationException or MpiException)
        {
            // No MPI job to abort: the exit code alone reports the failure.
        }

        return exitCode;
    }

    /// <summary>Creates the group for <paramref name="device"/> from <paramref name="env"/> (the process's environment when null).</summary>
    /// <exception cref="DllNotFoundException">World size &gt; 1 and the backend's library is missing; the message says what to install.</exception>
    /// <exception cref="ArgumentException">The backend cannot serve the device (NCCL on CPU).</exception>
    /// <exception cref="InvalidOperationException">The environment is inconsistent.</exception>
    public static IProcessGroup Create(Device device, DistributedOptions? options = null, DistributedEnvironment? env = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        options = (options ?? new DistributedOptions()).Validate();
        env ??= DistributedEnvironment.FromProcess();
        if (env.WorldSize == 1)
        {
            return new SingleProcessGroup();
        }

        string backend = options.Backend == "auto" ? (device.type == DeviceType.CUDA ? "nccl" : "mpi") : options.Backend;
        if (backend == "nccl" && device.type != DeviceType.CUDA)
        {
            throw new ArgumentException($"dist_backend = nccl needs a CUDA device, but the device is '{device}'; use mpi (or auto) on CPU.", nameof(options));
        }

        logger?.LogInformation("Rank {Rank} of {WorldSize} (local {LocalRank} of {LocalWorldSize}, node {NodeRank}) joins with backend {Backend}.", env.Rank, env.WorldSize, env.LocalRank, env.LocalWorldSize, env.NodeRank, backend);
        MpiProcessGroup mpi = MpiProcessGroup.Create(env, options.Timeout, logger);
        if (backend == "mpi")
        {
            return mpi;
        }

        try
        {
            return NcclProcessGroup.Create(mpi, device);
        }
        catch
        {
            mpi.Dispose();
            throw;
        }
    }
}
