using System.Diagnostics;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Models;
using ComposerSharp.Training;
using ComposerSharp.Training.Loggers;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 11: data loader throughput (batches/s of the synthetic MLM data with the MLM collator, the CLI's default data,
/// elastic <c>py1s</c> shuffle) with 0, 1 and 2 worker threads, against the batches/s the default model's training
/// step consumes (BERT-mini MLM, amp_bf16, in-memory batches), and the <c>time/data_wait</c> share of the step that
/// the Trainer logs when it trains from the loader itself (PyTorch's DataLoader <c>num_workers</c>).
/// </summary>
internal static class LoaderBenchmark
{
    private sealed class WaitRecorder : LoggerDestination
    {
        public List<double> Fractions { get; } = new();

        public List<double> Waits { get; } = new();

        public override void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
        {
            if (metrics.TryGetValue("time/data_wait_fraction", out double f))
            {
                Fractions.Add(f);
                Waits.Add(metrics["time/data_wait"]);
            }
        }
    }

    /// <summary>Runs the part.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var shape = new TrainingShape();
        var report = new PartReport("loader", "(11) DataLoader batches/s with 0/1/2 workers vs the default model's step, and time/data_wait");
        report.Columns.AddRange(new[] { "variant", "ms/batch (median ±IQR/2)", "batches/s", "× step consumption", "data_wait share of step" });
        int batches = settings.Quick ? 4 : 32, rounds = settings.Quick ? 2 : 8, steps = settings.Quick ? 2 : 6;
        var dataset = new SyntheticTokenDataset(new SyntheticTokenOptions
        {
            NumSamples = shape.BatchSize * batches, SequenceLength = shape.SequenceLength, RegularVocabSize = shape.RegularVocab, Seed = 1,
        });
        var collator = new MlmCollator(dataset.Vocabulary, new MlmCollatorOptions { Seed = 1 });
        DataLoader<long[]> Loader(int workers) =>
            new(dataset, shape.BatchSize, collator, shuffle: true, dropLast: true, seed: 1) { ShuffleAlgo = StreamingShuffle.Py1s, NumWorkers = workers };

        var variants = new[] { 0, 1, 2 }.Select(w => new Variant($"{w} workers", () =>
        {
            DataLoader<long[]> loader = Loader(w);
            var clock = Stopwatch.StartNew();
            foreach (Batch b in loader.GetEpoch(0))
            {
                foreach (torch.Tensor t in b.Values)
                {
                    t.Dispose();
                }
            }

            return clock.Elapsed.TotalMilliseconds / batches;
        })).ToList();
        Interleaved run = Interleaved.Run(variants, 1, rounds);

        using InMemoryBatches data = InMemoryBatches.Create(shape, 4);
        using Trainer stepTrainer = TrainingSetup.CreateTrainer(shape, data, Precision.AmpBf16);
        TrainingSetup.FitSteps(stepTrainer, 1);
        double stepMs = TrainingSetup.FitSteps(stepTrainer, steps);

        // The Trainer reading the loader itself (2 workers): the wait the training thread sees.
        var recorder = new WaitRecorder();
        torch.manual_seed(TrainingSetup.ModelSeed);
        using (var fromLoader = new Trainer(
            new BertForMaskedLM(shape.Config),
            new TrainerOptions { Precision = Precision.AmpBf16, Device = "cpu", Seed = TrainingSetup.ModelSeed, ProgressBar = false },
            trainDataloader: Loader(2),
            loggers: new[] { recorder },
            optimizerFactory: p => torch.optim.AdamW(p, lr: shape.LearningRate)))
        {
            fromLoader.Fit(Time.FromBatch(steps + 1));
        }

        // The first batch of an epoch waits for the workers to start; the steady state is the rest.
        double share = recorder.Fractions.Skip(1).DefaultIfEmpty(double.NaN).Average();
        var rows = new List<object>();
        foreach (Variant v in variants)
        {
            Stats s = run.StatsOf(v.Name);
            double perSecond = 1000 / s.Median;
            double times = stepMs / s.Median;
            report.Rows.Add(new[] { v.Name, Fmt.Ms(s, 2), Fmt.N(perSecond, 1), Fmt.N(times, 1), v.Name == "2 workers" ? $"{share * 100:0.00} %" : "" });
            rows.Add(new { variant = v.Name, ms_per_batch = s, batches_per_second = perSecond, times_step_consumption = times });
        }

        report.Rows.Add(new[] { "training step (amp_bf16, in-memory batches)", Fmt.N(stepMs, 1), Fmt.N(1000 / stepMs, 2), "1", "" });
        report.Targets.Add(TargetCheck.AtMost("loader time per batch (0 workers) ≤ 1/20 of the step (loader ≥ 20× the step's consumption)", run.StatsOf("0 workers").Median / stepMs, 0.05));
        report.Targets.Add(TargetCheck.AtMost("time/data_wait ≤ 1 % of the step (2 workers)", share, 0.01));
        report.Data = new { shape = shape.Describe(), step_ms = stepMs, data_wait_share = share, data_wait_seconds = recorder.Waits, rows };
        report.Notes.Add($"Model: {shape.Describe()}. Loader: SyntheticTokenDataset + MlmCollator, batch {shape.BatchSize} × {shape.SequenceLength}, shuffle_algo py1s, tensors disposed after each batch.");
        report.Notes.Add("Workers read samples ahead on threads; the collator (tensor creation, MLM masking) runs on the enumerating thread, so workers help only when reading samples dominates (streaming datasets), not for in-memory synthetic data.");
        report.Load = meter.Stop();
        return report;
    }
}
