using ComposerSharp.Core;
using ComposerSharp.Models;
using ComposerSharp.Models.Decoders;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace ComposerSharp.Onnx;

/// <summary>The comparison of an exported file's ONNX Runtime outputs with the model's own (Float32, eval mode).</summary>
/// <param name="MaxAbsDifference">max |ONNX Runtime − model| over every compared output element.</param>
/// <param name="MaxAbsReference">max |model output| over the same elements (the scale of the difference).</param>
/// <param name="WorstOutput">The output (and call) where the largest difference was found.</param>
/// <param name="Cases">The input cases compared, in words (batch × sequence, padding, cached positions).</param>
public sealed record OnnxVerification(double MaxAbsDifference, double MaxAbsReference, string WorstOutput, IReadOnlyList<string> Cases);

/// <summary>
/// Runs random inputs through an exported file with ONNX Runtime (CPU provider) and through the model, and reports
/// the largest difference: padded batches for every task (some rows shorter, attention_mask 0 on their tail), and for
/// decoders also a two-call generation (a prompt, then one token with the returned <c>present.*</c> fed back as
/// <c>past_key_values.*</c>) compared with the model's uncached forward over the whole sequence.
/// </summary>
public static class OnnxVerifier
{
    /// <summary>Compares <paramref name="onnxPath"/> with <paramref name="model"/>.</summary>
    /// <param name="model">The exported model (CPU; put in eval mode by the caller).</param>
    /// <param name="onnxPath">The exported file.</param>
    /// <param name="task">What the file computes.</param>
    /// <param name="seed">Seed of the random inputs.</param>
    /// <returns>The largest difference and where.</returns>
    /// <exception cref="OnnxRuntimeException">ONNX Runtime cannot load or run the file.</exception>
    public static OnnxVerification Verify(ComposerModel model, string onnxPath, OnnxTask task, long seed = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        Shape shape = ShapeOf(model);
        using var options = new SessionOptions { IntraOpNumThreads = Math.Max(1, torch.get_num_threads()) };
        using var session = new InferenceSession(onnxPath, options);
        var random = new Random(unchecked((int)seed) ^ 0x5eed);
        var tracker = new Tracker();
        int t = Math.Min(12, shape.MaxLength);
        int b = 3;
        long[] ids = Enumerable.Range(0, b * t).Select(_ => (long)random.Next(shape.VocabSize)).ToArray();
        long[] mask = new long[b * t];
        for (int row = 0; row < b; row++)
        {
            int length = Math.Max(1, t - (row * t / 3)); // row 0 full, later rows padded
            for (int i = 0; i < length; i++)
            {
                mask[(row * t) + i] = 1;
            }
        }

        bool types = shape.TypeVocabSize > 0;
        long[] typeIds = types ? Enumerable.Range(0, b * t).Select(_ => (long)random.Next(shape.TypeVocabSize)).ToArray() : Array.Empty<long>();
        using (torch.no_grad())
        {
            using var scope = torch.NewDisposeScope();
            var batch = new Dictionary<string, Tensor>
            {
                ["input_ids"] = torch.tensor(ids, new long[] { b, t }),
                ["attention_mask"] = torch.tensor(mask, new long[] { b, t }),
            };
            if (types)
            {
                batch["token_type_ids"] = torch.tensor(typeIds, new long[] { b, t });
            }

            float[] expected = model.forward(new Batch(batch)).to(ScalarType.Float32).contiguous().data<float>().ToArray();
            var inputs = Inputs(shape, ids, mask, types ? typeIds : null, b, t, past: null);
            using (var results = session.Run(inputs))
            {
                tracker.Compare(Output(results, "logits"), expected, $"logits ({b} × {t}, padded rows)");
            }

            tracker.Cases.Add($"{b} × {t} with padding");
            if (task == OnnxTask.TextGenerationWithPast && t > 1)
            {
                VerifyCachedStep(model, shape, session, ids, b, t, tracker);
            }
        }

        return new OnnxVerification(tracker.MaxDifference, tracker.MaxReference, tracker.Worst, tracker.Cases);
    }

