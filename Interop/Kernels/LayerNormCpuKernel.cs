using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TorchSharp.torch;

namespace ComposerSharp.Interop.Kernels;

/// <summary>Which instruction set the CPU LayerNorm kernel uses for its inner loops.</summary>
public enum SimdPath
{
    /// <summary>The widest the CPU has: AVX-512 (F + BW), else AVX2, else scalar.</summary>
    Auto,

    /// <summary>512-bit vectors (AVX-512 F and BW); refused when the CPU lacks them.</summary>
    Avx512,

    /// <summary>256-bit vectors (AVX2); refused when the CPU lacks them.</summary>
    Avx2,

    /// <summary>Plain scalar C#, on any CPU.</summary>
    Scalar,
}

/// <summary>
/// The unsafe part of the fused CPU LayerNorm: row-wise forward and backward over contiguous
/// <c>[rows, width]</c> buffers with System.Runtime.Intrinsics, Float32 accumulation everywhere.
/// </summary>
/// <remarks>
/// <para>
/// Forward reads each input row (Float32 or BFloat16) once from memory, computes the mean (as the first element
/// plus the mean of the differences to it, so a constant row's mean is exact) and the centred variance in Float32
/// (two passes over the row while it sits in L1; a constant row has variance exactly 0), writes <c>(x − mean)·rstd·w + b</c> once, rounded to
/// BFloat16 with round-to-nearest-even on the bit pattern (NaN becomes c10's quiet NaN 0x7FC0, as
/// <c>c10::BFloat16</c>'s scalar conversion does), and saves mean and rstd per row in Float32.
/// </para>
/// <para>
/// Backward (the formula of libtorch's <c>layer_norm_backward</c>): with <c>x̂ = (x − mean)·rstd</c> and
/// <c>g = dy·w</c>, <c>dx = rstd·(g − mean(g) − x̂·mean(g·x̂))</c> in Float32, written once in the input's dtype
/// (two passes per row: the sums, then dx; the BFloat16 <c>dy</c> is widened and <c>dx</c> rounded in registers, and
/// several accumulators break the add chains, which the profile (benchmark part <c>layernorm-profile</c>) showed to
/// bound the kernel more than memory);
/// <c>dW = Σ_rows dy·x̂</c> and <c>db = Σ_rows dy</c> are reduced deterministically: rows are cut into chunks of
/// <see cref="ChunkRows"/> rows, each chunk adds its rows in order into its own Float32 partial sums, and the
/// partials are added in chunk order. The result depends on neither the worker count nor the scheduling, so it is
/// bitwise the same for any number of workers (deterministic mode holds). The vector path (AVX-512, AVX2, scalar)
/// changes the order of the within-row sums, so results are bitwise reproducible per path, not across paths.
/// </para>
/// <para>
/// Threads: chunks are handed to .NET thread-pool workers (<see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/>),
/// at most the given worker count (by default libtorch's intra-op thread count; <c>FusedLayerNormOptions.Workers</c>
/// in Algorithms/LowPrecisionLayerNorm says how these share the cores with libtorch's OpenMP threads). The unsafe code of the
/// fused LayerNorm lives here because this is the one project allowed to use <c>unsafe</c>; the autograd function
/// and the module wiring are in <c>Algorithms/LowPrecisionLayerNorm/</c> (<c>FusedLayerNorm</c>, <c>LPLayerNorm</c>).
/// </para>
/// </remarks>
internal static unsafe class LayerNormCpuKernel
{
    /// <summary>Rows per chunk of the deterministic weight/bias reduction (fixed: changing it changes the rounding).</summary>
    public const int ChunkRows = 16;

    /// <summary>Whether <paramref name="path"/> can run on this CPU.</summary>
    public static bool IsSupported(SimdPath path) => path switch
    {
        SimdPath.Auto or SimdPath.Scalar => true,
        SimdPath.Avx512 => Avx512F.IsSupported && Avx512BW.IsSupported,
        SimdPath.Avx2 => Avx2.IsSupported,
        _ => false,
    };

