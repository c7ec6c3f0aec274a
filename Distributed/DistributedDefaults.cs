namespace ComposerSharp.Distributed;

/// <summary>Defaults of the distributed settings.</summary>
public static class DistributedDefaults
{
    /// <summary>How long one collective may wait for the other ranks: 300 s, as Composer's <c>dist_timeout</c>.</summary>
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(300);

    /// <summary>The exit code of a job aborted because a collective timed out (the code of <c>timeout(1)</c>).</summary>
    public const int TimeoutExitCode = 124;

    /// <summary>Bucket size of the gradient all-reduce: 25 MiB, PyTorch DDP's <c>bucket_cap_mb</c> default.</summary>
    public const long BucketBytes = 25L * 1024 * 1024;

    /// <summary>
    /// Cap of the first bucket (the last layers' gradients, ready first in backward): 1 MiB, PyTorch DDP's
    /// <c>_DEFAULT_FIRST_BUCKET_BYTES</c>, so that communication starts early; the bucket cap when that is smaller.
    /// </summary>
    public const long FirstBucketBytes = 1024L * 1024;
}
