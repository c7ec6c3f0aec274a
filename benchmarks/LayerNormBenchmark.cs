using System.Diagnostics;
using System.Runtime.InteropServices;
using ComposerSharp.Algorithms;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
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
/// Next to <see cref="LPLayerNorm"/> (on CPU, the affine part split off so the weight and bias gradients
/// accumulate in Float32) run the path it replaced (libtorch's fused low-precision <c>layer_norm</c> on the cast
/// input, weight and bias) and the mixed-type candidate (BFloat16 input, Float32 weight and bias); every variant's
/// weight and bias gradients are also compared once, outside the timing, with a float64 reference.
/// </remarks>
internal static class LayerNormBenchmark
{
    private const string Fp32 = "LayerNorm (fp32 kernel)";
    private const string Bf16 = "LPLayerNorm amp_bf16 (libtorch, fp32 weight/bias grads)";
    private const string Kernel = "LPLayerNorm amp_bf16 fused kernel";
    private const string Kernel1 = "fused kernel, 1 worker";
    private const string KernelBf16In = "fused kernel, bf16 in";
    private const string Fp16 = "LPLayerNorm amp_fp16";
    private const string Bf16In = "LPLayerNorm amp_bf16 (libtorch), bf16 in";
    private const string FusedBf16 = "libtorch bf16 layer_norm (low-precision grads)";
    private const string FusedFp16 = "libtorch fp16 layer_norm (low-precision grads)";
    private const string MixedBf16 = "mixed bf16 x, fp32 w/b";
    private const string Copy = "copy 256 MiB";

    private static readonly long[][] Shapes = { new long[] { 8, 512, 768 }, new long[] { 32, 128, 768 }, new long[] { 4, 2048, 1024 } };

    /// <summary>Runs the comparison for three shapes: BERT-base-like [8,512,768] and [32,128,768], and a long-sequence [4,2048,1024].</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("layernorm", "(1) LayerNorm forward+backward, Float32 input: fp32 vs LPLayerNorm");
        report.Columns.AddRange(new[] { "shape", "variant", "ms (median ±IQR/2)", "ratio vs fp32", "bytes/elem", "GB/s", "% of copy", "dW / db / dx err", "vs low-precision-grad path" });
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
            LayerNorm original = nn.LayerNorm(hidden);
            var lp = new LPLayerNorm(original, LayerNormKernel.Libtorch);
            var lpKernel = new LPLayerNorm(original, LayerNormKernel.Fused); // the same Parameter objects
            var lpKernel1 = new LPLayerNorm(original, LayerNormKernel.Fused, new FusedLayerNormOptions { Workers = 1 });
            Tensor[] plainParams = { plain.weight!, plain.bias! };
            Tensor[] lpParams = { lp.weight!, lp.bias! };
            using (torch.no_grad())
            {
                // The same random affine parameters everywhere, so that the accuracy column is not of the trivial ones and zeros.
                lp.weight!.copy_(torch.rand(hidden) + 0.5);
                lp.bias!.copy_((torch.rand(hidden) - 0.5) * 0.2);
                plain.weight!.copy_(lp.weight!);
                plain.bias!.copy_(lp.bias!);
            }

            Func<Tensor, Tensor> fusedBf16 = input => FusedLayerNorm(input, lp, ScalarType.BFloat16, castParameters: true);
            Func<Tensor, Tensor> fusedFp16 = input => FusedLayerNorm(input, lp, ScalarType.Float16, castParameters: true);
            Func<Tensor, Tensor> mixedBf16 = input => FusedLayerNorm(input, lp, ScalarType.BFloat16, castParameters: false);
            var calls = new Dictionary<string, (Precision Precision, Func<Tensor, Tensor> Call, Tensor X, Tensor Dy, Tensor[] Parameters, ScalarType Dtype)>
            {
                [Fp32] = (Precision.AmpBf16, plain.call, x, dy32, plainParams, ScalarType.Float32),
                [Bf16] = (Precision.AmpBf16, lp.call, x, dyBf16, lpParams, ScalarType.BFloat16),
                [FusedBf16] = (Precision.AmpBf16, fusedBf16, x, dyBf16, lpParams, ScalarType.BFloat16),
                [MixedBf16] = (Precision.AmpBf16, mixedBf16, x, dyBf16, lpParams, ScalarType.BFloat16),
                [Bf16In] = (Precision.AmpBf16, lp.call, xBf16, dyBf16, lpParams, ScalarType.BFloat16),
                [Kernel] = (Precision.AmpBf16, lpKernel.call, x, dyBf16, lpParams, ScalarType.BFloat16),
                [Kernel1] = (Precision.AmpBf16, lpKernel1.call, x, dyBf16, lpParams, ScalarType.BFloat16),
                [KernelBf16In] = (Precision.AmpBf16, lpKernel.call, xBf16, dyBf16, lpParams, ScalarType.BFloat16),
            };
            if (fp16Works)
            {
                try
                {
                    FwdBwd(Precision.AmpFp16, lp.call, x, dyFp16, lpParams, ScalarType.Float16);
                    calls[Fp16] = (Precision.AmpFp16, lp.call, x, dyFp16, lpParams, ScalarType.Float16);
                    calls[FusedFp16] = (Precision.AmpFp16, fusedFp16, x, dyFp16, lpParams, ScalarType.Float16);
                }
                catch (Exception ex) when (ex is ExternalException or InvalidOperationException or NotSupportedException)
                {
                    fp16Works = false;
                    fp16Error = ex.Message.Split('\n')[0];
                }
            }

