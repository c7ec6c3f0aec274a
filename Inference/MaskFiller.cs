using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Inference;

/// <summary>One candidate for a masked position.</summary>
/// <param name="Token">The decoded token.</param>
/// <param name="TokenId">Its id.</param>
/// <param name="Probability">Its softmax probability at that position.</param>
public sealed record MaskFill(string Token, int TokenId, double Probability);

/// <summary>
/// Fills masked positions with a BERT masked-language model loaded from a checkpoint (Hugging Face's fill-mask
/// pipeline): each <c>[MASK]</c> (or <c>&lt;|mask|&gt;</c>) in a text becomes the mask id, and the top-k tokens of each
/// masked position are returned. The model computes as the run's evaluation did (see <see cref="CheckpointModel"/>):
/// under the checkpoint's precision, with its required-on-load algorithms' surgery; <see cref="InferenceOptions"/>
/// chooses otherwise.
/// </summary>
public sealed class MaskFiller : IDisposable
{
    /// <summary>The mask markers recognised in input text.</summary>
    public static readonly IReadOnlyList<string> MaskMarkers = new[] { "[MASK]", "<|mask|>" };

    private readonly CheckpointModel _loaded;
    private readonly BertForMaskedLM _model;

    private MaskFiller(CheckpointModel loaded)
    {
        _loaded = loaded;
        _model = loaded.Model as BertForMaskedLM ?? throw new InvalidDataException(
            $"Checkpoint '{loaded.Path}' holds a {loaded.Description.Kind} model, not a {ModelDescription.BertMlm} model.");
    }

    /// <summary>Loads an MLM checkpoint.</summary>
    /// <exception cref="InvalidDataException">Another model kind, or no description.</exception>
    /// <param name="path">The checkpoint (or latest pointer).</param>
    /// <param name="description">Used instead of the checkpoint's own description.</param>
    /// <param name="tokenizer">Used instead of the tokenizer the description names (needed for a model trained on token ids alone).</param>
    /// <param name="options">Precision and maximum length instead of the recorded ones (see <see cref="CheckpointModel.Load"/> for what else it throws).</param>
    public static MaskFiller Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null, InferenceOptions? options = null)
    {
        CheckpointModel loaded = CheckpointModel.Load(path, description, tokenizer, options);
        try
        {
            return new MaskFiller(loaded);
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
    }

    /// <summary>The model as loaded: description, precision, input settings and the algorithms applied.</summary>
    public CheckpointModel Loaded => _loaded;

    /// <summary>The tokenizer the text is read with.</summary>
    /// <exception cref="InvalidDataException">The model was trained on token ids alone and no tokenizer was given.</exception>
    public ITextTokenizer Tokenizer => _loaded.Tokenizer;

    /// <summary>The top-<paramref name="topK"/> fills of each masked position of <paramref name="text"/>, in position order.</summary>
    /// <exception cref="ArgumentException">
    /// The text has no mask marker, or has more tokens than the maximum length (the data's recorded <c>max_length</c>,
    /// or <see cref="InferenceOptions.MaxLength"/>, else the model's context): a fill-mask input is refused rather
    /// than truncated, which could cut a mask.
    /// </exception>
    public IReadOnlyList<IReadOnlyList<MaskFill>> Fill(string text, int topK = 5)
    {
        ArgumentNullException.ThrowIfNull(text);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(topK);
        ITextTokenizer tokenizer = _loaded.Tokenizer;
        var ids = new List<long>();
        string[] parts = text.Split(MaskMarkers.ToArray(), StringSplitOptions.None);
        if (parts.Length == 1)
        {
            throw new ArgumentException($"The text has no mask marker ({string.Join(" or ", MaskMarkers)}): '{text}'.", nameof(text));
        }

        var masked = new List<int>();
        for (int i = 0; i < parts.Length; i++)
        {
            if (i > 0)
            {
                masked.Add(ids.Count);
                ids.Add(tokenizer.Vocabulary.MaskId);
            }

            ids.AddRange(tokenizer.Encode(parts[i]).Select(id => (long)id));
        }

        if (tokenizer.Vocabulary.SeparatorId is { } separator)
        {
            // A BERT vocabulary: the model reads [CLS] text [SEP], as Hugging Face's fill-mask pipeline gives it.
            ids.Insert(0, tokenizer.Vocabulary.ClsId);
            ids.Add(separator);
            masked = masked.Select(position => position + 1).ToList();
        }

        int max = _loaded.Input.MaxLength;
        if (ids.Count > max)
        {
            string limit = max == _model.Config.MaxSequenceLength ? "the model's context" : "the maximum length";
            throw new ArgumentException($"The text has {ids.Count} tokens; {limit} is {max}.", nameof(text));
        }

        using var scope = StepScope.Begin();
        using var noGrad = torch.no_grad();
        Tensor logits;
        using (_loaded.Autocast())
        {
            logits = _model.call(TextClassifier.BatchOf(new[] { ids.ToArray() }, tokenizer.Vocabulary.PadId))[0];
        }

        TokenVocabulary vocabulary = tokenizer.Vocabulary;
        var special = torch.tensor(vocabulary.SpecialIds.Select(id => (long)id).ToArray());
        int candidates = vocabulary.RegularCount;
        var result = new List<IReadOnlyList<MaskFill>>();
        foreach (int position in masked)
        {
            // Only ordinary tokens of the tokenizer's vocabulary are candidates (as the fill-mask pipeline never proposes
            // [PAD] or [MASK]): ids past the vocabulary (the embedding's padding to a multiple of 64) and special ids are out.
            Tensor scores = logits[position].narrow(0, 0, vocabulary.Size).to(ScalarType.Float32).clone();
            scores.index_fill_(0, special, float.NegativeInfinity);
            Tensor probabilities = torch.softmax(scores, 0);
            (Tensor values, Tensor indices) = probabilities.topk(Math.Min(topK, candidates));
            float[] p = values.data<float>().ToArray();
            long[] idx = indices.data<long>().ToArray();
            result.Add(idx.Select((id, k) => new MaskFill(tokenizer.Decode(new[] { (int)id }), (int)id, p[k])).ToArray());
        }

        return result;
    }

    /// <summary>Frees the model.</summary>
    public void Dispose() => _loaded.Dispose();
}
