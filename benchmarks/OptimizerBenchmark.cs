using System.Diagnostics;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Training.Optim;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part "optim": one optimizer step over BERT-base-like parameter shapes (12 layers' attention and FFN matrices,
/// about 85 M Float32 elements), the fused flat-buffer kernels (<see cref="FusedAdamW"/>, <see cref="FusedDecoupledSGDW"/>,
/// <see cref="FusedDecoupledLionW"/>) against the unfused tensor-op form of the same update: TorchSharp's <c>AdamW</c>,
/// and Composer's <c>DecoupledSGDW.sgdw</c> / llm-foundry's <c>DecoupledLionW.lionw</c> written with TorchSharp ops as in their Python.
/// </summary>
internal static class OptimizerBenchmark
{
    /// <summary>Runs the three pairs, interleaved.</summary>
    /// <param name="settings">The run's settings.</param>
    /// <returns>The report.</returns>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("optim", "(9) Optimizer step, fused flat-buffer kernel vs unfused tensor ops (BERT-base-like shapes, Float32)");
        report.Columns.AddRange(new[] { "optimizer", "variant", "ms/step (median ±IQR/2)", "ratio fused / unfused" });
        (int warmup, int rounds) = settings.Quick ? (1, 3) : (3, 15);
        long[][] shapes = Enumerable.Range(0, 12).SelectMany(_ => new[] { new long[] { 768, 768 }, new long[] { 768, 768 }, new long[] { 768, 768 }, new long[] { 768, 768 }, new long[] { 3072, 768 }, new long[] { 768, 3072 }, new long[] { 768 }, new long[] { 3072 } }).ToArray();
        List<Parameter> Make(int seed)
        {
            torch.manual_seed(seed);
            return shapes.Select(s => new Parameter(torch.randn(s))).ToList();
        }

        void Grads(List<Parameter> ps)
        {
            foreach (Parameter p in ps)
            {
                p.grad ??= torch.randn_like(p).mul_(0.01);
            }
        }

        var pairs = new List<(string Name, Func<double> Unfused, Func<double> Fused)>();
        List<Parameter> a1 = Make(1), a2 = Make(1), s1 = Make(2), s2 = Make(2), l1 = Make(3), l2 = Make(3);
        Grads(a1);
        Grads(a2);
        Grads(s1);
        Grads(s2);
        Grads(l1);
        Grads(l2);
        optim.Optimizer adamw = torch.optim.AdamW(a1, 1e-4, 0.9, 0.999, 1e-8, 0.01);
        var fusedAdamw = new FusedAdamW(a2, 1e-4, 0.9, 0.999, 1e-8, 0.01);
        List<Tensor> bufs = s1.Select(p => torch.zeros_like(p)).ToList();
        var fusedSgdw = new FusedDecoupledSGDW(s2, 1e-2, 0.9, 0, 1e-4);
        List<Tensor> moms = l1.Select(p => torch.zeros_like(p)).ToList();
        var fusedLion = new FusedDecoupledLionW(l2, 1e-4, 0.9, 0.99, 1e-4);
        double Time(Action step)
        {
            var sw = Stopwatch.StartNew();
            using (torch.no_grad())
            {
                step();
            }

            return sw.Elapsed.TotalMilliseconds;
        }

        pairs.Add(("AdamW", () => Time(() => adamw.step()), () => Time(() => fusedAdamw.step())));
        pairs.Add(("DecoupledSGDW (momentum 0.9)", () => Time(() =>
        {
            for (int i = 0; i < s1.Count; i++)
            {
                using Tensor g = s1[i].grad!;
                bufs[i].mul_(0.9).add_(g);
                s1[i].mul_(1 - 1e-4);
                s1[i].add_(bufs[i], alpha: -1e-2);
            }
        }), () => Time(() => fusedSgdw.step())));
        pairs.Add(("DecoupledLionW", () => Time(() =>
        {
            for (int i = 0; i < l1.Count; i++)
            {
                using Tensor g = l1[i].grad!;
                l1[i].mul_(1 - 1e-4);
                using Tensor update = moms[i].lerp(g, 0.1).sign_();
                l1[i].add_(update, alpha: -1e-4);
                moms[i].lerp_(g, 0.01);
            }
        }), () => Time(() => fusedLion.step())));

        var variants = pairs.SelectMany(p => new[] { new Variant(p.Name + "|unfused", p.Unfused), new Variant(p.Name + "|fused", p.Fused) }).ToList();
        Interleaved run = Interleaved.Run(variants, warmup, rounds);
        foreach ((string name, _, _) in pairs)
        {
            Stats ratio = run.Ratio(name + "|fused", name + "|unfused");
            report.Rows.Add(new[] { name, "unfused tensor ops", Fmt.Ms(run.StatsOf(name + "|unfused")), string.Empty });
            report.Rows.Add(new[] { name, "fused kernel", Fmt.Ms(run.StatsOf(name + "|fused")), $"{Fmt.N(ratio.Median, 3)} ±{Fmt.N((ratio.P75 - ratio.P25) / 2, 3)}" });
        }

        report.Notes.Add($"{shapes.Length} parameters, {shapes.Sum(s => s.Aggregate(1L, (x, y) => x * y)) / 1e6:F1} M Float32 elements; gradients fixed (random), so each step does the same work. Ratios are medians of per-round ratios, variants interleaved in rotated order; {rounds} rounds after {warmup} warm-up steps each.");
        report.Notes.Add("Unfused: TorchSharp's AdamW; SGDW and LionW as Composer's and llm-foundry's Python does them, with TorchSharp tensor ops (several passes over memory per parameter). Fused: one pass per parameter, single-threaded C# SIMD (libtorch's ops use all threads).");
        adamw.Dispose();
        fusedAdamw.Dispose();
        fusedSgdw.Dispose();
        fusedLion.Dispose();
        foreach (Tensor t in bufs.Concat(moms).Concat(a1).Concat(a2).Concat(s1).Concat(s2).Concat(l1).Concat(l2))
        {
            t.Dispose();
        }

        report.Load = meter.Stop();
        return report;
    }
}
