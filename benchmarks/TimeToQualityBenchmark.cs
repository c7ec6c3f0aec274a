using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.DependencyInjection;

namespace ComposerSharp.Benchmarks;

/// <summary>Options of the time-to-quality part.</summary>
/// <param name="Data">Folder of .txt files (the corpus).</param>
/// <param name="MaxDuration">Training budget of both runs, a Composer time string (e.g. <c>1ep</c>, <c>32ba</c>).</param>
/// <param name="EvalEvery">Evaluation interval in batches.</param>
/// <param name="EvalSubsetBatches">Batches of 32 blocks per evaluation (the same first ones every time); 0 for the whole eval split.</param>
/// <param name="TargetCrossEntropy">The eval cross-entropy to reach; null: the plain run's final value.</param>
/// <param name="Output">Folder for the JSON and the PNG (the run folders are temporary).</param>
/// <param name="Seed">Seed of both runs.</param>
/// <param name="Threads">libtorch intra-op threads.</param>
internal sealed record TimeToQualityOptions(string Data, string MaxDuration, int EvalEvery, int EvalSubsetBatches, double? TargetCrossEntropy, string Output, int Seed, int Threads);

/// <summary>
/// Time to quality: the same small BERT MLM on a text folder (GPT-2 BPE, blocks of 128) trained (a) plain
/// and (b) with a recipe of this library's algorithms, same seed, data order and budget, one after the other in this
/// process through the CLI's TrainJob. A callback records, at every evaluation, the training wall-clock (evaluation
/// time excluded), samples, tokens and eval cross-entropy; the report gives when each run first reaches the target
/// cross-entropy, the ratios, the machine load during each run, and draws both curves into one PNG.
/// </summary>
internal static class TimeToQualityBenchmark
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The recipe (b): Composer's BERT recipe in spirit, with what this library has.</summary>
    public const string RecipeAlgorithms = """
        algorithms:
          low_precision_layernorm: {}
          gated_linear_units: {}
          alibi:
            max_sequence_length: 128
            train_sequence_length_scaling: 1.0
          seq_length_warmup:
            duration: 0.3
            min_seq_length: 32
            max_seq_length: 128
            step_size: 32
            truncate: true
        """;

    /// <summary>Runs both variants and reports; returns 0.</summary>
    public static int Run(TimeToQualityOptions o)
    {
        TorchSharp.torch.set_num_threads(o.Threads);
        Directory.CreateDirectory(o.Output);
        MachineInfo machine = MachineInfo.Collect(Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "unset");
        Console.WriteLine($"Time to quality: {machine.CpuModel}, {machine.LogicalCores} cores, torch threads {o.Threads}, load at start {string.Join('/', LoadMeter.ReadLoadAverage() ?? Array.Empty<double>())}");
        var runs = new List<RunRecord>();
        foreach ((string name, string algorithms) in new[] { ("plain", string.Empty), ("recipe", RecipeAlgorithms) })
        {
            var recorder = new QualityRecorder();
            LoadMeter meter = LoadMeter.Start();
            var clock = Stopwatch.StartNew();
            ServiceCollection services = CliApp.CreateServices(Array.Empty<string>());
            services.AddCallback("ttq_recorder", (_, _) => recorder);
            // The run folders (checkpoints of 240 MB each) go to a temporary folder, removed after the run: the
            // report keeps what the comparison needs, and the repository's results/ keeps only the JSON and the plot.
            string runFolder = Path.Combine(Path.GetTempPath(), "composersharp-ttq-" + Guid.NewGuid().ToString("N"), "ttq-" + name);
            try
            {
                using ServiceProvider provider = services.BuildServiceProvider();
                new TrainJob(ConfigSection.Parse(Config(o, name, runFolder) + algorithms), provider).Train();
            }
            finally
            {
                Directory.Delete(Path.GetDirectoryName(runFolder)!, recursive: true);
            }

            LoadReport load = meter.Stop();
            runs.Add(new RunRecord(name, algorithms.Length == 0 ? "none" : "low_precision_layernorm, gated_linear_units, alibi, seq_length_warmup",
                clock.Elapsed.TotalSeconds, load, recorder.Evaluations, recorder.TrainLoss));
            Console.WriteLine($"{name}: {clock.Elapsed.TotalSeconds:F0} s, final eval CE {recorder.Evaluations[^1].CrossEntropy:F4}, load {load}");
        }

        double target = o.TargetCrossEntropy ?? runs[0].Evaluations[^1].CrossEntropy;
        var report = new Report(machine, o, target, runs, runs.Select(r => Reach(r, target)).ToList());
        string stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        string json = Path.Combine(o.Output, $"ttq-{stamp}.json");
        File.WriteAllText(json, JsonSerializer.Serialize(report, Indented));
        string png = Path.Combine(o.Output, "ttq-latest.png");
        Plot(report, png);
        PrintMarkdown(report);
        Console.WriteLine($"Wrote {json} and {png}.");
        return 0;
    }

    private static string Config(TimeToQualityOptions o, string name, string runFolder) => $"""
        run_name: ttq-{name}
        run_folder: {runFolder}
        save_overwrite: true
        seed: {o.Seed}
        precision: amp_bf16
        device: cpu
        max_duration: {o.MaxDuration}
        eval_interval: {o.EvalEvery}ba
        {(o.EvalSubsetBatches > 0 ? $"eval_subset_num_batches: {o.EvalSubsetBatches}" : string.Empty)}
        progress_bar: false
        model:
          name: bert_mlm
          preset: bert-tiny
          max_sequence_length: 128
        train_loader:
          batch_size: 16
          shuffle: true
          drop_last: true
          dataset:
            name: text_mlm
            path: {o.Data}
            block_size: 128
            split: train
            eval_fraction: 0.1
        eval_loader:
          batch_size: 32
          dataset:
            name: text_mlm
            path: {o.Data}
            block_size: 128
            split: eval
            eval_fraction: 0.1
        optimizer:
          name: adamw
          lr: 1.0e-3
          betas: [0.9, 0.98]
          weight_decay: 1.0e-5
        scheduler:
          name: linear_decay_with_warmup
          t_warmup: 0.06dur
          alpha_f: 0.1
        callbacks:
          ttq_recorder: {"{}"}

        """;

    /// <summary>The first evaluation at or below <paramref name="target"/>, or null.</summary>
    private static Reached? Reach(RunRecord run, double target) =>
        run.Evaluations.FirstOrDefault(e => e.CrossEntropy <= target) is { } e ? new Reached(e.Batch, e.Samples, e.Tokens, e.TrainSeconds, e.TrainCpuSeconds) : null;

    private static void Plot(Report report, string path)
    {
        var plot = new ScottPlot.Plot();
        foreach (RunRecord run in report.Runs)
        {
            var train = plot.Add.Scatter(run.TrainLoss.Select(p => p.TrainSeconds).ToArray(), run.TrainLoss.Select(p => p.Loss).ToArray());
            train.LegendText = $"{run.Name}: train loss";
            train.MarkerSize = 0;
            train.LineWidth = 1;
            var eval = plot.Add.Scatter(run.Evaluations.Select(p => p.TrainSeconds).ToArray(), run.Evaluations.Select(p => p.CrossEntropy).ToArray());
            eval.LegendText = $"{run.Name}: eval cross-entropy";
            eval.MarkerSize = 7;
            eval.LineWidth = 2;
        }

        var line = plot.Add.HorizontalLine(report.TargetCrossEntropy);
        line.LegendText = $"target {report.TargetCrossEntropy:F3}";
        line.LinePattern = ScottPlot.LinePattern.Dashed;
        plot.Title($"BERT MLM (bert-tiny) time to quality, {report.Machine.CpuModel}, {report.Machine.LogicalCores} cores");
        plot.XLabel("training wall-clock, s (evaluation excluded)");
        plot.YLabel("cross-entropy, nats");
        plot.ShowLegend(ScottPlot.Alignment.UpperRight);
        plot.SavePng(path, 1000, 600);
    }

    private static void PrintMarkdown(Report r)
    {
        Console.WriteLine();
        Console.WriteLine($"Target eval cross-entropy: {r.TargetCrossEntropy:F4} nats");
        foreach (RunRecord run in r.Runs)
        {
            Console.WriteLine($"{run.Name} evaluations (batch: train s, CPU s, CE): " + string.Join("; ", run.Evaluations.Select(e => string.Create(CultureInfo.InvariantCulture, $"{e.Batch}: {e.TrainSeconds:F0}, {e.TrainCpuSeconds:F0}, {e.CrossEntropy:F3}"))));
        }

        Console.WriteLine("| run | algorithms | batches to target | samples to target | train s to target | train CPU s to target | final eval CE | total wall-clock s | cores busy (machine) / used by run | load avg (1/5/15) |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for (int i = 0; i < r.Runs.Count; i++)
        {
            RunRecord run = r.Runs[i];
            Reached? reach = r.Reached[i];
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {run.Name} | {run.Algorithms} | {reach?.Batch.ToString(CultureInfo.InvariantCulture) ?? "not reached"} | {reach?.Samples.ToString(CultureInfo.InvariantCulture) ?? "–"} | {(reach is null ? "–" : reach.TrainSeconds.ToString("F0", CultureInfo.InvariantCulture))} | {(reach is null ? "–" : reach.TrainCpuSeconds.ToString("F0", CultureInfo.InvariantCulture))} | {run.Evaluations[^1].CrossEntropy:F4} | {run.WallClockSeconds:F0} | {run.Load.MachineBusyCores:F2} / {run.Load.BenchmarkCores:F2} | {string.Join('/', run.Load.LoadAverage ?? Array.Empty<double>())} |"));
        }

        if (r.Reached[0] is { } a && r.Reached[1] is { } b)
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Ratio plain / recipe: wall-clock {a.TrainSeconds / b.TrainSeconds:F2}×, CPU time {a.TrainCpuSeconds / b.TrainCpuSeconds:F2}×, samples {(double)a.Samples / b.Samples:F2}×."));
        }
        else
        {
            Console.WriteLine("Ratio: not defined (a run did not reach the target within the budget).");
        }
    }

    /// <summary>One evaluation: where the run was and the eval cross-entropy.</summary>
    internal sealed record EvalPoint(long Batch, long Samples, long Tokens, double TrainSeconds, double TrainCpuSeconds, double CrossEntropy);

    /// <summary>One training batch's loss.</summary>
    internal sealed record LossPoint(long Batch, double TrainSeconds, double Loss);

    /// <summary>Where a run first reached the target.</summary>
    internal sealed record Reached(long Batch, long Samples, long Tokens, double TrainSeconds, double TrainCpuSeconds);

    /// <summary>One run's records.</summary>
    internal sealed record RunRecord(string Name, string Algorithms, double WallClockSeconds, LoadReport Load, IReadOnlyList<EvalPoint> Evaluations, IReadOnlyList<LossPoint> TrainLoss);

    /// <summary>Everything written to the JSON.</summary>
    internal sealed record Report(MachineInfo Machine, TimeToQualityOptions Options, double TargetCrossEntropy, IReadOnlyList<RunRecord> Runs, IReadOnlyList<Reached?> Reached);

    /// <summary>Records the training clock (paused during evaluation), the eval cross-entropy at every evaluation and the train loss of every batch.</summary>
    private sealed class QualityRecorder : Callback
    {
        private readonly Stopwatch _train = new();
        private double _cpu;
        private TimeSpan _cpuMark;

        private static TimeSpan Cpu() => Process.GetCurrentProcess().TotalProcessorTime;

        public List<EvalPoint> Evaluations { get; } = new();

        public List<LossPoint> TrainLoss { get; } = new();

        public override void FitStart(State state, Logger logger)
        {
            _train.Restart();
            _cpuMark = Cpu();
        }

        public override void BatchEnd(State state, Logger logger)
        {
            if (state.Loss is { } loss)
            {
                TrainLoss.Add(new LossPoint(state.Timestamp.Batch, _train.Elapsed.TotalSeconds, loss.item<float>()));
            }
        }

        public override void EvalBeforeAll(State state, Logger logger)
        {
            _train.Stop();
            _cpu += (Cpu() - _cpuMark).TotalSeconds;
        }

        public override void EvalAfterAll(State state, Logger logger)
        {
            if (state.Metrics.TryGetValue("metrics/eval/CrossEntropy", out double ce))
            {
                Evaluations.Add(new EvalPoint(state.Timestamp.Batch, state.Timestamp.Sample, state.Timestamp.Token, _train.Elapsed.TotalSeconds, _cpu, ce));
            }

            _train.Start();
            _cpuMark = Cpu();
        }

        public override void FitEnd(State state, Logger logger) => _train.Stop();
    }
}
