using System.Diagnostics;
using ComposerSharp.Benchmarks.Harness;
using Spectre.Console;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>A part of the benchmark: a subcommand name, a description and what it runs.</summary>
/// <param name="Name">Subcommand.</param>
/// <param name="Description">Help text.</param>
/// <param name="Run">Runs the part and returns its reports (one or more tables).</param>
internal sealed record BenchmarkPart(string Name, string Description, Func<Settings, IEnumerable<PartReport>>? Run);

/// <summary>Runs parts, prints their tables and writes the JSON.</summary>
internal static class BenchmarkRunner
{
    /// <summary>The benchmark parts, in the order <c>all</c> runs them.</summary>
    public static IReadOnlyList<BenchmarkPart> Parts { get; } = new BenchmarkPart[]
    {
        new("layernorm", "(1) LayerNorm forward+backward: fp32 vs LPLayerNorm under amp_bf16/amp_fp16, with copy bandwidth.", s => new[] { LayerNormBenchmark.Run(s) }),
        new("layernorm-profile", "(1b) Where the fused LayerNorm's time goes: raw kernel forward/backward, allocation, autograd node, vs fp32 LayerNorm.", s => new[] { LayerNormProfile.Run(s) }),
        new("step", "(2) BERT MLM training step: fp32, amp_bf16, amp_bf16 + LowPrecisionLayerNorm.", s => new[] { TrainingStepBenchmark.Run(s) }),
        new("vocab", "(2b) MLM step with a GPT-2 vocabulary: dense vs sparse head, glibc default vs 1 GiB heap thresholds (fresh process each).", s => new[] { VocabularyBenchmark.Run(s) }),
        new("overhead", "(3a) Trainer.Fit vs a hand-written TorchSharp loop doing the same work.", s => new[] { OverheadBenchmark.Run(s) }),
        new("dispatch", "(3b) Event dispatch cost per batch with ten no-op algorithms and ten no-op callbacks (BenchmarkDotNet).", s => new[] { DispatchBenchmark.Run(s) }),
        new("peer", "(4) The same training step in PyTorch eager (python3 with torch), fp32 and bf16 autocast.", s => new[] { PeerBenchmark.Run(s) }),
        new("peer-modules", "(4b) The step of (4) piece by piece (embeddings, attention parts, FFN parts, LayerNorm, dropout, head, loss, AdamW) against the PyTorch peer.", s => new[] { PeerModulesBenchmark.Run(s) }),
        new("determinism", "(5) The training step of (2) with and without deterministic mode, each in a fresh process.", s => new[] { DeterminismBenchmark.Run(s) }),
        new("memory", "(7) Peak RSS of a few AdamW steps (BERT-mini MLM, gpt-tiny with GPT-2 vocabulary, all-MiniLM-L6-v2 shape; fp32 and amp_bf16) vs PyTorch eager, and RSS flatness over a long run (fresh process each).", s => MemoryBenchmark.Run(s)),
        new("activation-checkpointing", "(9) Activation checkpointing: peak activation memory and step time of a GPT step at sequence 512, with and without (fresh process each).", s => new[] { ActivationCheckpointingBenchmark.Run(s) }),
        new("generate", "(6) GPT text generation: tokens/s with and without the key/value cache.", s => new[] { GenerationBenchmark.Run(s) }),
        new("onnx", "(8) The exported spam classifier in ONNX Runtime vs the TorchSharp forward of predict, batch 1 and 32.", s => new[] { OnnxBenchmark.Run(s) }),
        new("optim", "(10) Optimizer step: fused flat-buffer AdamW / DecoupledSGDW / DecoupledLionW kernels vs the unfused tensor ops.", s => new[] { OptimizerBenchmark.Run(s) }),
        new("loader", "(11) DataLoader batches/s with 0/1/2 workers vs the default model's step consumption, and the Trainer's time/data_wait share.", s => new[] { LoaderBenchmark.Run(s) }),
    };

    /// <summary>Every part.</summary>
    public static BenchmarkPart All { get; } = new("all", "Every part: layernorm, layernorm-profile, step, vocab, overhead, dispatch, peer, peer-modules, determinism, memory, generate, onnx, activation-checkpointing, optim.", null);

    /// <summary>benchmarks/results beside the project file when it can be found from the executable, else ./results.</summary>
    public static string DefaultResultsFolder()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "ComposerSharp.Benchmarks.csproj")))
            {
                return Path.Combine(d.FullName, "results");
            }
        }

        return Path.Combine(Environment.CurrentDirectory, "results");
    }

    /// <summary>Runs <paramref name="part"/> (or all), prints and saves; 0 when every part ran (or was skipped with a reason), 1 when one failed.</summary>
    public static int Run(BenchmarkPart part, Settings settings, string commandLine)
    {
        var clock = Stopwatch.StartNew();
        if (Console.IsOutputRedirected)
        {
            AnsiConsole.Profile.Width = 160;
        }

        torch.set_num_threads(settings.Threads);
        MachineInfo machine = MachineInfo.Collect(settings.OmpWaitPolicy);
        AnsiConsole.MarkupLine($"[bold]ComposerSharp benchmarks[/] {Markup.Escape(commandLine)}{(settings.Quick ? " [yellow](quick smoke run: numbers are not meaningful)[/]" : string.Empty)}");
        AnsiConsole.MarkupLine(Markup.Escape(
            $"{machine.CpuModel} [{string.Join(' ', machine.CpuFlags)}], {machine.LogicalCores} cores, torch threads {machine.TorchThreads}, " +
            $"libtorch {machine.LibtorchVersion}, TorchSharp {machine.TorchSharpVersion}, {machine.Runtime}, OMP_WAIT_POLICY={machine.OmpWaitPolicy}, {machine.DateUtc}, " +
            $"load average {(machine.LoadAverageAtStart is null ? "?" : string.Join(' ', machine.LoadAverageAtStart))}"));

        var reports = new List<PartReport>();
        foreach (BenchmarkPart p in part.Run is null ? Parts : new[] { part })
        {
            try
            {
                foreach (PartReport r in p.Run!(settings))
                {
                    r.Print();
                    reports.Add(r);
                }
            }
            catch (Exception ex) when (ex is not OutOfMemoryException)
            {
                var failed = new PartReport(p.Name, p.Description) { Error = ex.ToString() };
                failed.Print();
                reports.Add(failed);
            }
        }

        var run = new RunReport(commandLine, settings.Quick, machine, reports, Math.Round(clock.Elapsed.TotalSeconds, 1));
        string path = run.Write(settings.OutputFolder);
        AnsiConsole.WriteLine();
        AnsiConsole.MarkupLine($"results: {Markup.Escape(path)} ({run.TotalSeconds:F0} s)");
        return reports.Any(r => r.Error is not null) ? 1 : 0;
    }
}
