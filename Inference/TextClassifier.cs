using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Inference;

/// <summary>One classification: the most probable label and every class's probability.</summary>
/// <param name="Label">The label of the most probable class.</param>
/// <param name="ClassId">Its id.</param>
/// <param name="Probabilities">Softmax probability of each label, in class-id order.</param>
public sealed record ClassPrediction(string Label, int ClassId, IReadOnlyDictionary<string, double> Probabilities);

/// <summary>
/// A text classifier loaded from a checkpoint: <c>TextClassifier.Load("spam.ckpt").Predict("Win money now")</c>.
/// It computes as the run's evaluation did (see <see cref="CheckpointModel"/>): texts are tokenized as the JSON-lines
/// classification dataset did (cls id, then the text's first tokens, within the data's recorded <c>max_length</c>:
/// <see cref="MaxLength"/>, as a Hugging Face pipeline truncates at the saved maximum length), batched with right
/// padding and an attention mask, and scored in eval mode under no_grad and the checkpoint's precision (autocast
/// amp_bf16/amp_fp16), with the surgery of its required-on-load algorithms (e.g. LowPrecisionLayerNorm).
/// <see cref="InferenceOptions"/> chooses another precision or maximum length.
/// </summary>
public sealed class TextClassifier : IDisposable
{
    private readonly CheckpointModel _loaded;
    private readonly BertForSequenceClassification _model;

    private TextClassifier(CheckpointModel loaded)
    {
        _loaded = loaded;
        _model = loaded.Model as BertForSequenceClassification ?? throw new InvalidDataException(
            $"Checkpoint '{loaded.Path}' holds a {loaded.Description.Kind} model, not a {ModelDescription.BertClassification} model; use {(loaded.Description.Kind == ModelDescription.Gpt ? "TextGenerator (CLI: generate)" : "MaskFiller")} for it.");
        int n = _model.Options.NumLabels;
        Labels = loaded.Description.Labels is { } labels && labels.Count == n ? labels : Enumerable.Range(0, n).Select(i => $"class_{i}").ToArray();
    }

    /// <summary>The label names in class-id order (class_i when the checkpoint records none).</summary>
    public IReadOnlyList<string> Labels { get; }

    /// <summary>Maximum tokens per input, cls (and separator) included; longer texts keep their first tokens.</summary>
    public int MaxLength => _loaded.Input.MaxLength;

    /// <summary>The precision the forward passes run under.</summary>
    public ComposerSharp.Core.Precision Precision => _loaded.Precision;

    /// <summary>The model as loaded: description, precision, input settings and the algorithms applied.</summary>
    public CheckpointModel Loaded => _loaded;

