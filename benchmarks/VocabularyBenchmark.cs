using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Models;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part "vocab": the BERT-mini MLM step with the GPT-2 tokenizer's padded vocabulary (50,304 outputs), fp32, in four
/// configurations: the MLM head on every token (dense) or only on the masked ones (sparse prediction), each with
/// glibc's default malloc (what the library uses) or with the 1 GiB heap thresholds it used to set
/// (<see cref="GlibcMalloc"/>). Every measurement runs in a fresh child process (the hidden <c>vocab-probe</c>
/// subcommand), because the allocator setting is process-wide and cannot be undone; the children's order rotates round by round. Each child reports its step time and, from getrusage(2),
/// its minor page faults, user and system CPU time per step, and its resident growth from the first to the last
/// timed step (the heap thresholds' cost: freed logits-sized blocks that glibc cannot reuse).
/// </summary>
internal static class VocabularyBenchmark
{
    /// <summary>The hidden subcommand's name.</summary>
    public const string Command = "vocab-probe";

    private static readonly TrainingShape Shape = new() { RegularVocab = TransformerConfig.Gpt2PaddedVocabSize - 4, VocabSize = TransformerConfig.Gpt2PaddedVocabSize, BatchSize = 8 };

    private static readonly (string Name, bool Sparse, bool Tuned)[] Configs =
    {
        ("dense head, glibc default", false, false),
        ("dense head, 1 GiB heap thresholds", false, true),
        ("sparse head, glibc default", true, false),
        ("sparse head, 1 GiB heap thresholds", true, true),
    };

    /// <summary>
    /// In the child: a hand-written fp32 loop over 8 synthetic MLM batches (after raising glibc's thresholds when
    /// <paramref name="tuned"/>), one warm-up step, then <paramref name="steps"/> timed steps; prints one JSON line.
    /// </summary>
    public static int RunChild(bool sparse, bool tuned, int steps, int threads)
    {
        if (tuned && !GlibcMalloc.RaiseThresholds())
        {
            Console.Error.WriteLine("glibc refused the 1 GiB thresholds (or this is not glibc)");
            return 1;
        }

        torch.set_num_threads(threads);
        using InMemoryBatches data = InMemoryBatches.Create(Shape, 8);
        torch.manual_seed(TrainingSetup.ModelSeed);
        using var model = new BertForMaskedLM(Shape.Config, new MaskedLMOptions { SparsePrediction = sparse });
        using var optimizer = torch.optim.AdamW(model.parameters(), lr: Shape.LearningRate);
        var loop = new HandWrittenLoop(model, optimizer, Precision.Fp32, data.Batches);
        loop.Steps(1);
        var ms = new List<double>();
        var before = ProcessMemory.Usage();
        long firstRss = ProcessMemory.ResidentBytes();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            ms.Add(loop.Steps(1));
        }

