namespace ComposerSharp.Core;

/// <summary>
/// A source of batches that the Trainer iterates one epoch at a time. Implementations must be deterministic:
/// the same epoch number gives the same batches in the same order, so that a run resumed from a checkpoint at
/// (epoch, batch-in-epoch) sees exactly the batches an uninterrupted run would.
/// </summary>
public interface IDataLoader
{
    /// <summary>Batches in one epoch, or null when the length is unknown (a streaming source).</summary>
    long? BatchesPerEpoch { get; }

    /// <summary>Samples in one epoch that are yielded (after drop_last), or null when unknown.</summary>
    long? SamplesPerEpoch { get; }

    /// <summary>
    /// The batches of epoch <paramref name="epoch"/> (0-based), skipping the first <paramref name="skipBatches"/>
    /// without materialising their tensors. Tensors are created lazily as the enumeration advances, so each batch
    /// is owned by the dispose scope open when <c>MoveNext</c> is called.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="epoch"/> or <paramref name="skipBatches"/> is negative.</exception>
    IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0);
}
