using ComposerSharp.Data;
using ComposerSharp.Models;
using ComposerSharp.Training.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Inference;

/// <summary>A model rebuilt from a self-describing checkpoint, in eval mode, with its description and tokenizer.</summary>
public sealed class CheckpointModel : IDisposable
{
    private ITextTokenizer? _tokenizer;

    private CheckpointModel(TransformerModel model, ModelDescription description, string path, ITextTokenizer? tokenizer)
    {
        Model = model;
        Description = description;
        Path = path;
        _tokenizer = tokenizer;
    }

    /// <summary>The model, weights loaded, on the CPU, in eval mode.</summary>
    public TransformerModel Model { get; }

    /// <summary>What the checkpoint recorded (or the override given).</summary>
    public ModelDescription Description { get; }

    /// <summary>The checkpoint read.</summary>
    public string Path { get; }

    /// <summary>The tokenizer the model was trained with, created on first use.</summary>
    /// <exception cref="InvalidDataException">The model was trained without a text tokenizer and none was given, or with one that is not built in.</exception>
    public ITextTokenizer Tokenizer => _tokenizer ??= Tokenizers.Create(Description);

    /// <summary>Loads the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer).</summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="description">Used instead of the checkpoint's own description (needed for checkpoints written before descriptions were recorded).</param>
    /// <param name="tokenizer">
    /// The tokenizer; by default the one the description names (<c>gpt2</c>, or the WordPiece vocabulary it records). Needed
    /// for a model trained on token ids alone (synthetic data); checked by <see cref="Tokenizers.Check"/>.
    /// </param>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    /// <exception cref="InvalidDataException">The checkpoint records no model description and none was given, its weights do not fit the description, or the tokenizer does not fit the model; the message says what to supply.</exception>
    public static CheckpointModel Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        description ??= ReadDescription(path);
        if (tokenizer is not null)
        {
            Tokenizers.Check(description, tokenizer);
        }

        TransformerModel model = description.CreateModel();
        try
        {
            LoadWeights(model, path);
        }
        catch
        {
            model.Dispose();
            throw;
        }

        model.eval();
        return new CheckpointModel(model, description, path, tokenizer);
    }

    /// <summary>The model description the checkpoint at <paramref name="path"/> records.</summary>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    /// <exception cref="InvalidDataException">The checkpoint records no description (written before checkpoints described themselves); the message says what to supply.</exception>
    public static ModelDescription ReadDescription(string path)
    {
        IReadOnlyDictionary<string, string> metadata = CheckpointFile.ReadMetadata(path);
        if (!metadata.TryGetValue(ModelDescription.MetadataKey, out string? json))
        {
            throw new InvalidDataException(
                $"Checkpoint '{path}' does not record its model (it was written before checkpoints described themselves; model_type {metadata.GetValueOrDefault("model_type", "unknown")}). "
                + "Give the model section of the config that trained it (CLI: --config with model.name, preset and sizes; API: a ModelDescription).");
        }

        return ModelDescription.FromJson(json, $"Checkpoint '{path}'");
    }

    /// <summary>Frees the model.</summary>
    public void Dispose() => Model.Dispose();

    private static void LoadWeights(TransformerModel model, string path)
    {
        Dictionary<string, Tensor> saved = CheckpointFile.ReadModelState(path);
        try
        {
            Dictionary<string, Tensor> target = model.state_dict();
            List<string> missing = target.Keys.Where(k => !saved.ContainsKey(k)).ToList();
            List<string> unexpected = saved.Keys.Where(k => !target.ContainsKey(k)).ToList();
            if (missing.Count > 0 || unexpected.Count > 0)
            {
                throw new InvalidDataException(
                    $"Checkpoint '{path}' does not hold the weights of a {ModelDescription.KindOf(model)} model as described (missing: [{string.Join(", ", missing)}]; unexpected: [{string.Join(", ", unexpected)}]).");
            }

            using var noGrad = torch.no_grad();
            foreach ((string key, Tensor t) in target)
            {
                Tensor s = saved[key];
                if (!s.shape.SequenceEqual(t.shape))
                {
                    throw new InvalidDataException($"Checkpoint '{path}': tensor '{key}' is [{string.Join(", ", s.shape)}] but the described model's is [{string.Join(", ", t.shape)}].");
                }

                t.copy_(s);
            }
        }
        finally
        {
            foreach (Tensor t in saved.Values)
            {
                t.Dispose();
            }
        }
    }
}