    /// <summary>The path <see cref="SimdPath.Auto"/> picks on this CPU.</summary>
    public static SimdPath Resolve(SimdPath path)
    {
        if (path != SimdPath.Auto)
        {
            if (!IsSupported(path))
            {
                throw new PlatformNotSupportedException($"SIMD path {path} is not supported by this CPU (AVX-512 F+BW: {Avx512F.IsSupported && Avx512BW.IsSupported}, AVX2: {Avx2.IsSupported}).");
            }

            return path;
        }

        return IsSupported(SimdPath.Avx512) ? SimdPath.Avx512 : Avx2.IsSupported ? SimdPath.Avx2 : SimdPath.Scalar;
    }

    /// <summary>
    /// Forward over <paramref name="rows"/> rows of <paramref name="width"/>: <paramref name="input"/> (Float32 or
    /// BFloat16, contiguous) to <paramref name="output"/> (BFloat16, contiguous, same element count), saving
    /// <paramref name="mean"/> and <paramref name="rstd"/> (Float32, <paramref name="rows"/> elements).
    /// <paramref name="weight"/> and <paramref name="bias"/>: Float32 of <paramref name="width"/> elements, or null.
    /// </summary>
    public static void Forward(Tensor input, Tensor? weight, Tensor? bias, double eps, Tensor output, Tensor mean, Tensor rstd, long rows, int width, SimdPath path, int workers)
    {
        SimdPath p = Resolve(path);
        bool bf16In = input.dtype == ScalarType.BFloat16;
        float epsF = (float)eps;
        float[] ones = weight is null ? Filled(width, 1f) : Array.Empty<float>();
        float[] zeros = bias is null ? new float[width] : Array.Empty<float>();
        fixed (byte* xb = input.bytes, yb = output.bytes, mb = mean.bytes, rb = rstd.bytes)
        fixed (byte* wb = weight is null ? default : weight.bytes, bb = bias is null ? default : bias.bytes)
        fixed (float* onesP = ones, zerosP = zeros)
        {
            nint x = (nint)xb, y = (nint)yb, m = (nint)mb, r = (nint)rb;
            nint w = weight is null ? (nint)onesP : (nint)wb;
            nint b = bias is null ? (nint)zerosP : (nint)bb;
            RunChunks(rows, workers, width, (chunk, scratch) =>
            {
                float* row = scratch;
                long end = Math.Min(rows, (chunk + 1) * (long)ChunkRows);
                for (long i = chunk * (long)ChunkRows; i < end; i++)
                {
                    float* xr;
                    if (bf16In)
                    {
                        Bf16ToF32((ushort*)x + i * width, row, width, p);
                        xr = row;
                    }
                    else
                    {
                        xr = (float*)x + i * width;
                    }

                    // The mean as the row's first element plus the mean of the differences to it: a row of one
                    // value gets exactly that value as its mean (a plain sum / width can be off by an ulp), hence
                    // zero deviations, zero variance and an output of exactly the bias, as libtorch gives.
                    float pivot = xr[0];
                    float mu = pivot + (SumOfDifferences(xr, pivot, width, p) / width);
                    float var = SumSquaredDeviation(xr, mu, width, p) / width;
                    float rs = 1f / MathF.Sqrt(var + epsF);
                    ((float*)m)[i] = mu;
                    ((float*)r)[i] = rs;
                    NormalizeToBf16(xr, mu, rs, (float*)w, (float*)b, (ushort*)y + i * width, width, p);
                }
            });
        }
    }

