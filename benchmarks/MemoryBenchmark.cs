using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part "memory": (a) the peak resident memory (VmHWM, reset just before the steps) of a few AdamW steps through the
/// Trainer against PyTorch eager's (pytorch_peer.py --memory-steps) for three shapes in fp32 and amp_bf16, each side
/// in a fresh process (<see cref="MemoryProbe"/>); (b) flatness: resident memory every 100 batches of a long fp32
/// gpt-tiny run with the GPT-2 vocabulary (hidden <c>memory-flat</c> subcommand).
/// </summary>
internal static class MemoryBenchmark
{
    /// <summary>The hidden subcommand of the flatness run.</summary>
    public const string FlatCommand = "memory-flat";

    /// <summary>Runs both tables; the peer columns are n/a when no python3 imports torch.</summary>
    public static IEnumerable<PartReport> Run(Settings settings)
    {
        yield return Peaks(settings);
        yield return Flatness(settings);
    }

    private static PartReport Peaks(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("memory", "(7a) Peak RSS of a few AdamW training steps: Trainer vs PyTorch eager (fresh process each)");
        report.Columns.AddRange(new[] { "shape", "precision", "steps", "ours baseline MiB", "ours peak MiB", "ours peak − baseline", "PyTorch baseline MiB", "PyTorch peak MiB", "PyTorch peak − baseline", "ratio peak", "ratio peak − baseline" });
        (string? python, string probe) = PeerBenchmark.FindPython(settings.Python);
        string script = PeerBenchmark.FindScript();
        var rows = new List<object>();
        foreach (string key in new[] { "bert-mini", "gpt-tiny-gpt2", "minilm-l6" })
        {
            TrainingShape shape = MemoryProbe.Shapes[key];
            int steps = settings.Quick ? 1 : 2;
            foreach (Precision p in new[] { Precision.Fp32, Precision.AmpBf16 })
            {
                (long start, long peak) = MemoryProbe.Measure(p, false, steps, settings.Threads, key);
                (long Start, long Peak)? peer = python is null ? null : PeerPeak(python, script, shape, p, steps, settings);
                double ratio = peer is { } q ? (double)peak / q.Peak : double.NaN;
                double ratioNet = peer is { } r ? (double)(peak - start) / (r.Peak - r.Start) : double.NaN;
                report.Rows.Add(new[]
                {
                    key, p.ToComposerName(), steps.ToString(CultureInfo.InvariantCulture), Fmt.MiB(start), Fmt.MiB(peak), Fmt.MiB(peak - start),
                    peer is { } a ? Fmt.MiB(a.Start) : "n/a", peer is { } b ? Fmt.MiB(b.Peak) : "n/a", peer is { } c ? Fmt.MiB(c.Peak - c.Start) : "n/a",
                    Fmt.N(ratio, 2), Fmt.N(ratioNet, 2),
                });
                rows.Add(new { shape = key, precision = p.ToComposerName(), steps, ours_start = start, ours_peak = peak, peer_start = peer?.Start, peer_peak = peer?.Peak });
                if (peer is not null)
                {
                    report.Targets.Add(TargetCheck.AtMost($"peak RSS ≤ 1.2 × PyTorch eager ({key}, {p.ToComposerName()})", ratio, 1.2));
                }
            }
        }

        report.Data = new { rows };
        report.Notes.Add("Shapes: " + string.Join("; ", new[] { "bert-mini", "gpt-tiny-gpt2", "minilm-l6" }.Select(k => $"{k} = {MemoryProbe.Shapes[k].Describe()}")) + ".");
        report.Notes.Add("Baseline: VmRSS after the 8 in-memory batches are built, before the model (runtime + libtorch, or python + torch). Peak: VmHWM after a reset (/proc/self/clear_refs) just before the steps, so it includes the model, AdamW state and the step's activations. Ratio = ours / PyTorch.");
        if (python is null)
        {
            report.Notes.Add($"PyTorch peer skipped: no python3 that imports torch ({probe}).");
        }

        report.Load = meter.Stop();
        return report;
    }

    private static (long Start, long Peak) PeerPeak(string python, string script, TrainingShape shape, Precision precision, int steps, Settings settings)
    {
        ProcessStartInfo psi = PeerBenchmark.StartInfo(python, script, shape, settings.Threads, settings.OmpWaitPolicy,
            "--memory-steps", steps.ToString(CultureInfo.InvariantCulture), "--precision", precision.ToComposerName());
        string last = ChildRun.LastLine(psi, $"PyTorch peer ({python} {script} --memory-steps)");
        JsonElement json = JsonDocument.Parse(last).RootElement;
        return (json.GetProperty("start").GetInt64(), json.GetProperty("peak").GetInt64());
    }

    private static PartReport Flatness(Settings settings)
    {
        var meter = LoadMeter.Start();
        const string key = "gpt-tiny-gpt2-b8";
        var report = new PartReport("memory-flat", "(7b) RSS flatness of a long fp32 Trainer run (gpt-tiny, GPT-2 vocabulary)");
        int batches = settings.Quick ? 20 : 1000, every = settings.Quick ? 10 : 100;
        double maxSeconds = settings.Quick ? 120 : 480;
        string last = ChildRun.LastLine("memory flatness run", new[]
        {
            FlatCommand, key, batches.ToString(CultureInfo.InvariantCulture), every.ToString(CultureInfo.InvariantCulture),
            maxSeconds.ToString(CultureInfo.InvariantCulture), "--threads", settings.Threads.ToString(CultureInfo.InvariantCulture),
        });
        JsonElement json = JsonDocument.Parse(last).RootElement;
        int[] done = json.GetProperty("batches").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        long[] rss = json.GetProperty("rss").EnumerateArray().Select(e => e.GetInt64()).ToArray();
        report.Columns.AddRange(new[] { "batches", "RSS MiB", "growth since first reading MiB" });
        for (int i = 0; i < done.Length; i++)
        {
            report.Rows.Add(new[] { done[i].ToString(CultureInfo.InvariantCulture), Fmt.MiB(rss[i]), Fmt.N((rss[i] - rss[0]) / (1024.0 * 1024.0), 1) });
        }

        double seconds = json.GetProperty("seconds").GetDouble();
        report.Data = new { shape = MemoryProbe.Shapes[key].Describe(), batches = done, rss, seconds };
        report.Notes.Add($"{MemoryProbe.Shapes[key].Describe()}; fp32, Trainer.Fit in chunks of {every} batches, RSS (VmRSS) after each chunk; {done.LastOrDefault()} of {batches} batches in {seconds:F0} s (stops after {maxSeconds:F0} s).");
        report.Load = meter.Stop();
        return report;
    }
}
