namespace ComposerSharp.Distributed;

/// <summary>
/// Distributed settings (YAML keys <c>dist_timeout</c> and <c>dist_backend</c>). Nothing needs setting for one
/// process: the world size comes from the launcher's environment (<see cref="DistributedEnvironment"/>).
/// </summary>
public sealed record DistributedOptions
{
    /// <summary>How long one collective may wait for the other ranks before the job is aborted; 300 s by default (Composer's <c>dist_timeout</c>).</summary>
    public TimeSpan Timeout { get; init; } = DistributedDefaults.Timeout;

    /// <summary>
    /// The backend: <c>auto</c> (NCCL for CUDA devices, MPI for CPU, as Composer's <c>dist.initialize_dist</c>
    /// picks NCCL or Gloo), <c>mpi</c> or <c>nccl</c>.
    /// </summary>
    public string Backend { get; init; } = "auto";

    /// <summary>Bytes per gradient bucket (flattened gradients all-reduced together); 25 MiB by default.</summary>
    public long BucketBytes { get; init; } = DistributedDefaults.BucketBytes;

    /// <summary>
    /// A process group to use instead of one created from the environment (not disposed by the Trainer); e.g. a
    /// <see cref="SingleProcessGroup"/> to train alone inside a job.
    /// </summary>
    public IProcessGroup? ProcessGroup { get; init; }

    /// <summary>Checks the values.</summary>
    /// <exception cref="ArgumentException">A value is out of range or the backend is unknown; the message names it.</exception>
    public DistributedOptions Validate()
    {
        if (Timeout <= TimeSpan.Zero)
        {
            throw new ArgumentException($"dist_timeout = {Timeout.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture)} is not valid; expected a positive number of seconds.", nameof(Timeout));
        }

        if (Backend is not ("auto" or "mpi" or "nccl"))
        {
            throw new ArgumentException($"dist_backend = '{Backend}' is not known; expected auto, mpi or nccl.", nameof(Backend));
        }

        if (BucketBytes < 1024)
        {
            throw new ArgumentException($"The gradient bucket size {BucketBytes} bytes is too small; expected at least 1024.", nameof(BucketBytes));
        }

        return this;
    }
}