    /// <summary>
    /// Backward: from <paramref name="gradOutput"/> (BFloat16, contiguous), the saved <paramref name="input"/>,
    /// <paramref name="mean"/> and <paramref name="rstd"/>, writes <paramref name="gradInput"/> (the input's dtype)
    /// and, when not null, <paramref name="gradWeight"/> and <paramref name="gradBias"/> (Float32, <paramref name="width"/>).
    /// </summary>
    public static void Backward(Tensor gradOutput, Tensor input, Tensor? weight, Tensor mean, Tensor rstd, Tensor gradInput, Tensor? gradWeight, Tensor? gradBias, long rows, int width, SimdPath path, int workers)
    {
        SimdPath p = Resolve(path);
        bool bf16In = input.dtype == ScalarType.BFloat16;
        int chunks = (int)((rows + ChunkRows - 1) / ChunkRows);
        bool reduce = gradWeight is not null || gradBias is not null;
        // One Float32 partial pair (dW, db) per chunk, rented (a fresh array of this size would be a large-object-heap
        // allocation zeroed on the calling thread and collected with generation 2) and zeroed by the chunk's worker.
        long partialFloats = reduce ? (long)chunks * 2 * width : 0;
        float[] partials = reduce ? ArrayPool<float>.Shared.Rent(checked((int)partialFloats)) : Array.Empty<float>();
        float[] ones = weight is null ? Filled(width, 1f) : Array.Empty<float>();
        try
        {
            fixed (byte* gb = gradOutput.bytes, xb = input.bytes, mb = mean.bytes, rb = rstd.bytes, dxb = gradInput.bytes)
            fixed (byte* wb = weight is null ? default : weight.bytes)
            fixed (float* onesP = ones, partialsP = partials)
            {
                nint g = (nint)gb, x = (nint)xb, m = (nint)mb, r = (nint)rb, dx = (nint)dxb, part = (nint)partialsP;
                nint w = weight is null ? (nint)onesP : (nint)wb;
                RunChunks(rows, workers, width, (chunk, scratch) =>
                {
                    float* xRow = scratch;
                    float* dW = reduce ? (float*)part + ((long)chunk * 2 * width) : null;
                    float* dB = reduce ? dW + width : null;
                    if (reduce)
                    {
                        new Span<float>(dW, 2 * width).Clear();
                    }
                    long end = Math.Min(rows, (chunk + 1) * (long)ChunkRows);
                    for (long i = chunk * (long)ChunkRows; i < end; i++)
                    {
                        float* xr;
                        if (bf16In)
                        {
                            Bf16ToF32((ushort*)x + i * width, xRow, width, p);
                            xr = xRow;
                        }
                        else
                        {
                            xr = (float*)x + i * width;
                        }

                        ushort* dyr = (ushort*)g + i * width;
                        float mu = ((float*)m)[i];
                        float rs = ((float*)r)[i];
                        (float sumG, float sumGXhat) = BackwardSums(xr, dyr, (float*)w, mu, rs, dW, dB, width, p);
                        InputGradient(
                            xr, dyr, (float*)w, mu, rs, sumG / width, sumGXhat / width,
                            bf16In ? null : (float*)dx + i * width, bf16In ? (ushort*)dx + i * width : null, width, p);
                    }
                });

                if (reduce)
                {
                    // Partials added in chunk order: the same sums in the same order for any worker count.
                    float[] sums = new float[2 * width];
                    fixed (float* s = sums)
                    {
                        for (int c = 0; c < chunks; c++)
                        {
                            Add(s, (float*)part + ((long)c * 2 * width), 2 * width, p);
                        }

                        if (gradWeight is not null)
                        {
                            new ReadOnlySpan<float>(s, width).CopyTo(MemoryMarshal.Cast<byte, float>(gradWeight.bytes));
                        }

                        if (gradBias is not null)
                        {
                            new ReadOnlySpan<float>(s + width, width).CopyTo(MemoryMarshal.Cast<byte, float>(gradBias.bytes));
                        }
                    }
                }
            }
        }
        finally
        {
            if (reduce)
            {
                ArrayPool<float>.Shared.Return(partials);
            }
        }
    }