            var variants = calls
                .Select(c => new Variant(c.Key, () => FwdBwd(c.Value.Precision, c.Value.Call, c.Value.X, c.Value.Dy, c.Value.Parameters, c.Value.Dtype)))
                .Append(new Variant(Copy, () => CopyOnce(src, dst)))
                .ToList();
            Dictionary<string, string> errors = calls.ToDictionary(
                c => c.Key,
                c => GradientErrors(c.Value.Precision, c.Value.Call, c.Value.X, c.Value.Dy, c.Value.Parameters, hidden, lp.eps));
            Interleaved run = Interleaved.Run(variants, warmup, rounds);
            Stats copy = run.StatsOf(Copy);
            double copyGbps = copyBytes / (copy.Median * 1e6);
            string shapeText = $"[{string.Join(",", shape)}]";
            foreach (Variant v in variants)
            {
                Stats s = run.StatsOf(v.Name);
                if (v.Name == Copy)
                {
                    report.Rows.Add(new[] { shapeText, v.Name, Fmt.Ms(s), string.Empty, "8", Fmt.N(copyGbps, 1), "100", string.Empty, string.Empty });
                    data.Add(new LayerNormRow(shapeText, v.Name, s, null, 8, copyGbps, 100, null, null));
                    continue;
                }

                int bytesPerElement = v.Name switch
                {
                    Fp32 => 3 * 4 + 2 * 4,
                    Bf16In or KernelBf16In => 3 * 2 + 2 * 2,
                    _ => 3 * 4 + 2 * 2,
                };
                double gbps = elements * bytesPerElement / (s.Median * 1e6);
                Stats? ratio = v.Name == Fp32 ? null : run.Ratio(v.Name, Fp32);
                string? before = v.Name switch { Bf16 or Kernel or Kernel1 => FusedBf16, Fp16 => FusedFp16, KernelBf16In => Bf16In, _ => null };
                Stats? vsBefore = before is null ? null : run.Ratio(v.Name, before);
                report.Rows.Add(new[]
                {
                    shapeText, v.Name, Fmt.Ms(s), ratio is null ? "1" : Fmt.N(ratio.Median, 2), bytesPerElement.ToString(System.Globalization.CultureInfo.InvariantCulture),
                    Fmt.N(gbps, 1), Fmt.N(100 * gbps / copyGbps, 0), errors[v.Name], vsBefore is null ? string.Empty : Fmt.N(vsBefore.Median, 2),
                });
                data.Add(new LayerNormRow(shapeText, v.Name, s, ratio, bytesPerElement, gbps, 100 * gbps / copyGbps, errors[v.Name], vsBefore));
                if (v.Name == Kernel && shape[1] == 512)
                {
                    report.Targets.Add(TargetCheck.AtMost("LPLayerNorm amp_bf16 fwd+bwd ≤ 0.7 × fp32 at [8,512,768]", ratio!.Median, 0.7));
                }
            }
        }

        report.Data = data;
        report.Notes.Add("Ratios are medians of per-round ratios (variants interleaved in rotated order); GB/s counts the bytes that must move: 3 × input + 2 × output bytes per element.");
        report.Notes.Add("All variants run inside an amp_bf16 (or amp_fp16) autocast scope, as in a mixed-precision model; the plain LayerNorm keeps its Float32 kernel there.");
        report.Notes.Add("'bf16 in' is the same module when the residual stream already arrives in BFloat16 (post-LN blocks after an LPLayerNorm): no cast is needed.");
        report.Notes.Add("'fused kernel' is LPLayerNorm with the C# fused CPU kernel (Algorithms/LowPrecisionLayerNorm/FusedLayerNorm.cs), all workers or 1; its 'vs low-precision-grad path' column is against the fused libtorch path, and for 'bf16 in' against the libtorch LPLayerNorm with a bf16 input.");
        report.Notes.Add("'libtorch … layer_norm (low-precision grads)': libtorch's low-precision layer_norm on the cast input, weight and bias, LPLayerNorm's path before its weight and bias gradients were summed in Float32; 'mixed': BFloat16 input with the Float32 weight and bias (libtorch's mixed-type CPU kernel), a candidate fix.");
        report.Notes.Add("dW / db / dx err: max |gradient − float64 reference| / max |reference| for weight, bias and input, measured once per variant outside the timing (random input, manual_seed(1) per shape); 'vs low-precision-grad path': per-round time ratio of LPLayerNorm to the fused path of the same precision.");
        if (!fp16Works)
        {
            report.Notes.Add($"amp_fp16 skipped: this libtorch has no CPU kernel for it ({fp16Error}).");
        }

        report.Load = meter.Stop();
        return report;
    }

    private static double FwdBwd(Precision precision, Func<Tensor, Tensor> module, Tensor x, Tensor dy, Tensor[] parameters, ScalarType expected)
    {
        using var scope = torch.NewDisposeScope();
        using AutocastScope autocast = precision.Enter(DeviceType.CPU);
        var clock = Stopwatch.StartNew();
        Tensor y = module(x);
        torch.autograd.grad(new[] { y }, new[] { x, parameters[0], parameters[1] }, new[] { dy });
        double ms = clock.Elapsed.TotalMilliseconds;
        if (y.dtype != expected)
        {
            throw new InvalidOperationException($"A LayerNorm variant under {precision.ToComposerName()} returned {y.dtype}; the benchmark expects {expected}.");
        }

        return ms;
    }

    /// <summary>libtorch's fused layer_norm on the input cast to <paramref name="dtype"/>, with the parameters cast too or left in Float32.</summary>
    private static Tensor FusedLayerNorm(Tensor x, LPLayerNorm lp, ScalarType dtype, bool castParameters)
    {
        using var scope = torch.NewDisposeScope();
        Tensor w = castParameters ? lp.weight!.to(dtype) : lp.weight!;
        Tensor b = castParameters ? lp.bias!.to(dtype) : lp.bias!;
        using (AutocastScope.Disabled(DeviceType.CPU))
        {
            return nn.functional.layer_norm(x.dtype == dtype ? x : x.to(dtype), lp.normalized_shape, w, b, lp.eps).MoveToOuterDisposeScope();
        }
    }

    /// <summary>"dW / db / dx" relative max errors (%) of one variant against float64, same input, parameters and output gradient.</summary>
    private static string GradientErrors(Precision precision, Func<Tensor, Tensor> module, Tensor x, Tensor dy, Tensor[] parameters, long hidden, double eps)
    {
        using var scope = torch.NewDisposeScope();
        Tensor[] low;
        using (precision.Enter(DeviceType.CPU))
        {
            Tensor y = module(x);
            low = torch.autograd.grad(new[] { y }, new[] { parameters[0], parameters[1], x }, new[] { dy }).ToArray();
        }

        Tensor x64 = x.detach().to(ScalarType.Float64).requires_grad_(true);
        Tensor w64 = parameters[0].detach().to(ScalarType.Float64).requires_grad_(true);
        Tensor b64 = parameters[1].detach().to(ScalarType.Float64).requires_grad_(true);
        Tensor y64 = nn.functional.layer_norm(x64, new[] { hidden }, w64, b64, eps);
        Tensor[] reference = torch.autograd.grad(new[] { y64 }, new[] { w64, b64, x64 }, new[] { dy.to(ScalarType.Float64) }).ToArray();
        IEnumerable<string> percents = low.Zip(reference, (l, r) =>
            Fmt.N(100 * (l.to(ScalarType.Float64) - r).abs().max().item<double>() / r.abs().max().item<double>(), 2) + " %");
        return string.Join(" / ", percents);
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
/// <param name="GradientErrors">"dW / db / dx" max errors against float64, % of each reference's largest magnitude (null for the copy).</param>
/// <param name="RatioVsBefore17">Per-round time ratio of LPLayerNorm against the fused path it replaced (the low-precision fused kernel, whose weight and bias gradients lost accuracy), same precision (null for other rows).</param>
internal sealed record LayerNormRow(string Shape, string Variant, Stats Ms, Stats? RatioVsFp32, int BytesPerElement, double Gbps, double PercentOfCopy, string? GradientErrors, Stats? RatioVsBefore17);
