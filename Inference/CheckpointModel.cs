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
    /// <exception cref="InvalidDataException">The model was trained without a text tokenizer, or with one that is not built in.</exception>
    public ITextTokenizer Tokenizer => _tokenizer ??= Tokenizers.Create(Description);

    /// <summary>Loads the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer).</summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="description">Used instead of the checkpoint's own description (needed for checkpoints written before descriptions were recorded).</param>
    /// <param name="tokenizer">The tokenizer; by default the one the description names (only <c>gpt2</c> ships).</param>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    /// <exception cref="InvalidDataException">The checkpoint records no model description and none was given, or its weights do not fit the description; the message says what to supply.</exception>
    public static CheckpointModel Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        description ??= ReadDescription(path);
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

/// <summary>The tokenizers a <see cref="ModelDescription"/> can name.</summary>
public static class Tokenizers
{
    /// <summary>The name of ComposerSharp's GPT-2 BPE tokenizer (<see cref="Gpt2Tokenizer"/>).</summary>
    public const string Gpt2 = "gpt2";

    /// <summary>The name recorded for <paramref name="tokenizer"/>.</summary>
    public static string NameOf(ITextTokenizer tokenizer) => tokenizer is Gpt2Tokenizer ? Gpt2 : tokenizer.GetType().FullName ?? tokenizer.GetType().Name;

    /// <summary>The tokenizer <paramref name="description"/> names, checked against the recorded vocabulary.</summary>
    /// <exception cref="InvalidDataException">No tokenizer recorded (trained on token ids), an unknown tokenizer, or a vocabulary of another size than recorded.</exception>
    public static ITextTokenizer Create(ModelDescription description)
    {
        ArgumentNullException.ThrowIfNull(description);
        string name = description.Tokenizer ?? throw new InvalidDataException(
            $"The {description.Kind} model was trained on token ids without a text tokenizer (e.g. a synthetic dataset of {description.TokenizerRegularCount?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unknown"} regular ids), so it cannot read text; pass a tokenizer (API: CheckpointModel.Load's tokenizer argument).");
        ITextTokenizer tokenizer = name == Gpt2
            ? new Gpt2Tokenizer()
            : throw new InvalidDataException($"The model was trained with tokenizer '{name}', which is not built in; pass that tokenizer explicitly (API: the tokenizer argument).");
        if (description.TokenizerRegularCount is { } count && count != tokenizer.Vocabulary.RegularCount)
        {
            throw new InvalidDataException($"The model's tokenizer '{name}' had {count} regular tokens; this one has {tokenizer.Vocabulary.RegularCount}.");
        }

        return tokenizer;
    }
}
