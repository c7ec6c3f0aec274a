namespace ComposerSharp.Core.Tensors;

/// <summary>
/// Where each parameter's elements lie in a flat, contiguous one-dimensional buffer that holds one value per element
/// of a list of parameters (the "multi-tensor apply" layout of Apex and Composer): parameter <c>i</c> occupies
/// <c>[Offsets[i], Offsets[i] + Lengths[i])</c>, in the order the parameters were given, and each offset is a
/// multiple of <see cref="AlignmentElements"/>, the gap before it filled with zeros and never read.
/// </summary>
/// <remarks>
/// With 4-byte elements (Float32) an alignment of 16 elements is 64 bytes: a cache line and one AVX-512 vector, so
/// each parameter's span starts on a line of its own when the buffer itself is 64-byte aligned (libtorch's CPU
/// allocator aligns every allocation to 64 bytes). The same layout serves a sharded data-parallel unit: a rank's
/// shard is a contiguous range of <see cref="TotalLength"/>, and the boundaries between parameters are here.
/// This is the one layout shared by the fused optimizers (<c>Trainer/Optim</c>) and sharded data parallel
/// (<c>Distributed</c>): a sharded unit's flat parameter, gradient and optimizer-state buffers all use it, and rank
/// <c>r</c> of <c>W</c> owns <see cref="ShardRange"/>(r, W) of each, so an optimizer kernel can step a shard as it
/// steps a whole buffer.
/// </remarks>
public sealed class FlatBufferLayout
{
    /// <summary>The alignment of every offset, in elements (16, i.e. 64 bytes of Float32).</summary>
    public const int AlignmentElements = 16;

    /// <summary>Builds the layout of parameters with <paramref name="lengths"/> elements each, in that order.</summary>
    /// <param name="lengths">Each parameter's element count (≥ 0).</param>
    /// <exception cref="ArgumentNullException"><paramref name="lengths"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A length is negative.</exception>
    public FlatBufferLayout(IEnumerable<long> lengths)
    {
        ArgumentNullException.ThrowIfNull(lengths);
        var offsets = new List<long>();
        var sizes = new List<long>();
        long next = 0;
        foreach (long length in lengths)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(length, nameof(lengths));
            offsets.Add(next);
            sizes.Add(length);
            next = checked(next + RoundUp(length));
        }

        Offsets = offsets;
        Lengths = sizes;
        TotalLength = next;
    }

    /// <summary>Each parameter's first element in the buffer, a multiple of <see cref="AlignmentElements"/>.</summary>
    public IReadOnlyList<long> Offsets { get; }

    /// <summary>Each parameter's element count.</summary>
    public IReadOnlyList<long> Lengths { get; }

    /// <summary>The buffer's element count: the last parameter's offset plus its length, rounded up to <see cref="AlignmentElements"/>.</summary>
    public long TotalLength { get; }

    private static long RoundUp(long length) => (length + AlignmentElements - 1) / AlignmentElements * AlignmentElements;

    /// <summary>
    /// The buffer length once padded so that <paramref name="worldSize"/> equal shards tile it: <c>W · S</c>, where
    /// the shard length <c>S</c> is <c>⌈TotalLength / W⌉</c> rounded up to <see cref="AlignmentElements"/> (PyTorch
    /// FSDP's flat-parameter padding, aligned here so that every shard starts on a 64-byte boundary).
    /// </summary>
    /// <param name="worldSize">The number of ranks sharing the buffer (≥ 1).</param>
    /// <returns>The padded element count, ≥ <see cref="TotalLength"/>; the padding is zeros and never read.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="worldSize"/> is less than 1.</exception>
    public long PaddedLength(int worldSize) => checked(ShardLength(worldSize) * worldSize);

    /// <summary>The element count of one rank's shard when <paramref name="worldSize"/> ranks share the buffer.</summary>
    /// <param name="worldSize">The number of ranks sharing the buffer (≥ 1).</param>
    /// <returns><c>⌈TotalLength / W⌉</c> rounded up to <see cref="AlignmentElements"/>.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="worldSize"/> is less than 1.</exception>
    public long ShardLength(int worldSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        return RoundUp((TotalLength + worldSize - 1) / worldSize);
    }

    /// <summary>The half-open element range <c>[Start, Start + Length)</c> of the padded buffer that rank <paramref name="rank"/> owns.</summary>
    /// <param name="rank">The rank, 0 ≤ rank &lt; <paramref name="worldSize"/>.</param>
    /// <param name="worldSize">The number of ranks sharing the buffer (≥ 1).</param>
    /// <returns>The start offset (a multiple of <see cref="AlignmentElements"/>) and the length (<see cref="ShardLength"/>).</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="worldSize"/> is less than 1, or <paramref name="rank"/> is outside [0, worldSize).</exception>
    public (long Start, long Length) ShardRange(int rank, int worldSize)
    {
        long length = ShardLength(worldSize);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, worldSize);
        return (checked(rank * length), length);
    }
}
