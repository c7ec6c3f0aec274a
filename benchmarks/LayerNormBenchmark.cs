using System.Diagnostics;
using System.Runtime.InteropServices;
using ComposerSharp.Algorithms;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 1: forward plus backward of one LayerNorm on a Float32 input (the residual stream of a mixed-precision
/// transformer), the plain module versus <see cref="LPLayerNorm"/> under amp_bf16 and amp_fp16, next to a large
/// tensor copy that gives the memory bandwidth this machine reaches at the same moment.
/// </summary>
/// <remarks>
/// Backward is <c>torch.autograd.grad</c> of the output with respect to the input, weight and bias with a fixed
/// random output gradient in the output's dtype (as the next layer would send it), so no <c>.grad</c> accumulation
/// is timed. Bytes that must move per element: the forward reads the input and writes the output, the backward
/// reads the output gradient and the input and writes the input gradient: 3 × input bytes + 2 × output bytes
/// (20 for Float32, 16 for Float32 in / BFloat16 out, 10 for BFloat16 in and out); the copy moves 2 × 4 bytes.
/// </remarks>
internal static class LayerNormBenchmark
{
    private const string Fp32 = "LayerNorm (fp32 kernel)";
    private const string Bf16 = "LPLayerNorm amp_bf16";
    private const string Fp16 = "LPLayerNorm amp_fp16";
    private const string Bf16In = "LPLayerNorm amp_bf16, bf16 in";
    private const string Copy = "copy 256 MiB";

    private static readonly long[][] Shapes = { new long[] { 8, 512, 768 }, new long[] { 32, 128, 768 }, new long[] { 4, 2048, 1024 } };

    /// <summary>Runs the comparison for three shapes: BERT-base-like [8,512,768] and [32,128,768], and a long-sequence [4,2048,1024].</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("layernorm", "(1) LayerNorm forward+backward, Float32 input: fp32 vs LPLayerNorm");
        report.Columns.AddRange(new[] { "shape", "variant", "ms (median ±IQR/2)", "ratio vs fp32", "bytes/elem", "GB/s", "% of copy" });
        var data = new List<LayerNormRow>();
        using Tensor src = torch.randn(64L * 1024 * 1024);
        using Tensor dst = torch.empty_like(src);
        double copyBytes = 2.0 * src.numel() * 4;
        (int warmup, int rounds) = settings.LayerNorm;
        bool fp16Works = true;
        string? fp16Error = null;

        foreach (long[] shape in Shapes)
        {
            using var shapeScope = torch.NewDisposeScope();
            long hidden = shape[^1];
            long elements = shape.Aggregate(1L, (a, b) => a * b);
            torch.manual_seed(1);
            Tensor x = torch.randn(shape).requires_grad_(true);
            Tensor xBf16 = x.detach().to(ScalarType.BFloat16).requires_grad_(true);
            Tensor dy32 = torch.randn(shape);
            Tensor dyBf16 = dy32.to(ScalarType.BFloat16);
            Tensor dyFp16 = dy32.to(ScalarType.Float16);
            LayerNorm plain = nn.LayerNorm(hidden);
            var lp = new LPLayerNorm(nn.LayerNorm(hidden));
            Tensor[] plainParams = { plain.weight!, plain.bias! };
            Tensor[] lpParams = { lp.weight!, lp.bias! };

            var variants = new List<Variant>
            {
                new(Fp32, () => FwdBwd(Precision.AmpBf16, plain, x, dy32, plainParams, ScalarType.Float32)),
                new(Bf16, () => FwdBwd(Precision.AmpBf16, lp, x, dyBf16, lpParams, ScalarType.BFloat16)),
                new(Bf16In, () => FwdBwd(Precision.AmpBf16, lp, xBf16, dyBf16, lpParams, ScalarType.BFloat16)),
                new(Copy, () => CopyOnce(src, dst)),
            };
            if (fp16Works)
            {
                try
                {
                    FwdBwd(Precision.AmpFp16, lp, x, dyFp16, lpParams, ScalarType.Float16);
                    variants.Insert(2, new(Fp16, () => FwdBwd(Precision.AmpFp16, lp, x, dyFp16, lpParams, ScalarType.Float16)));
                }
                catch (Exception ex) when (ex is ExternalException or InvalidOperationException or NotSupportedException)
                {
                    fp16Works = false;
                    fp16Error = ex.Message.Split('\n')[0];
                }
            }

            Interleaved run = Interleaved.Run(variants, warmup, rounds);
            Stats copy = run.StatsOf(Copy);
            double copyGbps = copyBytes / (copy.Median * 1e6);
            string shapeText = $"[{string.Join(",", shape)}]";
            foreach (Variant v in variants)
            {
                Stats s = run.StatsOf(v.Name);
                if (v.Name == Copy)
                {
                    report.Rows.Add(new[] { shapeText, v.Name, Fmt.Ms(s), string.Empty, "8", Fmt.N(copyGbps, 1), "100" });
                    data.Add(new LayerNormRow(shapeText, v.Name, s, null, 8, copyGbps, 100));
                    continue;
                }

                int bytesPerElement = v.Name switch
                {
                    Fp32 => 3 * 4 + 2 * 4,
                    Bf16In => 3 * 2 + 2 * 2,
                    _ => 3 * 4 + 2 * 2,
                };
                double gbps = elements * bytesPerElement / (s.Median * 1e6);
                Stats? ratio = v.Name == Fp32 ? null : run.Ratio(v.Name, Fp32);
                report.Rows.Add(new[]
                {
                    shapeText, v.Name, Fmt.Ms(s), ratio is null ? "1" : Fmt.N(ratio.Median, 2), bytesPerElement.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    Fmt.N(gbps, 1), Fmt.N(100 * gbps / copyGbps, 0),
                });
                data.Add(new LayerNormRow(shapeText, v.Name, s, ratio, bytesPerElement, gbps, 100 * gbps / copyGbps));
                if (v.Name == Bf16 && shape[1] == 512)
                {
                    report.Targets.Add(TargetCheck.AtMost("LPLayerNorm amp_bf16 fwd+bwd ≤ 0.7 × fp32 at [8,512,768]", ratio!.Median, 0.7));
                }
            }
        }

        report.Data = data;
        report.Notes.Add("Ratios are medians of per-round ratios (variants interleaved in rotated order); GB/s counts the bytes that must move: 3 × input + 2 × output bytes per element.");
        report.Notes.Add("All variants run inside an amp_bf16 (or amp_fp16) autocast scope, as in a mixed-precision model; the plain LayerNorm keeps its Float32 kernel there.");
        report.Notes.Add("'bf16 in' is the same module when the residual stream already arrives in BFloat16 (post-LN blocks after an LPLayerNorm): no cast is needed.");
        if (!fp16Works)
        {
            report.Notes.Add($"amp_fp16 skipped: this libtorch has no CPU kernel for it ({fp16Error}).");
        }

        report.Load = meter.Stop();
        return report;
    }

    private static double FwdBwd(Precision precision, nn.Module<Tensor, Tensor> module, Tensor x, Tensor dy, Tensor[] parameters, ScalarType expected)
    {
        using var scope = torch.NewDisposeScope();
        using AutocastScope autocast = precision.Enter(DeviceType.CPU);
        var clock = Stopwatch.StartNew();
        Tensor y = module.call(x);
        torch.autograd.grad(new[] { y }, new[] { x, parameters[0], parameters[1] }, new[] { dy });
        double ms = clock.Elapsed.TotalMilliseconds;
        if (y.dtype != expected)
        {
            throw new InvalidOperationException($"{module.GetType().Name} under {precision.ToComposerName()} returned {y.dtype}; the benchmark expects {expected}.");
        }

        return ms;
    }

    private static double CopyOnce(Tensor src, Tensor dst)
    {
        var clock = Stopwatch.StartNew();
        dst.copy_(src);
        return clock.Elapsed.TotalMilliseconds;
    }
}

/// <summary>One row of part 1.</summary>
/// <param name="Shape">Input shape.</param>
/// <param name="Variant">Module and precision.</param>
/// <param name="Ms">Forward+backward time (ms) statistics.</param>
/// <param name="RatioVsFp32">Per-round time ratio against the fp32 LayerNorm (null for the baseline and the copy).</param>
/// <param name="BytesPerElement">Bytes that must move per element.</param>
/// <param name="Gbps">Achieved bandwidth, GB/s (10^9 bytes).</param>
/// <param name="PercentOfCopy">Achieved bandwidth as a percentage of the copy's.</param>
internal sealed record LayerNormRow(string Shape, string Variant, Stats Ms, Stats? RatioVsFp32, int BytesPerElement, double Gbps, double PercentOfCopy);
