namespace ComposerSharp.Data;

/// <summary>
/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014): a tiny
/// generator whose output depends only on its 64-bit state, so every random choice in the data pipeline is the same
/// on every platform and .NET version. A mutable value type: pass it by <c>ref</c>.
/// </summary>
internal struct SplitMix64
{
    private ulong _state;

    /// <summary>Starts the sequence at <paramref name="state"/>.</summary>
    public SplitMix64(ulong state) => _state = state;

    /// <summary>
    /// A generator for one tuple of integers, e.g. (loader seed, collator seed, epoch, batch): distinct tuples give
    /// unrelated streams, and the same tuple always gives the same stream.
    /// </summary>
    public static SplitMix64 For(params ReadOnlySpan<long> parts)
    {
        ulong state = 0x853C49E6748FEA9BUL;
        foreach (long part in parts)
        {
            state = new SplitMix64(state ^ unchecked((ulong)part)).Next();
        }

        return new SplitMix64(state);
    }

    /// <summary>The next 64 random bits.</summary>
    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>A uniform double in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    /// <summary>A uniform integer in [0, <paramref name="bound"/>) (<paramref name="bound"/> ≥ 1; modulo bias below 2^-40 for bounds under 2^24).</summary>
    public int NextInt(int bound) => (int)(Next() % (ulong)bound);
}
