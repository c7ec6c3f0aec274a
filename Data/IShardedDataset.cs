namespace ComposerSharp.Data;

/// <summary>
/// A dataset stored in shards (MosaicML Streaming's MDS shards): the loader's shuffle keeps spans of shards together
/// (Streaming's block shuffles, <c>py1e</c>/<c>py1b</c>) so that a rank reads few shards at a time, and it tells the
/// dataset the order in which this process will read samples, so the dataset can download ahead
/// (<c>predownload</c>) and evict shards it no longer needs (<c>cache_limit</c>).
/// </summary>
/// <remarks>
/// This is the contract between the data loader (sampling, partitioning, background workers, resume) and the
/// streaming datasets (formats, shard cache, remote storage). Implementations must allow concurrent reads of
/// <see cref="IDataset{TSample}"/>'s indexer from the loader's worker threads. Source of the idea:
/// <c>streaming/base/dataset.py</c> (<c>StreamingDataset</c>: shard sizes, <c>_get_work</c>, predownload).
/// </remarks>
public interface IShardedDataset
{
    /// <summary>
    /// The number of samples in each shard, in global index order: shard <c>k</c> holds the global indices
    /// <c>[Σ_{j&lt;k} n_j, Σ_{j≤k} n_j)</c>. Their sum is the dataset's <see cref="IDataset{TSample}.Count"/>.
    /// </summary>
    IReadOnlyList<long> ShardSampleCounts { get; }

    /// <summary>
    /// Tells the dataset the global sample indices this process will read from now on, in order (called at the start
    /// of every epoch and on resume, before the first read). The dataset may start downloading ahead of the reads
    /// and evict shards that are not needed again. Reads of other indices remain valid, only slower.
    /// </summary>
    /// <param name="order">The indices in read order (each in [0, Count)); the dataset may keep the reference.</param>
    /// <exception cref="ArgumentNullException"><paramref name="order"/> is null.</exception>
    void SetReadOrder(IReadOnlyList<long> order);
}
