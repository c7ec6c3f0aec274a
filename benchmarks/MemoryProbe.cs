using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Models;
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

    /// <summary>The training shapes the <c>memory</c> part and the child accept, by key (bert-mini is the step part's shape).</summary>
    public static IReadOnlyDictionary<string, TrainingShape> Shapes { get; } = new Dictionary<string, TrainingShape>
    {
        ["bert-mini"] = new TrainingShape(),
        ["gpt-tiny-gpt2"] = new TrainingShape { Preset = "gpt-tiny", RegularVocab = TransformerConfig.Gpt2PaddedVocabSize - 4, VocabSize = TransformerConfig.Gpt2PaddedVocabSize, BatchSize = 32, SequenceLength = 64 },
        ["gpt-tiny-gpt2-b8"] = new TrainingShape { Preset = "gpt-tiny", RegularVocab = TransformerConfig.Gpt2PaddedVocabSize - 4, VocabSize = TransformerConfig.Gpt2PaddedVocabSize, BatchSize = 8, SequenceLength = 64 },
        ["minilm-l6"] = new TrainingShape
        {
            Preset = "all-MiniLM-L6-v2",
            Sizes = TransformerConfig.Preset("bert-mini") with { NumLayers = 6, HiddenSize = 384, NumHeads = 12, IntermediateSize = 1536 },
            RegularVocab = 30522 - 4,
            VocabSize = 30522,
            BatchSize = 32,
            SequenceLength = 256,
        },
    };

    /// <summary>
    /// In the child: builds 8 batches of the shape <paramref name="shapeKey"/> (see <see cref="Shapes"/>), reads the
    /// resident bytes (the baseline), builds the Trainer for <paramref name="precision"/> (with LowPrecisionLayerNorm
    /// when <paramref name="lowPrecisionLayerNorm"/>), resets the peak, trains <paramref name="steps"/> batches and
    /// prints the baseline and the peak as one JSON line.
    /// </summary>
    public static int RunChild(Precision precision, bool lowPrecisionLayerNorm, int steps, int threads, string shapeKey = "bert-mini")
    {
        torch.set_num_threads(threads);
        TrainingShape shape = Shapes[shapeKey];
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        GC.Collect();
        long start = ProcessMemory.ResidentBytes();
        using Trainer trainer = TrainingSetup.CreateTrainer(shape, data, precision, lowPrecisionLayerNorm);
        ProcessMemory.ResetPeak();
        TrainingSetup.FitSteps(trainer, steps);
        long peak = ProcessMemory.PeakResidentBytes();
        trainer.Model.Dispose();
        Console.WriteLine(JsonSerializer.Serialize(new { start, peak }));
        return 0;
    }

    /// <summary>
    /// In the child: the flatness run. Trains the shape <paramref name="shapeKey"/> in fp32 for up to
    /// <paramref name="batches"/> batches in chunks of <paramref name="every"/>, stopping early once
    /// <paramref name="maxSeconds"/> have passed, and prints the resident bytes after each chunk as one JSON line
    /// (<c>batches</c>: batches done at each reading, <c>rss</c>: bytes).
    /// </summary>
    public static int RunFlatChild(string shapeKey, int batches, int every, double maxSeconds, int threads)
    {
        torch.set_num_threads(threads);
        TrainingShape shape = Shapes[shapeKey];
        using InMemoryBatches data = InMemoryBatches.Create(shape, 8);
        using Trainer trainer = TrainingSetup.CreateTrainer(shape, data, Precision.Fp32);
        var done = new List<int>();
        var rss = new List<long>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (done.Count * every < batches && clock.Elapsed.TotalSeconds < maxSeconds)
        {
            TrainingSetup.FitSteps(trainer, every);
            done.Add((done.Count + 1) * every);
            rss.Add(ProcessMemory.ResidentBytes());
        }

        trainer.Model.Dispose();
        Console.WriteLine(JsonSerializer.Serialize(new { batches = done, rss, seconds = clock.Elapsed.TotalSeconds }));
        return 0;
    }

    /// <summary>In the parent: runs the child for one configuration and returns (resident before the model, peak of the steps) in bytes.</summary>
    public static (long Start, long Peak) Measure(Precision precision, bool lowPrecisionLayerNorm, int steps, int threads, string shapeKey = "bert-mini")
    {
        string last = ChildRun.LastLine(
            $"memory probe for {shapeKey} {precision.ToComposerName()}",
            new[] { Command, precision.ToComposerName(), lowPrecisionLayerNorm ? "lp" : "plain", steps.ToString(CultureInfo.InvariantCulture), shapeKey, "--threads", threads.ToString(CultureInfo.InvariantCulture) });
        JsonElement json = JsonDocument.Parse(last).RootElement;
        return (json.GetProperty("start").GetInt64(), json.GetProperty("peak").GetInt64());
    }
}