    // A prompt of t − 1 tokens, then the last token with the prompt's key/value cache: the second call's logits must
    // equal the model's uncached forward at position t − 1.
    private static void VerifyCachedStep(ComposerModel model, Shape shape, InferenceSession session, long[] ids, int b, int t, Tracker tracker)
    {
        long[] prompt = new long[b * (t - 1)];
        long[] last = new long[b];
        for (int row = 0; row < b; row++)
        {
            Array.Copy(ids, row * t, prompt, row * (t - 1), t - 1);
            last[row] = ids[(row * t) + t - 1];
        }

        float[] full = model.forward(new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.tensor(ids, new long[] { b, t }) }))
            .narrow(1, t - 1, 1).contiguous().data<float>().ToArray();
        var past = new List<(string Name, DenseTensor<float> Value)>();
        using (var first = session.Run(Inputs(shape, prompt, Enumerable.Repeat(1L, b * (t - 1)).ToArray(), null, b, t - 1, past: null)))
        {
            for (int i = 0; i < shape.Layers; i++)
            {
                foreach (string part in new[] { "key", "value" })
                {
                    DisposableNamedOnnxValue present = first.First(r => r.Name == $"present.{i}.{part}");
                    var tensor = present.AsTensor<float>();
                    past.Add(($"past_key_values.{i}.{part}", new DenseTensor<float>(tensor.ToArray(), tensor.Dimensions.ToArray())));
                }
            }
        }

        using var second = session.Run(Inputs(shape, last, Enumerable.Repeat(1L, b * t).ToArray(), null, b, 1, past));
        tracker.Compare(Output(second, "logits"), full, "logits of the cached step");
        tracker.Cases.Add($"{b} × {t - 1} prompt then 1 cached position");
    }

    private static List<NamedOnnxValue> Inputs(Shape shape, long[] ids, long[] mask, long[]? types, int b, int t, List<(string Name, DenseTensor<float> Value)>? past)
    {
        var inputs = new List<NamedOnnxValue>
        {
            NamedOnnxValue.CreateFromTensor("input_ids", new DenseTensor<long>(ids, new[] { b, t })),
            NamedOnnxValue.CreateFromTensor("attention_mask", new DenseTensor<long>(mask, new[] { b, mask.Length / b })),
        };
        if (shape.TypeVocabSize > 0)
        {
            inputs.Add(NamedOnnxValue.CreateFromTensor("token_type_ids", new DenseTensor<long>(types ?? new long[b * t], new[] { b, t })));
        }

        if (shape.Causal)
        {
            int heads = shape.CacheHeads, headDim = shape.HeadDim;
            if (past is null)
            {
                for (int i = 0; i < shape.Layers; i++)
                {
                    inputs.Add(NamedOnnxValue.CreateFromTensor($"past_key_values.{i}.key", new DenseTensor<float>(Array.Empty<float>(), new[] { b, heads, 0, headDim })));
                    inputs.Add(NamedOnnxValue.CreateFromTensor($"past_key_values.{i}.value", new DenseTensor<float>(Array.Empty<float>(), new[] { b, heads, 0, headDim })));
                }
            }
            else
            {
                inputs.AddRange(past.Select(p => NamedOnnxValue.CreateFromTensor(p.Name, p.Value)));
            }
        }

        return inputs;
    }

    private static Shape ShapeOf(ComposerModel model) => model switch
    {
        LlamaForCausalLM llama => new Shape(llama.Config.VocabSize, llama.Config.MaxPositionEmbeddings, 0, true, llama.Config.NumLayers, llama.Config.NumKeyValueHeads, llama.Config.EffectiveHeadDim),
        TransformerModel m => new Shape(m.Config.VocabSize, m.Config.MaxSequenceLength, m.Backbone.TypeVocabSize, m.Backbone.Causal, m.Config.NumLayers, m.Config.NumHeads, m.Config.HiddenSize / m.Config.NumHeads),
        _ => throw new NotSupportedException($"{model.GetType().Name} has no ONNX export to verify."),
    };

    private static float[] Output(IDisposableReadOnlyCollection<DisposableNamedOnnxValue> results, string name) =>
        results.First(r => r.Name == name).AsTensor<float>().ToArray();

    private sealed record Shape(int VocabSize, int MaxLength, int TypeVocabSize, bool Causal, int Layers, int CacheHeads, int HeadDim);

    private sealed class Tracker
    {
        public double MaxDifference { get; private set; }

        public double MaxReference { get; private set; }

        public string Worst { get; private set; } = "nothing compared";

        public List<string> Cases { get; } = new();

        public void Compare(float[] actual, float[] expected, string what)
        {
            if (actual.Length != expected.Length)
            {
                throw new InvalidDataException($"{what}: ONNX Runtime returned {actual.Length} values; the model {expected.Length}.");
            }

            for (int i = 0; i < actual.Length; i++)
            {
                double difference = Math.Abs((double)actual[i] - expected[i]);
                if (double.IsNaN(difference))
                {
                    difference = double.PositiveInfinity;
                }

                if (difference > MaxDifference || (MaxDifference == 0 && Worst == "nothing compared"))
                {
                    MaxDifference = Math.Max(MaxDifference, difference);
                    Worst = what;
                }

                MaxReference = Math.Max(MaxReference, Math.Abs(expected[i]));
            }
        }
    }
}
