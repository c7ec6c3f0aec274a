using System.Diagnostics;
using ComposerSharp.Algorithms;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 1b: where the fused LayerNorm's forward+backward time goes, piece by piece, interleaved with the fp32
/// LayerNorm it is compared with: the raw kernel forward and backward (all workers and 1 worker, Float32 and BFloat16
/// input) on preallocated outputs, the output allocation, the module's forward with and without an autograd node,
/// the whole forward+backward through autograd, and a clone of the input (the bandwidth of one read and one write).
/// </summary>
/// <remarks>
/// Written to find the per-call cost that made the kernel slower than libtorch's LayerNorm on an idle machine: the
/// backward's per-chunk partial sums were a fresh 1.5 MiB array per call (now pooled).
/// </remarks>
internal static class LayerNormProfile
{
    /// <summary>Runs the profile at the three shapes of part 1 and at the LayerNorm shape of part 2's BERT-mini step, [16,128,256] (the warm-up and rounds of part 1).</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("layernorm-profile", "(1b) where the fused LayerNorm's time goes");
        report.Columns.AddRange(new[] { "shape", "piece", "ms (median ±IQR/2)" });
        foreach (long[] shape in new[] { new long[] { 8, 512, 768 }, new long[] { 32, 128, 768 }, new long[] { 4, 2048, 1024 }, new long[] { 16, 128, 256 } })
        {
            using var scope = torch.NewDisposeScope();
            long hidden = shape[^1];
            long rows = shape.Aggregate(1L, (a, b) => a * b) / hidden;
            torch.manual_seed(1);
            Tensor x = torch.randn(shape).requires_grad_(true);
            Tensor dy = torch.randn(shape).to(ScalarType.BFloat16);
            Tensor dy32 = dy.to(ScalarType.Float32);
            LayerNorm plain = nn.LayerNorm(hidden);
            var lp = new LPLayerNorm(nn.LayerNorm(hidden), LayerNormKernel.Fused);
            Tensor w = lp.weight!, b = lp.bias!;
            Tensor xd = x.detach();
            Tensor outp = empty(shape, ScalarType.BFloat16), mean = empty(rows), rstd = empty(rows);
            Tensor dx = empty(shape), dW = empty(hidden), dB = empty(hidden);
            Tensor xb = xd.to(ScalarType.BFloat16), dxb = empty(shape, ScalarType.BFloat16);
            Tensor xbg = xb.detach().requires_grad_(true);
            int workers = torch.get_num_threads();
            LayerNormCpuKernel.Forward(xd, w, b, 1e-5, outp, mean, rstd, rows, (int)hidden, SimdPath.Auto, workers);
            var variants = new List<Variant>
            {
                new("fp32 LN fwd", () => Time(() => { using var s = torch.NewDisposeScope(); using (torch.no_grad()) { plain.call(xd); } })),
                new("fp32 LN fwd+bwd", () => Time(() => { using var s = torch.NewDisposeScope(); Tensor y = plain.call(x); torch.autograd.grad(new[] { y }, new[] { x, plain.weight!, plain.bias! }, new[] { dy32 }); })),
                new("kernel fwd raw", () => Time(() => LayerNormCpuKernel.Forward(xd, w, b, 1e-5, outp, mean, rstd, rows, (int)hidden, SimdPath.Auto, workers))),
                new("kernel fwd raw 1w", () => Time(() => LayerNormCpuKernel.Forward(xd, w, b, 1e-5, outp, mean, rstd, rows, (int)hidden, SimdPath.Auto, 1))),
                new("kernel bwd raw", () => Time(() => LayerNormCpuKernel.Backward(dy, xd, w, mean, rstd, dx, dW, dB, rows, (int)hidden, SimdPath.Auto, workers))),
                new("kernel bwd raw 1w", () => Time(() => LayerNormCpuKernel.Backward(dy, xd, w, mean, rstd, dx, dW, dB, rows, (int)hidden, SimdPath.Auto, 1))),
                new("kernel fwd raw bf16 in", () => Time(() => LayerNormCpuKernel.Forward(xb, w, b, 1e-5, outp, mean, rstd, rows, (int)hidden, SimdPath.Auto, workers))),
                new("kernel bwd raw bf16 in", () => Time(() => LayerNormCpuKernel.Backward(dy, xb, w, mean, rstd, dxb, dW, dB, rows, (int)hidden, SimdPath.Auto, workers))),
                new("LPLN fwd+bwd bf16 in", () => Time(() => { using var s = torch.NewDisposeScope(); using (Precision.AmpBf16.Enter(DeviceType.CPU)) { Tensor y = lp.call(xbg); torch.autograd.grad(new[] { y }, new[] { xbg, w, b }, new[] { dy }); } })),
                new("alloc outputs", () => Time(() => { using var s = torch.NewDisposeScope(); empty(shape, ScalarType.BFloat16); empty(shape); empty(rows); empty(rows); })),
                new("LPLN fwd (no grad)", () => Time(() => { using var s = torch.NewDisposeScope(); using (torch.no_grad()) using (Precision.AmpBf16.Enter(DeviceType.CPU)) { lp.call(xd); } })),
                new("LPLN fwd (grad)", () => Time(() => { using var s = torch.NewDisposeScope(); using (Precision.AmpBf16.Enter(DeviceType.CPU)) { lp.call(x); } })),
                new("LPLN fwd+bwd", () => Time(() => { using var s = torch.NewDisposeScope(); using (Precision.AmpBf16.Enter(DeviceType.CPU)) { Tensor y = lp.call(x); torch.autograd.grad(new[] { y }, new[] { x, w, b }, new[] { dy }); } })),
                new("copy x", () => Time(() => { using var s = torch.NewDisposeScope(); xd.clone(); })),
            };
            Interleaved run = Interleaved.Run(variants, settings.LayerNorm.Warmup, settings.LayerNorm.Rounds);
            foreach (Variant v in variants)
            {
                report.Rows.Add(new[] { $"[{string.Join(",", shape)}]", v.Name, Fmt.Ms(run.StatsOf(v.Name)) });
            }
        }

        report.Load = meter.Stop();
        return report;
    }

    /// <summary>Wall-clock milliseconds of one call.</summary>
    private static double Time(Action a)
    {
        var c = Stopwatch.StartNew();
        a();
        return c.Elapsed.TotalMilliseconds;
    }
}