    /// <summary>Converts <paramref name="n"/> BFloat16 bit patterns to Float32 (exact: a 16-bit shift).</summary>
    public static void Bf16ToF32(ushort* src, float* dst, int n, SimdPath p)
    {
        int i = 0;
        if (p == SimdPath.Avx512)
        {
            for (; i <= n - 16; i += 16)
            {
                Vector512<uint> wide = Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i));
                Vector512.ShiftLeft(wide, 16).AsSingle().Store(dst + i);
            }
        }
        else if (p == SimdPath.Avx2)
        {
            for (; i <= n - 8; i += 8)
            {
                Vector256<int> wide = Avx2.ConvertToVector256Int32(Vector128.Load(src + i));
                Vector256.ShiftLeft(wide, 16).AsSingle().Store(dst + i);
            }
        }

        for (; i < n; i++)
        {
            dst[i] = BitConverter.Int32BitsToSingle(src[i] << 16);
        }
    }

    /// <summary>Rounds <paramref name="src"/> to BFloat16 bit patterns in <paramref name="dst"/> (same length) on path <paramref name="p"/>; see the pointer overload.</summary>
    /// <exception cref="ArgumentException">The lengths differ.</exception>
    public static void F32ToBf16(ReadOnlySpan<float> src, Span<ushort> dst, SimdPath p)
    {
        if (src.Length != dst.Length)
        {
            throw new ArgumentException($"dst has {dst.Length} elements; expected {src.Length}, as src.", nameof(dst));
        }

        fixed (float* s = src)
        fixed (ushort* d = dst)
        {
            F32ToBf16(s, d, src.Length, Resolve(p));
        }
    }

    /// <summary>Rounds <paramref name="n"/> Float32 values to BFloat16 (nearest, ties to even; NaN to 0x7FC0).</summary>
    public static void F32ToBf16(float* src, ushort* dst, int n, SimdPath p)
    {
        int i = 0;
        if (p == SimdPath.Avx512)
        {
            for (; i <= n - 16; i += 16)
            {
                StoreBf16(Vector512.Load(src + i), dst + i);
            }
        }
        else if (p == SimdPath.Avx2)
        {
            for (; i <= n - 8; i += 8)
            {
                StoreBf16(Vector256.Load(src + i), dst + i);
            }
        }

        for (; i < n; i++)
        {
            dst[i] = ToBf16(src[i]);
        }
    }

    /// <summary>16 Float32 lanes rounded to BFloat16 bit patterns (nearest, ties to even; NaN to 0x7FC0) and stored at <paramref name="dst"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreBf16(Vector512<float> v, ushort* dst)
    {
        Vector512<uint> bits = v.AsUInt32();
        Vector512<uint> rounded = bits + Vector512.Create(0x7FFFu) + (Vector512.ShiftRightLogical(bits, 16) & Vector512.Create(1u));
        Vector512<uint> ordered = Vector512.Equals(v, v).AsUInt32();
        Vector512<uint> chosen = Vector512.ShiftRightLogical(Vector512.ConditionalSelect(ordered, rounded, Vector512.Create(0x7FC0_0000u)), 16);
        Avx512F.ConvertToVector256UInt16(chosen).Store(dst);
    }

    /// <summary>8 Float32 lanes rounded to BFloat16 bit patterns (as the 512-bit overload) and stored at <paramref name="dst"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreBf16(Vector256<float> v, ushort* dst)
    {
        Vector256<uint> bits = v.AsUInt32();
        Vector256<uint> rounded = bits + Vector256.Create(0x7FFFu) + (Vector256.ShiftRightLogical(bits, 16) & Vector256.Create(1u));
        Vector256<uint> ordered = Vector256.Equals(v, v).AsUInt32();
        Vector256<uint> chosen = Vector256.ShiftRightLogical(Vector256.ConditionalSelect(ordered, rounded, Vector256.Create(0x7FC0_0000u)), 16);
        Vector128.Narrow(chosen.GetLower(), chosen.GetUpper()).Store(dst);
    }

    /// <summary>16 BFloat16 bit patterns at <paramref name="src"/> widened to Float32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> LoadBf16x16(ushort* src) =>
        Vector512.ShiftLeft(Avx512F.ConvertToVector512UInt32(Vector256.Load(src)), 16).AsSingle();

    /// <summary>8 BFloat16 bit patterns at <paramref name="src"/> widened to Float32 (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> LoadBf16x8(ushort* src) =>
        Vector256.ShiftLeft(Avx2.ConvertToVector256Int32(Vector128.Load(src)), 16).AsSingle();

    /// <summary>One BFloat16 bit pattern widened to Float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Bf16(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Scalar Float32 → BFloat16 bits, round to nearest even, NaN to 0x7FC0.</summary>
    public static ushort ToBf16(float value)
    {
        if (float.IsNaN(value))
        {
            return 0x7FC0;
        }

        uint bits = BitConverter.SingleToUInt32Bits(value);
        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    /// <summary>Σ (x[i] − <paramref name="pivot"/>) over one row, with the same add order as the other row sums of <paramref name="p"/>.</summary>
    private static float SumOfDifferences(float* x, float pivot, int n, SimdPath p)
    {
        int i = 0;
        float total = 0f;
        if (p == SimdPath.Avx512)
        {
            // Four accumulators: one would chain every add on the previous one's latency.
            Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, c = Vector512.Create(pivot);
            for (; i <= n - 64; i += 64)
            {
                a0 += Vector512.Load(x + i) - c;
                a1 += Vector512.Load(x + i + 16) - c;
                a2 += Vector512.Load(x + i + 32) - c;
                a3 += Vector512.Load(x + i + 48) - c;
            }

            for (; i <= n - 16; i += 16)
            {
                a0 += Vector512.Load(x + i) - c;
            }

            total = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        else if (p == SimdPath.Avx2)
        {
            Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, c = Vector256.Create(pivot);
            for (; i <= n - 32; i += 32)
            {
                a0 += Vector256.Load(x + i) - c;
                a1 += Vector256.Load(x + i + 8) - c;
                a2 += Vector256.Load(x + i + 16) - c;
                a3 += Vector256.Load(x + i + 24) - c;
            }

            for (; i <= n - 8; i += 8)
            {
                a0 += Vector256.Load(x + i) - c;
            }

            total = Vector256.Sum((a0 + a1) + (a2 + a3));
        }

        for (; i < n; i++)
        {
            total += x[i] - pivot;
        }

        return total;
    }

    private static float SumSquaredDeviation(float* x, float mu, int n, SimdPath p)
    {
        int i = 0;
        float total = 0f;
        if (p == SimdPath.Avx512)
        {
            Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, m = Vector512.Create(mu);
            for (; i <= n - 64; i += 64)
            {
                Vector512<float> d0 = Vector512.Load(x + i) - m, d1 = Vector512.Load(x + i + 16) - m;
                Vector512<float> d2 = Vector512.Load(x + i + 32) - m, d3 = Vector512.Load(x + i + 48) - m;
                a0 += d0 * d0;
                a1 += d1 * d1;
                a2 += d2 * d2;
                a3 += d3 * d3;
            }

            for (; i <= n - 16; i += 16)
            {
                Vector512<float> d = Vector512.Load(x + i) - m;
                a0 += d * d;
            }

            total = Vector512.Sum((a0 + a1) + (a2 + a3));
        }
        else if (p == SimdPath.Avx2)
        {
            Vector256<float> a0 = Vector256<float>.Zero, a1 = a0, a2 = a0, a3 = a0, m = Vector256.Create(mu);
            for (; i <= n - 32; i += 32)
            {
                Vector256<float> d0 = Vector256.Load(x + i) - m, d1 = Vector256.Load(x + i + 8) - m;
                Vector256<float> d2 = Vector256.Load(x + i + 16) - m, d3 = Vector256.Load(x + i + 24) - m;
                a0 += d0 * d0;
                a1 += d1 * d1;
                a2 += d2 * d2;
                a3 += d3 * d3;
            }

            for (; i <= n - 8; i += 8)
            {
                Vector256<float> d = Vector256.Load(x + i) - m;
                a0 += d * d;
            }

            total = Vector256.Sum((a0 + a1) + (a2 + a3));
        }

        for (; i < n; i++)
        {
            float d = x[i] - mu;
            total += d * d;
        }

        return total;
    }

    /// <summary>Writes <c>(x − mu)·rs·w + b</c> of one row rounded to BFloat16 into <paramref name="y"/> (no Float32 copy of the row).</summary>
    private static void NormalizeToBf16(float* x, float mu, float rs, float* w, float* b, ushort* y, int n, SimdPath p)
    {
        int i = 0;
        if (p == SimdPath.Avx512)
        {
            Vector512<float> m = Vector512.Create(mu), r = Vector512.Create(rs);
            for (; i <= n - 16; i += 16)
            {
                Vector512<float> xhat = (Vector512.Load(x + i) - m) * r;
                StoreBf16((xhat * Vector512.Load(w + i)) + Vector512.Load(b + i), y + i);
            }
        }
        else if (p == SimdPath.Avx2)
        {
            Vector256<float> m = Vector256.Create(mu), r = Vector256.Create(rs);
            for (; i <= n - 8; i += 8)
            {
                Vector256<float> xhat = (Vector256.Load(x + i) - m) * r;
                StoreBf16((xhat * Vector256.Load(w + i)) + Vector256.Load(b + i), y + i);
            }
        }

        for (; i < n; i++)
        {
            y[i] = ToBf16(((x[i] - mu) * rs * w[i]) + b[i]);
        }
    }

    /// <summary>Σ dy·w and Σ dy·w·x̂ over one row (dy: BFloat16 bit patterns, widened in registers); adds dy·x̂ into <paramref name="dW"/> and dy into <paramref name="dB"/> (when not null).</summary>
    private static (float SumG, float SumGXhat) BackwardSums(float* x, ushort* dy, float* w, float mu, float rs, float* dW, float* dB, int n, SimdPath p)
    {
        int i = 0;
        float sumG = 0f, sumGX = 0f;
        bool reduce = dW is not null;
        if (p == SimdPath.Avx512)
        {
            Vector512<float> accG = Vector512<float>.Zero, accGX = Vector512<float>.Zero, m = Vector512.Create(mu), r = Vector512.Create(rs);
            Vector512<float> accG1 = Vector512<float>.Zero, accGX1 = Vector512<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                // Two accumulator pairs, so that consecutive iterations do not wait on each other's adds.
                Vector512<float> xhat0 = (Vector512.Load(x + i) - m) * r, xhat1 = (Vector512.Load(x + i + 16) - m) * r;
                Vector512<float> d0 = LoadBf16x16(dy + i), d1 = LoadBf16x16(dy + i + 16);
                Vector512<float> g0 = d0 * Vector512.Load(w + i), g1 = d1 * Vector512.Load(w + i + 16);
                accG += g0;
                accG1 += g1;
                accGX += g0 * xhat0;
                accGX1 += g1 * xhat1;
                if (reduce)
                {
                    (Vector512.Load(dW + i) + (d0 * xhat0)).Store(dW + i);
                    (Vector512.Load(dW + i + 16) + (d1 * xhat1)).Store(dW + i + 16);
                    (Vector512.Load(dB + i) + d0).Store(dB + i);
                    (Vector512.Load(dB + i + 16) + d1).Store(dB + i + 16);
                }
            }

            for (; i <= n - 16; i += 16)
            {
                Vector512<float> xhat = (Vector512.Load(x + i) - m) * r;
                Vector512<float> d = LoadBf16x16(dy + i);
                Vector512<float> gv = d * Vector512.Load(w + i);
                accG += gv;
                accGX += gv * xhat;
                if (reduce)
                {
                    (Vector512.Load(dW + i) + (d * xhat)).Store(dW + i);
                    (Vector512.Load(dB + i) + d).Store(dB + i);
                }
            }

            sumG = Vector512.Sum(accG + accG1);
            sumGX = Vector512.Sum(accGX + accGX1);
        }
        else if (p == SimdPath.Avx2)
        {
            Vector256<float> accG = Vector256<float>.Zero, accGX = Vector256<float>.Zero, m = Vector256.Create(mu), r = Vector256.Create(rs);
            Vector256<float> accG1 = Vector256<float>.Zero, accGX1 = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                Vector256<float> xhat0 = (Vector256.Load(x + i) - m) * r, xhat1 = (Vector256.Load(x + i + 8) - m) * r;
                Vector256<float> d0 = LoadBf16x8(dy + i), d1 = LoadBf16x8(dy + i + 8);
                Vector256<float> g0 = d0 * Vector256.Load(w + i), g1 = d1 * Vector256.Load(w + i + 8);
                accG += g0;
                accG1 += g1;
                accGX += g0 * xhat0;
                accGX1 += g1 * xhat1;
                if (reduce)
                {
                    (Vector256.Load(dW + i) + (d0 * xhat0)).Store(dW + i);
                    (Vector256.Load(dW + i + 8) + (d1 * xhat1)).Store(dW + i + 8);
                    (Vector256.Load(dB + i) + d0).Store(dB + i);
                    (Vector256.Load(dB + i + 8) + d1).Store(dB + i + 8);
                }
            }

            for (; i <= n - 8; i += 8)
            {
                Vector256<float> xhat = (Vector256.Load(x + i) - m) * r;
                Vector256<float> d = LoadBf16x8(dy + i);
                Vector256<float> gv = d * Vector256.Load(w + i);
                accG += gv;
                accGX += gv * xhat;
                if (reduce)
                {
                    (Vector256.Load(dW + i) + (d * xhat)).Store(dW + i);
                    (Vector256.Load(dB + i) + d).Store(dB + i);
                }
            }

            sumG = Vector256.Sum(accG + accG1);
            sumGX = Vector256.Sum(accGX + accGX1);
        }

        for (; i < n; i++)
        {
            float xhat = (x[i] - mu) * rs;
            float d = Bf16(dy[i]);
            float gv = d * w[i];
            sumG += gv;
            sumGX += gv * xhat;
            if (reduce)
            {
                dW[i] += d * xhat;
                dB[i] += d;
            }
        }

        return (sumG, sumGX);
    }

    /// <summary>
    /// <c>dx = rs·(dy·w − meanG − x̂·meanGX)</c> of one row, dy as BFloat16 bit patterns widened in registers, written
    /// as Float32 into <paramref name="dx"/> or, when that is null, rounded to BFloat16 into <paramref name="dxBf16"/>.
    /// </summary>
    private static void InputGradient(float* x, ushort* dy, float* w, float mu, float rs, float meanG, float meanGX, float* dx, ushort* dxBf16, int n, SimdPath p)
    {
        int i = 0;
        bool f32 = dx is not null;
        if (p == SimdPath.Avx512)
        {
            Vector512<float> m = Vector512.Create(mu), r = Vector512.Create(rs), mg = Vector512.Create(meanG), mgx = Vector512.Create(meanGX);
            for (; i <= n - 16; i += 16)
            {
                Vector512<float> xhat = (Vector512.Load(x + i) - m) * r;
                Vector512<float> gv = LoadBf16x16(dy + i) * Vector512.Load(w + i);
                Vector512<float> g = r * (gv - mg - (xhat * mgx));
                if (f32)
                {
                    g.Store(dx + i);
                }
                else
                {
                    StoreBf16(g, dxBf16 + i);
                }
            }
        }
        else if (p == SimdPath.Avx2)
        {
            Vector256<float> m = Vector256.Create(mu), r = Vector256.Create(rs), mg = Vector256.Create(meanG), mgx = Vector256.Create(meanGX);
            for (; i <= n - 8; i += 8)
            {
                Vector256<float> xhat = (Vector256.Load(x + i) - m) * r;
                Vector256<float> gv = LoadBf16x8(dy + i) * Vector256.Load(w + i);
                Vector256<float> g = r * (gv - mg - (xhat * mgx));
                if (f32)
                {
                    g.Store(dx + i);
                }
                else
                {
                    StoreBf16(g, dxBf16 + i);
                }
            }
        }

        for (; i < n; i++)
        {
            float xhat = (x[i] - mu) * rs;
            float gv = Bf16(dy[i]) * w[i];
            float g = rs * (gv - meanG - (xhat * meanGX));
            if (f32)
            {
                dx[i] = g;
            }
            else
            {
                dxBf16[i] = ToBf16(g);
            }
        }
    }

    private static void Add(float* acc, float* values, int n, SimdPath p)
    {
        int i = 0;
        if (p == SimdPath.Avx512)
        {
            for (; i <= n - 16; i += 16)
            {
                (Vector512.Load(acc + i) + Vector512.Load(values + i)).Store(acc + i);
            }
        }
        else if (p == SimdPath.Avx2)
        {
            for (; i <= n - 8; i += 8)
            {
                (Vector256.Load(acc + i) + Vector256.Load(values + i)).Store(acc + i);
            }
        }

        for (; i < n; i++)
        {
            acc[i] += values[i];
        }
    }

    private delegate void ChunkBody(int chunk, float* scratch);

    /// <summary>Runs <paramref name="body"/> for every chunk of <see cref="ChunkRows"/> rows on at most <paramref name="workers"/> workers, each with <paramref name="scratchFloats"/> floats of scratch.</summary>
    private static void RunChunks(long rows, int workers, int scratchFloats, ChunkBody body)
    {
        int chunks = checked((int)((rows + ChunkRows - 1) / ChunkRows));
        if (chunks == 0)
        {
            return;
        }

        if (workers <= 1 || chunks == 1)
        {
            float[] scratch = ArrayPool<float>.Shared.Rent(scratchFloats);
            try
            {
                fixed (float* s = scratch)
                {
                    for (int c = 0; c < chunks; c++)
                    {
                        body(c, s);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }

            return;
        }

        // Contiguous ranges of chunks per worker (fewer hand-offs than one task per chunk); the reduction order does not depend on it.
        int parts = Math.Min(workers, chunks);
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts }, part =>
        {
            int first = (int)((long)chunks * part / parts);
            int last = (int)((long)chunks * (part + 1) / parts);
            float[] scratch = ArrayPool<float>.Shared.Rent(scratchFloats);
            try
            {
                fixed (float* s = scratch)
                {
                    for (int c = first; c < last; c++)
                    {
                        body(c, s);
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(scratch);
            }
        });
    }

    private static float[] Filled(int n, float value)
    {
        float[] a = new float[n];
        Array.Fill(a, value);
        return a;
    }
}