        double wall = clock.Elapsed.TotalSeconds;
        var after = ProcessMemory.Usage();
        long growth = ProcessMemory.ResidentBytes() - firstRss;
        long peak = ProcessMemory.PeakResidentBytes();
        double user = after is null || before is null ? double.NaN : (after.Value.UserSeconds - before.Value.UserSeconds) / steps;
        double system = after is null || before is null ? double.NaN : (after.Value.SystemSeconds - before.Value.SystemSeconds) / steps;
        long faults = after is null || before is null ? -1 : (after.Value.MinorFaults - before.Value.MinorFaults) / steps;
        Console.WriteLine(JsonSerializer.Serialize(new ChildResult(ms.ToArray(), faults, user, system, wall / steps, peak, growth)));
        return 0;
    }

    /// <summary>Runs the comparison.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("vocab", "MLM step with a GPT-2 vocabulary (50,304): dense vs sparse head, glibc default vs 1 GiB heap thresholds (fresh process each)");
        report.Columns.AddRange(new[] { "configuration", "ms/step (median ±IQR/2)", "samples/s", "speed-up vs dense default", "minor faults/step", "user s/step", "system s/step", "system / CPU", "peak RSS MiB", "RSS growth MiB" });
        int rounds = settings.Quick ? 1 : 2;
        int steps = settings.Quick ? 1 : 3;
        var results = Configs.ToDictionary(c => c.Name, _ => new List<ChildResult>());
        for (int round = 0; round < rounds; round++)
        {
            for (int k = 0; k < Configs.Length; k++)
            {
                (string name, bool sparse, bool tuned) = Configs[(k + round) % Configs.Length];
                results[name].Add(Child(sparse, tuned, steps, settings.Threads));
            }
        }

        double baseline = Stats.Of(results[Configs[0].Name].SelectMany(r => r.Ms).ToList()).Median;
        var rows = new List<object>();
        foreach ((string name, _, _) in Configs)
        {
            List<ChildResult> rs = results[name];
            Stats s = Stats.Of(rs.SelectMany(r => r.Ms).ToList());
            double faults = rs.Average(r => (double)r.MinorFaultsPerStep), user = rs.Average(r => r.UserSecondsPerStep), system = rs.Average(r => r.SystemSecondsPerStep);
            long peak = rs.Max(r => r.PeakRssBytes);
            long growth = rs.Max(r => r.RssGrowthBytes);
            report.Rows.Add(new[]
            {
                name, Fmt.Ms(s, 0), Fmt.N(Shape.BatchSize / (s.Median / 1000), 2), Fmt.N(baseline / s.Median, 2),
                Fmt.N(faults, 0), Fmt.N(user, 2), Fmt.N(system, 2), Fmt.N(system / (user + system), 3), Fmt.MiB(peak), Fmt.MiB(growth),
            });
            rows.Add(new { configuration = name, ms = s, speedup_vs_dense_default = baseline / s.Median, minor_faults_per_step = faults, user_s_per_step = user, system_s_per_step = system, peak_rss = peak, rss_growth = growth, children = rs });
        }

        report.Data = new { shape = Shape.Describe(), rounds, steps_per_child = steps, rows };
        report.Notes.Add($"Model: {Shape.Describe()}, fp32, hand-written loop (AdamW), 8 synthetic MLM batches (15 % masked). {rounds} child(ren) per configuration, {steps} timed step(s) each after 1 warm-up step; children rotate order per round.");
        report.Notes.Add("Speed-up = median step time of 'dense head, glibc default' / this median (children in different moments, so load differences are not cancelled pairwise). Faults and CPU seconds: getrusage(RUSAGE_SELF) over the timed steps, all threads.");
        report.Load = meter.Stop();
        return report;
    }

    private static ChildResult Child(bool sparse, bool tuned, int steps, int threads)
    {
        string last = ChildRun.LastLine(
            $"vocab probe ({(sparse ? "sparse" : "dense")}, {(tuned ? "tuned" : "default")})",
            new[] { Command, sparse ? "sparse" : "dense", tuned ? "tuned" : "default", steps.ToString(CultureInfo.InvariantCulture), "--threads", threads.ToString(CultureInfo.InvariantCulture) });
        return JsonSerializer.Deserialize<ChildResult>(last) ?? throw new InvalidOperationException($"The vocab probe printed nothing usable: {last}");
    }
}

/// <summary>One child's measurements.</summary>
/// <param name="Ms">Milliseconds of each timed step.</param>
/// <param name="MinorFaultsPerStep">Minor page faults per timed step (all threads).</param>
/// <param name="UserSecondsPerStep">User CPU seconds per timed step (all threads).</param>
/// <param name="SystemSecondsPerStep">System (kernel) CPU seconds per timed step.</param>
/// <param name="WallSecondsPerStep">Wall-clock seconds per timed step.</param>
/// <param name="PeakRssBytes">VmHWM of the child at the end.</param>
/// <param name="RssGrowthBytes">VmRSS after the last timed step minus VmRSS before the first.</param>
internal sealed record ChildResult(double[] Ms, long MinorFaultsPerStep, double UserSecondsPerStep, double SystemSecondsPerStep, double WallSecondsPerStep, long PeakRssBytes, long RssGrowthBytes);
