using System.Collections.Concurrent;

namespace ComposerSharp.Data;

/// <summary>
/// A sample read by a <see cref="DataLoader{TSample}"/> worker thread failed. Raised on the thread that enumerates
/// the loader, at the batch that holds the sample, with the worker's exception as <see cref="Exception.InnerException"/>
/// (PyTorch's <c>DataLoader</c> re-raises a worker's exception in the main process the same way).
/// </summary>
public sealed class DataLoaderWorkerException : Exception
{
    /// <summary>Creates the exception for a failed read of <paramref name="sampleIndex"/>.</summary>
    /// <param name="worker">The 0-based worker id.</param>
    /// <param name="sampleIndex">The global dataset index whose read failed.</param>
    /// <param name="inner">The worker's exception.</param>
    public DataLoaderWorkerException(int worker, long sampleIndex, Exception inner)
        : base($"DataLoader worker {worker} failed to read sample {sampleIndex}: {inner?.Message}", inner)
    {
        Worker = worker;
        SampleIndex = sampleIndex;
    }

    /// <summary>The 0-based worker id.</summary>
    public int Worker { get; }

    /// <summary>The global dataset index whose read failed.</summary>
    public long SampleIndex { get; }
}

/// <summary>Counters of the loader's background worker threads (for diagnostics and the no-leak tests).</summary>
public static class DataLoaderWorkers
{
    private static int _live;

    /// <summary>Worker threads of all loaders in this process that have started and not yet exited.</summary>
    public static int LiveThreads => Volatile.Read(ref _live);

    internal static void Started() => Interlocked.Increment(ref _live);

    internal static void Exited() => Interlocked.Decrement(ref _live);
}

/// <summary>
/// Reads the samples of a rank's batches ahead on <c>num_workers</c> threads: worker w reads batches w, w + N, …
/// (PyTorch's <c>DataLoader</c> assignment) into its own bounded queue of <c>prefetch_factor</c> batches, and the
/// consumer takes batches round-robin, so the output order equals that of num_workers = 0. Only samples (plain
/// managed data) cross threads; the collator runs on the consumer's thread, so tensors are created in the dispose
/// scope open there. <see cref="Dispose"/> cancels and joins every worker.
/// </summary>
internal sealed class SamplePrefetcher<TSample> : IDisposable
{
    private readonly BlockingCollection<Item>[] _queues;
    private readonly Thread[] _threads;
    private readonly CancellationTokenSource _cancel = new();
    private readonly long _firstBatch;
    private bool _disposed;

    public SamplePrefetcher(IDataset<TSample> dataset, long[] order, int batchSize, long firstBatch, long batches, int numWorkers, int prefetchFactor)
    {
        _firstBatch = firstBatch;
        _queues = new BlockingCollection<Item>[numWorkers];
        _threads = new Thread[numWorkers];
        for (int w = 0; w < numWorkers; w++)
        {
            _queues[w] = new BlockingCollection<Item>(new ConcurrentQueue<Item>(), prefetchFactor);
        }

        for (int w = 0; w < numWorkers; w++)
        {
            int worker = w;
            _threads[w] = new Thread(() => Run(worker, dataset, order, batchSize, firstBatch + worker, batches, numWorkers))
            {
                IsBackground = true,
                Name = $"DataLoader worker {w}",
            };
            DataLoaderWorkers.Started();
            _threads[w].Start();
        }
    }

    /// <summary>The samples and their global indices of batch <paramref name="batch"/> (batches must be taken in order).</summary>
    public (TSample[] Samples, long[] Indices) Take(long batch)
    {
        Item item = _queues[(int)((batch - _firstBatch) % _queues.Length)].Take(_cancel.Token);
        if (item.Error is { } error)
        {
            throw error;
        }

        return (item.Samples!, item.Indices!);
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _cancel.Cancel();
        foreach (Thread thread in _threads)
        {
            thread.Join();
        }

        foreach (BlockingCollection<Item> queue in _queues)
        {
            queue.Dispose();
        }

        _cancel.Dispose();
    }

    private void Run(int worker, IDataset<TSample> dataset, long[] order, int batchSize, long first, long batches, int stride)
    {
        BlockingCollection<Item> queue = _queues[worker];
        CancellationToken token = _cancel.Token;
        try
        {
            for (long b = first; b < batches && !token.IsCancellationRequested; b += stride)
            {
                long start = b * batchSize;
                int length = (int)Math.Min(batchSize, order.LongLength - start);
                var samples = new TSample[length];
                var indices = new long[length];
                Exception? error = null;
                for (int i = 0; i < length && error is null; i++)
                {
                    indices[i] = order[start + i];
                    try
                    {
                        samples[i] = dataset[indices[i]];
                    }
                    catch (Exception ex)
                    {
                        error = new DataLoaderWorkerException(worker, indices[i], ex);
                    }
                }

                queue.Add(new Item(samples, indices, error), token);
                if (error is not null)
                {
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Enumeration stopped early: the consumer no longer waits for this worker.
        }
        finally
        {
            DataLoaderWorkers.Exited();
        }
    }

    private sealed record Item(TSample[]? Samples, long[]? Indices, Exception? Error);
}
