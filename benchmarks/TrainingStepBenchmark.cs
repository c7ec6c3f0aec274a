using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 2: the training step of a BERT MLM model (see <see cref="TrainingShape"/>) through <c>Trainer.Fit</c> in
/// fp32, amp_bf16 and amp_bf16 with LowPrecisionLayerNorm: samples/s, tokens/s, throughput ratios against
/// amp_bf16, and the peak resident memory of each configuration.
/// </summary>
internal static class TrainingStepBenchmark
{
    private const string Fp32 = "fp32";
    private const string Bf16 = "amp_bf16";
    private const string Lp = "amp_bf16 + LowPrecisionLayerNorm";

    /// <summary>Runs the comparison.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var shape = new TrainingShape();
        var report = new PartReport("step", "(2) BERT MLM training step through Trainer.Fit");
        report.Columns.AddRange(new[] { "precision", "ms/step (median ±IQR/2)", "samples/s", "tokens/s", "throughput vs amp_bf16", "peak RSS MiB (+ over start)" });
        (int warmup, int steps, int rounds) = settings.Step;
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        var configs = new (string Name, Precision Precision, bool Lp)[] { (Fp32, Precision.Fp32, false), (Bf16, Precision.AmpBf16, false), (Lp, Precision.AmpBf16, true) };
        var trainers = new Dictionary<string, Trainer>();
        var memory = new Dictionary<string, (long Start, long Peak)>();
        try
        {
            foreach ((string name, Precision precision, bool lp) in configs)
            {
                // Each configuration's peak in its own process: 2 steps (the first allocates, the second reuses).
                memory[name] = MemoryProbe.Measure(precision, lp, 2, settings.Threads);
                trainers[name] = TrainingSetup.CreateTrainer(shape, data, precision, lp);
            }

            Interleaved run = Interleaved.Run(
                configs.Select(c => new Variant(c.Name, () => TrainingSetup.FitSteps(trainers[c.Name], steps))).ToList(),
                warmup,
                rounds);
            var rows = new List<StepRow>();
            foreach ((string name, _, _) in configs)
            {
                Stats s = run.StatsOf(name);
                double samplesPerSecond = shape.BatchSize / (s.Median / 1000);
                Stats? throughput = name == Bf16 ? null : run.Ratio(Bf16, name);
                (long startRss, long peak) = memory[name];
                report.Rows.Add(new[]
                {
                    name, Fmt.Ms(s, 1), Fmt.N(samplesPerSecond, 1), Fmt.N(samplesPerSecond * shape.SequenceLength, 0),
                    throughput is null ? "1" : Fmt.N(throughput.Median, 3), $"{Fmt.MiB(peak)} (+{Fmt.MiB(peak - startRss)})",
                });
                rows.Add(new StepRow(name, s, samplesPerSecond, samplesPerSecond * shape.SequenceLength, throughput, peak, peak - startRss));
            }

            report.Data = new { shape = shape.Describe(), parameters = trainers[Bf16].Model.parameters().Sum(p => p.numel()), steps_per_sample = steps, rows };
            report.Notes.Add($"Model: {shape.Describe()}; {trainers[Bf16].Model.parameters().Sum(p => p.numel()):N0} parameters. Data: 8 pre-collated synthetic MLM batches in memory.");
            report.Notes.Add("Throughput ratio = per-round step time of amp_bf16 / step time of the row (> 1 is faster). Peak RSS: VmHWM of a fresh process that builds the data, then the Trainer, and trains 2 batches of one configuration; '+' is the rise over the resident size before the Trainer was built.");
        }
        finally
        {
            foreach (Trainer t in trainers.Values)
            {
                t.Dispose();
                t.Model.Dispose();
            }
        }

        report.Load = meter.Stop();
        return report;
    }
}

/// <summary>One row of part 2.</summary>
/// <param name="Precision">Precision (and algorithm).</param>
/// <param name="MsPerStep">Step time statistics (ms).</param>
/// <param name="SamplesPerSecond">Batch size / median step time.</param>
/// <param name="TokensPerSecond">Tokens per batch / median step time.</param>
/// <param name="ThroughputVsAmpBf16">Per-round ratio amp_bf16 time / this time (null for amp_bf16 itself).</param>
/// <param name="PeakRssBytes">Peak resident bytes of a process that trained only this configuration (2 batches).</param>
/// <param name="PeakRiseBytes">Peak minus the resident size before the Trainer was built.</param>
internal sealed record StepRow(string Precision, Stats MsPerStep, double SamplesPerSecond, double TokensPerSecond, Stats? ThroughputVsAmpBf16, long PeakRssBytes, long PeakRiseBytes);
