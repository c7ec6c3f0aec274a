using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 3a: what the Trainer costs over a hand-written TorchSharp loop doing the same work. Both train the same
/// model object with the same AdamW instance (the Trainer's), on the same in-memory batches, under the same
/// amp_bf16 autocast scope; their step times are interleaved round by round.
/// </summary>
internal static class OverheadBenchmark
{
    private const string TrainerName = "Trainer.Fit";
    private const string LoopName = "hand-written loop";
    private const string WithMetricsName = "Trainer.Fit, training metrics on";

    /// <summary>Runs the comparison.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var shape = new TrainingShape();
        var report = new PartReport("overhead", "(3a) Trainer.Fit vs a hand-written TorchSharp loop (amp_bf16, same model and optimizer)");
        report.Columns.AddRange(new[] { "loop", "ms/step (median ±IQR/2)", "min ms/step", "ratio vs hand-written (median, P25–P75)", "ratio of minima" });
        (int warmup, int steps, int rounds) = settings.Overhead;
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        using Trainer trainer = TrainingSetup.CreateTrainer(shape, data, Precision.AmpBf16);
        using Trainer withMetrics = TrainingSetup.CreateTrainer(shape, data, Precision.AmpBf16, computeTrainingMetrics: true);
        try
        {
            var loop = new HandWrittenLoop(trainer.Model, trainer.State.Optimizers[0], Precision.AmpBf16, data.Batches);
            Interleaved run = Interleaved.Run(
                new[]
                {
                    new Variant(TrainerName, () => TrainingSetup.FitSteps(trainer, steps)),
                    new Variant(LoopName, () => loop.Steps(steps)),
                    new Variant(WithMetricsName, () => TrainingSetup.FitSteps(withMetrics, steps)),
                },
                warmup,
                rounds);
            Stats l = run.StatsOf(LoopName);
            var rows = new List<object>();
            foreach (string name in new[] { TrainerName, LoopName, WithMetricsName })
            {
                Stats t = run.StatsOf(name);
                Stats? ratio = name == LoopName ? null : run.Ratio(name, LoopName);
                double minRatio = t.Min / l.Min;
                report.Rows.Add(new[] { name, Fmt.Ms(t, 1), Fmt.N(t.Min, 1), ratio is null ? "1" : $"{Fmt.N(ratio.Median, 3)} ({Fmt.N(ratio.P25, 3)}–{Fmt.N(ratio.P75, 3)})", Fmt.N(minRatio, 3) });
                rows.Add(new { loop = name, ms_per_step = t, ratio_vs_hand_written = ratio, ratio_of_minima = minRatio });
            }

            report.Targets.Add(TargetCheck.AtMost("Trainer.Fit step time ≤ 1.03 × hand-written loop", run.Ratio(TrainerName, LoopName).Median, 1.03));
            report.Data = new { shape = shape.Describe(), steps_per_sample = steps, rows };
            report.Notes.Add($"Model: {shape.Describe()}.");
            report.Notes.Add("Trainer.Fit: no algorithms, callbacks or loggers, progress bar off, computeTrainingMetrics false (Composer's default). The hand-written loop trains the same model object " +
                             "with the Trainer's own AdamW: gradients set to none, forward+loss under the amp_bf16 autocast scope, backward, step. The third row is a second Trainer (same initial weights) with training metrics on.");
            report.Notes.Add("Ratios: median of per-round ratios (each round runs one step of each, in rotated order), and the ratio of the fastest steps (the least disturbed by other work).");
        }
        finally
        {
            trainer.Model.Dispose();
            withMetrics.Model.Dispose();
        }

        report.Load = meter.Stop();
        return report;
    }
}
