using ComposerSharp.Benchmarks.Harness;
using ComposerSharp.Core;
using ComposerSharp.Models;
using ComposerSharp.Onnx;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace ComposerSharp.Benchmarks;

/// <summary>
/// (8) The exported spam classifier (configs/spam-classification.yaml's shape: bert-tiny, mean pooling) in ONNX
/// Runtime vs our TorchSharp forward as <c>predict</c> runs it (no_grad, fp32 and amp_bf16), batch 1 and 32 of 128
/// tokens, the same number of CPU threads for both; model compute only (tokenization is the same text work either way).
/// </summary>
internal static class OnnxBenchmark
{
    public static PartReport Run(Settings settings)
    {
        (int warmup, int rounds) = settings.Quick ? (1, 3) : (2, 15);
        int threads = torch.get_num_threads();
        torch.manual_seed(1);
        using var model = new BertForSequenceClassification(
            TransformerConfig.Preset("bert-tiny") with { MaxSequenceLength = 256, VocabSize = TransformerConfig.Gpt2PaddedVocabSize },
            new SequenceClassificationOptions { Pooling = SequencePooling.Mean });
        model.eval();
        string folder = Directory.CreateTempSubdirectory("onnx-bench-").FullName;
        try
        {
            OnnxExportResult exported = OnnxExport.Export(model, Path.Combine(folder, "model.onnx"));
            using var options = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1 };
            using var session = new InferenceSession(exported.Path, options);
            var report = new PartReport("onnx", $"(8) Spam classifier (bert-tiny, mean pooling, 128 tokens): ONNX Runtime {OrtEnv.Instance().GetVersionString()} vs TorchSharp forward, {threads} threads each");
            report.Columns.AddRange(new[] { "batch", "variant", "ms/batch (median ±IQR/2)", "texts/s", "ratio vs TorchSharp fp32" });
            var rows = new List<object>();
            foreach (int batch in new[] { 1, 32 })
            {
                const int T = 128;
                var random = new Random(batch);
                long[] ids = Enumerable.Range(0, batch * T).Select(_ => (long)random.Next(50000)).ToArray();
                long[] mask = Enumerable.Repeat(1L, batch * T).ToArray();
                double Torch(Precision precision)
                {
                    using var scope = torch.NewDisposeScope();
                    using var noGrad = torch.no_grad();
                    var input = new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.tensor(ids, new long[] { batch, T }), ["attention_mask"] = torch.tensor(mask, new long[] { batch, T }) });
                    var watch = System.Diagnostics.Stopwatch.StartNew();
                    using (precision.Enter(DeviceType.CPU))
                    {
                        _ = model.forward(input).to(ScalarType.Float32).data<float>().ToArray();
                    }

                    return watch.Elapsed.TotalMilliseconds;
                }

                double Ort()
                {
                    var inputs = new List<NamedOnnxValue>
                    {
                        NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, new[] { batch, T })),
                        NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(mask, new[] { batch, T })),
                        NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(new long[batch * T], new[] { batch, T })),
                    };
                    var watch = System.Diagnostics.Stopwatch.StartNew();
                    using var results = session.Run(inputs);
                    _ = results[0].AsTensor<float>().ToArray();
                    return watch.Elapsed.TotalMilliseconds;
                }

                Interleaved run = Interleaved.Run(new[]
                {
                    new Variant("TorchSharp fp32", () => Torch(Precision.Fp32)),
                    new Variant("TorchSharp amp_bf16", () => Torch(Precision.AmpBf16)),
                    new Variant("ONNX Runtime fp32", Ort),
                }, warmup, rounds);
                foreach (string name in new[] { "TorchSharp fp32", "TorchSharp amp_bf16", "ONNX Runtime fp32" })
                {
                    Stats s = run.StatsOf(name);
                    Stats? ratio = name == "TorchSharp fp32" ? null : run.Ratio(name, "TorchSharp fp32");
                    report.Rows.Add(new[] { batch.ToString(System.Globalization.CultureInfo.InvariantCulture), name, Fmt.Ms(s, 2), Fmt.N(batch * 1000 / s.Median, 0), ratio is null ? "1" : $"{Fmt.N(ratio.Median, 2)} ({Fmt.N(ratio.P25, 2)}–{Fmt.N(ratio.P75, 2)})" });
                    rows.Add(new { batch, variant = name, ms = s, texts_per_second = batch * 1000 / s.Median, ratio });
                }
            }

            report.Data = new { threads, onnx_bytes = exported.Bytes, max_abs_difference = exported.Verification?.MaxAbsDifference, rows };
            report.Notes.Add($"The ONNX file: {exported.Bytes / 1e6:F1} MB (fp32 weights), verified against the model to max |Δ| {exported.Verification?.MaxAbsDifference:G3}. Rounds rotate the variants; ratios are medians of per-round ratios.");
            return report;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
