using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Training;
using TorchSharp;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Peak resident memory of one training configuration, measured in a fresh child process (the hidden
/// <c>memory-probe</c> subcommand), so that memory freed by one configuration and kept by the allocator cannot hide
/// the next one's peak, and the order of the configurations does not matter.
/// </summary>
internal static class MemoryProbe
{
    /// <summary>The hidden subcommand's name.</summary>
    public const string Command = "memory-probe";

    /// <summary>
    /// In the child: builds the Trainer for <paramref name="precision"/> (with LowPrecisionLayerNorm when
    /// <paramref name="lowPrecisionLayerNorm"/>), trains <paramref name="steps"/> batches, prints the resident bytes
    /// before building the model and the peak as one JSON line.
    /// </summary>
    public static int RunChild(Precision precision, bool lowPrecisionLayerNorm, int steps, int threads)
    {
        torch.set_num_threads(threads);
        var shape = new TrainingShape();
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        GC.Collect();
        long start = ProcessMemory.ResetPeak();
        using Trainer trainer = TrainingSetup.CreateTrainer(shape, data, precision, lowPrecisionLayerNorm);
        TrainingSetup.FitSteps(trainer, steps);
        long peak = ProcessMemory.PeakResidentBytes();
        trainer.Model.Dispose();
        Console.WriteLine(JsonSerializer.Serialize(new { start, peak }));
        return 0;
    }

    /// <summary>In the parent: runs the child for one configuration and returns (resident at start, peak) in bytes.</summary>
    public static (long Start, long Peak) Measure(Precision precision, bool lowPrecisionLayerNorm, int steps, int threads)
    {
        string last = ChildRun.LastLine(
            $"memory probe for {precision.ToComposerName()}",
            new[] { Command, precision.ToComposerName(), lowPrecisionLayerNorm ? "lp" : "plain", steps.ToString(CultureInfo.InvariantCulture), "--threads", threads.ToString(CultureInfo.InvariantCulture) });
        JsonElement json = JsonDocument.Parse(last).RootElement;
        return (json.GetProperty("start").GetInt64(), json.GetProperty("peak").GetInt64());
    }
}
