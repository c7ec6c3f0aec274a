using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Diagnosers;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Toolchains.InProcess.NoEmit;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Training;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part 3b: the cost of the event machinery alone. One "batch" is the 13 events the Trainer raises per training
/// batch (one microbatch): BeforeDataloader … BatchCheckpoint, dispatched by <see cref="Engine.RunEvent"/> to
/// <see cref="Plugins"/> no-op algorithms (which match every event) and as many no-op callbacks. Measured by
/// BenchmarkDotNet (in-process), with allocated bytes per batch from its memory diagnoser.
/// </summary>
[MemoryDiagnoser]
public class EventDispatch : IDisposable
{
    /// <summary>The per-batch training events of a batch without microbatching, in the Trainer's order.</summary>
    public static readonly Event[] PerBatchEvents =
    {
        Event.BeforeDataloader, Event.AfterDataloader, Event.BatchStart, Event.BeforeTrainBatch, Event.BeforeForward, Event.AfterForward,
        Event.BeforeLoss, Event.AfterLoss, Event.BeforeBackward, Event.AfterBackward, Event.AfterTrainBatch, Event.BatchEnd, Event.BatchCheckpoint,
    };

    private Engine? _engine;
    private TorchSharp.Modules.Identity? _model;

    /// <summary>Number of no-op algorithms and, separately, of no-op callbacks.</summary>
    [Params(0, 10)]
    public int Plugins { get; set; }

    /// <summary>Builds the state (a parameterless model, a dataloader that is never iterated, a max duration) and the engine.</summary>
    [GlobalSetup]
    public void Setup()
    {
        _model = torch.nn.Identity();
        var dataset = new SyntheticTokenDataset(new SyntheticTokenOptions { NumSamples = 1, SequenceLength = 8 });
        var state = new State(_model)
        {
            Dataloader = new DataLoader<long[]>(dataset, 1, new MlmCollator(dataset.Vocabulary)),
            MaxDuration = Time.FromBatch(1_000_000),
            Algorithms = Enumerable.Range(0, Plugins).Select(_ => (IAlgorithm)new NoOpAlgorithm()).ToList(),
            Callbacks = Enumerable.Range(0, Plugins).Select(_ => (ICallback)new NoOpCallback()).ToList(),
        };
        _engine = new Engine(state, new Logger(state));
    }

    /// <summary>Dispatches one batch's events.</summary>
    [Benchmark]
    public void Batch()
    {
        Engine engine = _engine!;
        foreach (Event e in PerBatchEvents)
        {
            engine.RunEvent(e);
        }
    }

    /// <summary>Closes the engine and frees the model.</summary>
    [GlobalCleanup]
    public void Cleanup()
    {
        _engine?.Close();
        _engine = null;
        _model?.Dispose();
        _model = null;
    }

    /// <summary>Frees the engine and the model (BenchmarkDotNet calls <see cref="Cleanup"/>; this is for other callers).</summary>
    public void Dispose()
    {
        Cleanup();
        GC.SuppressFinalize(this);
    }

    /// <summary>An algorithm that matches every event and does nothing (written as users write algorithms: on the <see cref="Algorithm"/> base).</summary>
    public sealed class NoOpAlgorithm : Algorithm
    {
        /// <inheritdoc/>
        public override bool Match(Event e, State state) => true;

        /// <inheritdoc/>
        public override int? Apply(Event e, State state, Logger logger) => null;
    }

    /// <summary>A callback that overrides nothing: every event goes through <see cref="Callback.RunEvent"/>'s dispatch to an empty method.</summary>
    public sealed class NoOpCallback : Callback
    {
    }
}

/// <summary>Runs <see cref="EventDispatch"/> with BenchmarkDotNet and turns its summary into a part report.</summary>
internal static class DispatchBenchmark
{
    /// <summary>Runs the benchmark in-process.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("dispatch", "(3b) Event dispatch per batch (13 events) through the Engine");
        report.Columns.AddRange(new[] { "algorithms + callbacks", "µs/batch (median)", "ns/event", "bytes allocated/batch" });
        Job job = (settings.Quick
                ? Job.Default.WithLaunchCount(1).WithWarmupCount(1).WithIterationCount(3).WithIterationTime(Perfolizer.Horology.TimeInterval.FromMilliseconds(50))
                : Job.Default.WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(12).WithIterationTime(Perfolizer.Horology.TimeInterval.FromMilliseconds(250)))
            .WithToolchain(InProcessNoEmitToolchain.Instance);
        var log = new AccumulationLogger();
        IConfig config = ManualConfig.CreateEmpty()
            .AddJob(job)
            .AddDiagnoser(MemoryDiagnoser.Default)
            .AddLogger(log)
            .AddColumnProvider(DefaultColumnProviders.Instance)
            .WithArtifactsPath(Path.Combine(Path.GetTempPath(), "composersharp-bdn"));
        Summary summary = BenchmarkDotNet.Running.BenchmarkRunner.Run<EventDispatch>(config);
        var rows = new List<DispatchRow>();
        foreach (BenchmarkReport r in summary.Reports.OrderBy(r => (int)r.BenchmarkCase.Parameters["Plugins"]))
        {
            int plugins = (int)r.BenchmarkCase.Parameters["Plugins"];
            if (r.ResultStatistics is null)
            {
                throw new InvalidOperationException($"BenchmarkDotNet produced no result for {plugins} plugins:{Environment.NewLine}{log.GetLog()}");
            }

            double us = r.ResultStatistics.Median / 1000;
            long? bytes = r.GcStats.GetBytesAllocatedPerOperation(r.BenchmarkCase);
            report.Rows.Add(new[] { $"{plugins} + {plugins}", Fmt.N(us, 2), Fmt.N(us * 1000 / EventDispatch.PerBatchEvents.Length, 0), bytes?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "?" });
            rows.Add(new DispatchRow(plugins, plugins, us, r.ResultStatistics.StandardError / 1000, bytes));
            if (plugins == 10)
            {
                report.Targets.Add(TargetCheck.AtMost("event dispatch ≤ 50 µs per batch with 10 algorithms and 10 callbacks", us, 50));
            }
        }

        if (rows.Count == 0)
        {
            throw new InvalidOperationException($"BenchmarkDotNet ran no benchmark:{Environment.NewLine}{log.GetLog()}");
        }

        report.Data = rows;
        report.Notes.Add("BenchmarkDotNet, in-process toolchain, median of its iterations; algorithms derive from Algorithm and match every event, callbacks derive from Callback and override nothing.");
        report.Load = meter.Stop();
        return report;
    }
}

/// <summary>One row of part 3b.</summary>
/// <param name="Algorithms">No-op algorithms.</param>
/// <param name="Callbacks">No-op callbacks.</param>
/// <param name="MicrosecondsPerBatch">Median time to dispatch the 13 per-batch events.</param>
/// <param name="StandardErrorMicroseconds">BenchmarkDotNet's standard error of the mean.</param>
/// <param name="BytesAllocatedPerBatch">Managed bytes allocated per batch.</param>
internal sealed record DispatchRow(int Algorithms, int Callbacks, double MicrosecondsPerBatch, double StandardErrorMicroseconds, long? BytesAllocatedPerBatch);
