namespace ComposerSharp.Training.Optim;

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
}
