namespace ComposerSharp.Distributed;

/// <summary>
/// A collective in flight, started by <see cref="IProcessGroup.StartAllReduce"/> (PyTorch's <c>Work</c>, MPI's
/// <c>MPI_Request</c>). Until <see cref="Wait"/> returns, the tensor it was started on must be neither read nor
/// written nor disposed. Collectives started on one group must be started in the same order on every rank.
/// </summary>
public interface ICollectiveWork
{
    /// <summary>Lets the collective progress without blocking (<c>MPI_Test</c>); true once it is complete.</summary>
    bool Test();

    /// <summary>Blocks until the collective is complete (<c>MPI_Wait</c>); the tensor then holds the result.</summary>
    /// <exception cref="MpiException">The MPI call failed.</exception>
    void Wait();
}

/// <summary>A collective that had already completed when it was returned (backends without non-blocking collectives).</summary>
public sealed class CompletedWork : ICollectiveWork
{
    /// <summary>The one instance.</summary>
    public static CompletedWork Instance { get; } = new();

    private CompletedWork()
    {
    }

    /// <inheritdoc/>
    public bool Test() => true;

    /// <inheritdoc/>
    public void Wait()
    {
    }
}
