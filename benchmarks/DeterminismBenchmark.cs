using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part "determinism": the cost of deterministic mode (<see cref="Reproducibility.ConfigureDeterministicMode"/>)
/// on the BERT MLM training step of part 2, fp32 and amp_bf16. The mode is process-wide and cannot be switched off,
/// so each measurement runs in a fresh child process (the hidden <c>determinism-probe</c> subcommand); children with
/// and without the mode alternate, and the ratio is taken per pair of neighbouring children, so load that drifts
/// during the run affects both sides alike.
/// </summary>
internal static class DeterminismBenchmark
{
    /// <summary>The hidden subcommand's name.</summary>
    public const string Command = "determinism-probe";

    /// <summary>
    /// In the child: deterministic mode first when <paramref name="deterministic"/>, then the Trainer of part 2,
    /// <paramref name="warmup"/> untimed samples, then <paramref name="rounds"/> timed samples of
    /// <paramref name="steps"/> steps each; prints the milliseconds per step of each sample as one JSON array.
    /// </summary>
    public static int RunChild(Precision precision, bool deterministic, int warmup, int steps, int rounds, int threads)
    {
        if (deterministic)
        {
            Reproducibility.ConfigureDeterministicMode();
        }

        torch.set_num_threads(threads);
        var shape = new TrainingShape();
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        using ComposerSharp.Training.Trainer trainer = TrainingSetup.CreateTrainer(shape, data, precision);
        for (int i = 0; i < warmup; i++)
        {
            TrainingSetup.FitSteps(trainer, steps);
        }

        var samples = new List<double>();
        for (int i = 0; i < rounds; i++)
        {
            samples.Add(TrainingSetup.FitSteps(trainer, steps));
        }

        trainer.Model.Dispose();
        Console.WriteLine(JsonSerializer.Serialize(samples));
        return 0;
    }

    /// <summary>Runs the comparison.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("determinism", "Deterministic mode: BERT MLM training step with and without (fresh process each)");
        report.Columns.AddRange(new[] { "precision", "ms/step default (median ±IQR/2)", "ms/step deterministic", "deterministic / default (median of pairs)" });
        (int warmup, int steps, int rounds) = settings.Step;
        int pairs = settings.Quick ? 1 : 3;
        var rows = new List<object>();
        foreach (Precision precision in new[] { Precision.Fp32, Precision.AmpBf16 })
        {
            var off = new List<double>();
            var on = new List<double>();
            var ratios = new List<double>();
            for (int pair = 0; pair < pairs; pair++)
            {
                // Alternate which side goes first, so neither always runs on a warmer or quieter machine.
                bool onFirst = pair % 2 == 1;
                double[] first = Child(precision, onFirst, warmup, steps, rounds, settings.Threads);
                double[] second = Child(precision, !onFirst, warmup, steps, rounds, settings.Threads);
                double[] a = onFirst ? second : first;
                double[] b = onFirst ? first : second;
                off.AddRange(a);
                on.AddRange(b);
                ratios.Add(Stats.Of(b).Median / Stats.Of(a).Median);
            }

            Stats sOff = Stats.Of(off), sOn = Stats.Of(on), sRatio = Stats.Of(ratios);
            report.Rows.Add(new[] { precision.ToComposerName(), Fmt.Ms(sOff, 1), Fmt.Ms(sOn, 1), Fmt.N(sRatio.Median, 3) });
            rows.Add(new { precision = precision.ToComposerName(), default_ms = sOff, deterministic_ms = sOn, ratio = sRatio });
        }

        report.Data = new { shape = new TrainingShape().Describe(), pairs, rows };
        report.Notes.Add($"Model and data as in part 2 ({new TrainingShape().Describe()}). Each child: {warmup} warm-up sample(s), then {rounds} timed samples of {steps} steps; {pairs} pair(s) of children per precision. > 1 means deterministic mode is slower.");
        report.Load = meter.Stop();
        return report;
    }

    private static double[] Child(Precision precision, bool deterministic, int warmup, int steps, int rounds, int threads)
    {
        // MKL_CBWR would switch MKL's reproducibility mode on in the "default" child too.
        string last = ChildRun.LastLine(
            $"determinism probe ({precision.ToComposerName()}, {(deterministic ? "on" : "off")})",
            new[] { Command, precision.ToComposerName(), deterministic ? "on" : "off", I(warmup), I(steps), I(rounds), "--threads", I(threads) },
            "MKL_CBWR");
        return JsonSerializer.Deserialize<double[]>(last) ?? throw new InvalidOperationException($"The determinism probe printed no samples: {last}");

        static string I(int v) => v.ToString(CultureInfo.InvariantCulture);
    }
}
