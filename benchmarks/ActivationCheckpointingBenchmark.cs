using System.Globalization;
using System.Text.Json;
using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Interop;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// Part "activation-checkpointing": peak activation memory and step time of a GPT training step at sequence 512
/// with and without activation checkpointing of every transformer block (<see cref="ActivationCheckpoint"/>), each
/// in a fresh process (hidden <c>activation-checkpointing-probe</c> subcommand). The activation peak is the
/// resident-memory high-water mark (VmHWM) of the steps minus the resident memory before the first step and minus
/// the bytes of the gradients and AdamW state (3 × 4 bytes per parameter), with glibc's mmap threshold fixed at
/// 128 KiB so that freed tensors leave the resident set.
/// </summary>
internal static class ActivationCheckpointingBenchmark
{
    /// <summary>The hidden subcommand's name.</summary>
    public const string Command = "activation-checkpointing-probe";

    /// <summary>The model: 4 pre-LN GPT blocks, hidden 256, 4 heads, intermediate 1024, vocabulary 1024, dropout 0.1.</summary>
    private static TransformerConfig Config() => TransformerConfig.Preset("gpt-tiny") with
    {
        NumLayers = 4,
        HiddenSize = 256,
        NumHeads = 4,
        IntermediateSize = 1024,
        MaxSequenceLength = 512,
        VocabSize = 1024,
    };

    private const int BatchSize = 4;
    private const int SequenceLength = 512;

    /// <summary>Both configurations, one fresh process each.</summary>
    public static PartReport Run(Settings settings)
    {
        var meter = LoadMeter.Start();
        var report = new PartReport("activation-checkpointing", "(9) Activation checkpointing: peak activation memory and step time at sequence 512 (fresh process each)");
        report.Columns.AddRange(new[] { "checkpointing", "steps", "activation peak MiB", "step ms (median)" });
        int steps = settings.Quick ? 2 : 5;
        // Large blocks from mmap and back to the system when freed, so the resident high-water mark follows the live
        // tensors instead of what glibc's heap keeps after the first step (the children inherit it).
        Environment.SetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_", "131072");
        var results = new Dictionary<bool, (long Peak, double Ms)>();
        foreach (bool on in new[] { false, true })
        {
            string last = ChildRun.LastLine(
                $"activation checkpointing probe ({(on ? "on" : "off")})",
                new[] { Command, on ? "on" : "off", steps.ToString(CultureInfo.InvariantCulture), "--threads", settings.Threads.ToString(CultureInfo.InvariantCulture) });
            JsonElement json = JsonDocument.Parse(last).RootElement;
            long peak = json.GetProperty("peak").GetInt64() - json.GetProperty("start").GetInt64();
            double ms = json.GetProperty("step_ms").GetDouble();
            results[on] = (peak, ms);
            report.Rows.Add(new[] { on ? "on" : "off", steps.ToString(CultureInfo.InvariantCulture), Fmt.MiB(peak), Fmt.N(ms, 0) });
        }

        double memoryRatio = (double)results[true].Peak / results[false].Peak;
        double timeRatio = results[true].Ms / results[false].Ms;
        report.Rows.Add(new[] { "ratio on/off", "", Fmt.N(memoryRatio, 2), Fmt.N(timeRatio, 2) });
        report.Targets.Add(TargetCheck.AtMost("activation peak with checkpointing ≤ 0.60 × without", memoryRatio, 0.60));
        report.Targets.Add(TargetCheck.AtMost("step time with checkpointing ≤ 1.35 × without", timeRatio, 1.35));
        report.Data = new { off_peak = results[false].Peak, on_peak = results[true].Peak, off_ms = results[false].Ms, on_ms = results[true].Ms, memory_ratio = memoryRatio, time_ratio = timeRatio };
        report.Notes.Add($"Model: GPT, {Config().NumLayers} pre-LN blocks, hidden {Config().HiddenSize}, {Config().NumHeads} heads, intermediate {Config().IntermediateSize}, vocabulary {Config().VocabSize}, dropout 0.1; batch {BatchSize} × sequence {SequenceLength}; fp32; AdamW; every block checkpointed. Activation peak = VmHWM − (VmRSS before the first step + 12 bytes per parameter for gradients and AdamW state), MALLOC_MMAP_THRESHOLD_=131072. The embeddings, final LayerNorm, logits and loss are outside the checkpointed units and their activations are kept in both rows.");
        report.Load = meter.Stop();
        return report;
    }

    /// <summary>
    /// In the child: 1 + <paramref name="steps"/> steps (the first untimed); prints, as one JSON line, the resident
    /// bytes before the first step plus the gradients' and AdamW state's bytes (<c>start</c>), the peak resident
    /// bytes (<c>peak</c>), and the median time of the timed steps in ms.
    /// </summary>
    public static int RunChild(bool checkpointing, int steps, int threads)
    {
        torch.set_num_threads(threads);
        torch.manual_seed(0);
        var model = new GptForCausalLM(Config());
        model.Backbone.SetActivationCheckpointing(checkpointing);
        model.train();
        using var optimizer = torch.optim.AdamW(model.parameters(), 1e-4);
        Tensor ids = torch.randint(0, Config().VocabSize, new long[] { BatchSize, SequenceLength }, dtype: ScalarType.Int64);
        var batch = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = ids });
        void Step()
        {
            using StepScope scope = StepScope.Begin();
            optimizer.zero_grad();
            Tensor loss = model.Loss(model.call(batch), batch);
            loss.backward();
            optimizer.step();
        }

        // Gradients and AdamW's two moments: 3 × 4 bytes per parameter, allocated by the first step.
        long state = 12 * model.parameters().Sum(p => p.numel());
        GC.Collect();
        long start = ProcessMemory.ResidentBytes();
        ProcessMemory.ResetPeak();
        var times = new List<double>();
        for (int i = 0; i <= steps; i++)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            Step();
            if (i > 0)
            {
                times.Add(clock.Elapsed.TotalMilliseconds); // the first step allocates the gradients and AdamW state
            }
        }

        long peak = ProcessMemory.PeakResidentBytes();
        times.Sort();
        Console.WriteLine(JsonSerializer.Serialize(new { start = start + state, peak, step_ms = times[times.Count / 2] }));
        model.Dispose();
        return 0;
    }
}
