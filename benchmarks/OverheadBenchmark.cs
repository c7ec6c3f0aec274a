using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Events;

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

    /// <summary>Runs the comparison.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var shape = new TrainingShape();
        var report = new PartReport("overhead", "(3a) Trainer.Fit vs a hand-written TorchSharp loop (amp_bf16, same model and optimizer)");
        report.Columns.AddRange(new[] { "loop", "ms/step (median ±IQR/2)", "ratio vs hand-written (median, P25–P75)" });
        (int warmup, int steps, int rounds) = settings.Overhead;
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        using ComposerSharp.Trainer.Trainer trainer = TrainingSetup.CreateTrainer(shape, data, Precision.AmpBf16);
        try
        {
            var loop = new HandWrittenLoop(trainer.Model, trainer.State.Optimizers[0], Precision.AmpBf16, data.Batches);
            Interleaved run = Interleaved.Run(
                new[]
                {
                    new Variant(TrainerName, () => TrainingSetup.FitSteps(trainer, steps)),
                    new Variant(LoopName, () => loop.Steps(steps)),
                },
                warmup,
                rounds);
            Stats t = run.StatsOf(TrainerName), l = run.StatsOf(LoopName);
            Stats ratio = run.Ratio(TrainerName, LoopName);
            report.Rows.Add(new[] { TrainerName, Fmt.Ms(t, 1), $"{Fmt.N(ratio.Median, 3)} ({Fmt.N(ratio.P25, 3)}–{Fmt.N(ratio.P75, 3)})" });
            report.Rows.Add(new[] { LoopName, Fmt.Ms(l, 1), "1" });
            report.Targets.Add(TargetCheck.AtMost("Trainer.Fit step time ≤ 1.03 × hand-written loop", ratio.Median, 1.03));
            report.Data = new { shape = shape.Describe(), steps_per_sample = steps, trainer = t, hand_written = l, ratio };
            report.Notes.Add($"Model: {shape.Describe()}. The Trainer runs with no algorithms, callbacks or loggers (progress bar off); the loop does zero_grad, forward+loss under autocast, backward, step.");
        }
        finally
        {
            trainer.Model.Dispose();
        }

        report.Load = meter.Stop();
        return report;
    }
}