    /// <summary>Loads a classifier checkpoint.</summary>
    /// <exception cref="InvalidDataException">The checkpoint holds another model kind or no description (see <see cref="CheckpointModel.Load"/>).</exception>
    /// <exception cref="ComposerSharp.Core.Checkpoints.CheckpointException">The file is missing or not a checkpoint.</exception>
    /// <param name="path">The checkpoint (or latest pointer).</param>
    /// <param name="description">Used instead of the checkpoint's own description.</param>
    /// <param name="tokenizer">Used instead of the tokenizer the description names (needed for a model trained on token ids alone).</param>
    /// <param name="options">Precision and maximum length instead of the recorded ones (see <see cref="CheckpointModel.Load"/> for what else it throws).</param>
    /// <exception cref="ArgumentOutOfRangeException">The chosen maximum length is below 1 or exceeds the model's positions.</exception>
    public static TextClassifier Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null, InferenceOptions? options = null)
    {
        CheckpointModel loaded = CheckpointModel.Load(path, description, tokenizer, options);
        try
        {
            return new TextClassifier(loaded);
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
    }

    /// <summary>Classifies one text.</summary>
    public ClassPrediction Predict(string text) => Predict(new[] { text }).Single();

    /// <summary>
    /// Classifies <paramref name="texts"/> in batches of <paramref name="batchSize"/>, in order. With the batch size and
    /// order of the evaluation loader, the probabilities are those of the logits <c>eval</c> computes, bit for bit.
    /// </summary>
    /// <param name="texts">The texts.</param>
    /// <param name="batchSize">Texts per forward pass.</param>
    /// <param name="progress">Receives the number of texts done after each batch.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="batchSize"/> is not positive, or <see cref="MaxLength"/> leaves no room for text after the cls (and separator) ids.</exception>
    /// <exception cref="ArgumentException">A text has no tokens and the data prepended no cls id, so its input would be empty.</exception>
    public IReadOnlyList<ClassPrediction> Predict(IEnumerable<string> texts, int batchSize = 32, IProgress<int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(texts);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        var results = new List<ClassPrediction>();
        foreach (string[] chunk in texts.Chunk(batchSize))
        {
            using var scope = StepScope.Begin();
            using var noGrad = torch.no_grad();
            Batch batch = Encode(chunk);
            Tensor logits;
            using (_loaded.Autocast())
            {
                logits = _model.call(batch);
            }

            float[] probabilities = torch.softmax(logits.to(ScalarType.Float32), 1).data<float>().ToArray();
            int n = Labels.Count;
            for (int i = 0; i < chunk.Length; i++)
            {
                var p = new Dictionary<string, double>(n);
                int best = 0;
                for (int c = 0; c < n; c++)
                {
                    p[Labels[c]] = probabilities[(i * n) + c];
                    if (probabilities[(i * n) + c] > probabilities[(i * n) + best])
                    {
                        best = c;
                    }
                }

                results.Add(new ClassPrediction(Labels[best], best, p));
            }

            progress?.Report(results.Count);
        }

        return results;
    }

    /// <summary>Frees the model.</summary>
    public void Dispose() => _loaded.Dispose();

    private Batch Encode(IReadOnlyList<string> texts)
    {
        ITextTokenizer tokenizer = _loaded.Tokenizer;
        int max = MaxLength;
        bool prependCls = _loaded.Input.PrependCls;
        int reserved = prependCls ? tokenizer.Vocabulary.ClassificationReserved : 0;
        if (max <= reserved)
        {
#pragma warning disable CA2208 // The value at fault is the MaxLength property (set through InferenceOptions), not an argument of this method.
            throw new ArgumentOutOfRangeException(
                nameof(MaxLength), max, $"The maximum length {max} leaves no room for text after the {reserved} special ids; expected at least {reserved + 1}.");
#pragma warning restore CA2208
        }

        long[][] rows = texts.Select(t =>
        {
            ArgumentNullException.ThrowIfNull(t, nameof(texts));

            // As JsonlClassificationDataset reads a row: the text's first tokens, then the special ids around them.
            int[] ids = tokenizer.Encode(t, max - reserved);
            return prependCls ? tokenizer.Vocabulary.ClassificationInput(ids, max)
                : ids.Length > 0 ? ids.Select(id => (long)id).ToArray()
                : throw new ArgumentException($"The text '{t}' has no tokens and the checkpoint's data prepended no cls id (prepend_cls false), so its input would be empty.", nameof(texts));
        }).ToArray();
        return BatchOf(rows, tokenizer.Vocabulary.PadId);
    }

    /// <summary>Right-pads <paramref name="rows"/> with <paramref name="padId"/> into input_ids and attention_mask Int64 [B, T].</summary>
    internal static Batch BatchOf(IReadOnlyList<long[]> rows, long padId)
    {
        int length = rows.Max(r => r.Length);
        var ids = new long[rows.Count * length];
        var mask = new long[rows.Count * length];
        for (int i = 0; i < rows.Count; i++)
        {
            for (int t = 0; t < length; t++)
            {
                bool real = t < rows[i].Length;
                ids[(i * length) + t] = real ? rows[i][t] : padId;
                mask[(i * length) + t] = real ? 1 : 0;
            }
        }

        long[] shape = { rows.Count, length };
        return new Batch(new Dictionary<string, Tensor> { ["input_ids"] = torch.tensor(ids, shape), ["attention_mask"] = torch.tensor(mask, shape) });
    }
}
