using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

public static partial class Functional
{
    /// <summary>
    /// Sets the sequence length of every tensor of <paramref name="batch"/> to <paramref name="sequenceLength"/>
    /// (Composer's <c>set_batch_sequence_length</c>): with <paramref name="truncate"/>, each [B, T] tensor keeps its
    /// first <paramref name="sequenceLength"/> positions ([B, L]); otherwise each is flattened, cut to a whole number of
    /// rows and reshaped to [⌊B·T / L⌋, L], so the extra tokens become new samples.
    /// </summary>
    /// <param name="batch">A batch whose tensors are all [B, T] (input_ids, attention_mask, labels, ...).</param>
    /// <param name="sequenceLength">The new length L, at least 1. When L ≥ T the batch is returned unchanged.</param>
    /// <param name="truncate">Truncate (true) or reshape (false).</param>
    /// <returns>The new batch (its token count recounted from <c>input_ids</c>), or <paramref name="batch"/> itself.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sequenceLength"/> is below 1.</exception>
    /// <exception cref="ArgumentException">A tensor is not [B, T] like the others (the message names it).</exception>
    public static Batch SetBatchSequenceLength(Batch batch, int sequenceLength, bool truncate = true)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequenceLength, 1);
        (long b, long t) = SequenceShape(batch, "SeqLengthWarmup");
        if (sequenceLength >= t)
        {
            return batch;
        }

        long rows = b * t / sequenceLength;
        var tensors = batch.ToDictionary(
            kv => kv.Key,
            kv => truncate
                ? kv.Value.narrow(1, 0, sequenceLength).contiguous()
                : kv.Value.reshape(-1).narrow(0, 0, rows * sequenceLength).view(rows, sequenceLength));
        return new Batch(tensors);
    }
}
