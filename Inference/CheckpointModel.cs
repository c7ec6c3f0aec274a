using System.Globalization;
using ComposerSharp.Algorithms;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Inference;

/// <summary>
/// What inference may choose instead of what the checkpoint records (each null means: as recorded). By default a
/// model computes as the run's evaluation did: under the checkpoint's precision, with its required-on-load
/// algorithms' surgery, reading text as its data did (Composer's <c>export_for_inference</c>, which exports the
/// model as trained, surgery included; Hugging Face pipelines, which truncate at the tokenizer's saved
/// <c>model_max_length</c>).
/// </summary>
public sealed record InferenceOptions
{
    /// <summary>
    /// The precision to compute in (CLI: <c>--precision</c>): <c>fp32</c>, or autocast to BFloat16
    /// (<c>amp_bf16</c>) or Float16 (<c>amp_fp16</c>) as in training's evaluation. Null: the checkpoint's
    /// (<see cref="CheckpointFile.ReadPrecision"/>). Precision-dependent surgery (LowPrecisionLayerNorm) follows it:
    /// under <c>fp32</c> it changes nothing.
    /// </summary>
    public Precision? Precision { get; init; }

    /// <summary>
    /// Maximum tokens per input, special ids included (CLI: <c>--max-length</c>, Hugging Face's <c>max_length</c>);
    /// longer texts keep their first tokens (classification) or are refused (fill-mask, whose masks could be cut).
    /// Null: the data's <c>max_length</c> the checkpoint records (<see cref="ModelDescription.Input"/>), else the
    /// model's <c>max_sequence_length</c>. Must be at least 1 and at most the model's <c>max_sequence_length</c>.
    /// </summary>
    public int? MaxLength { get; init; }
}

/// <summary>
/// A model rebuilt from a self-describing checkpoint as <c>eval</c> rebuilds it, in eval mode, with its description,
/// tokenizer, precision and input settings. Required-on-load algorithms the checkpoint records (LowPrecisionLayerNorm,
/// ALiBi, gated linear units) are re-created and applied at Init before the weights load, as an evaluation of the
/// checkpoint does; no Trainer is involved, so inference needs only Core, Models, Data and Algorithms.
/// </summary>
public sealed class CheckpointModel : IDisposable
{
    private ITextTokenizer? _tokenizer;

    private CheckpointModel(TransformerModel model, ModelDescription description, string path, ITextTokenizer? tokenizer, Precision precision, TextInputDescription input, IReadOnlyList<string> algorithms)
    {
        Model = model;
        Description = description;
        Path = path;
        _tokenizer = tokenizer;
        Precision = precision;
        Input = input;
        Algorithms = algorithms;
    }

    /// <summary>The model, weights loaded and surgery applied, on the CPU, in eval mode.</summary>
    public TransformerModel Model { get; }

    /// <summary>What the checkpoint recorded (or the override given).</summary>
    public ModelDescription Description { get; }

    /// <summary>The checkpoint read.</summary>
    public string Path { get; }

    /// <summary>The precision forward passes run under (<see cref="Autocast"/>): the checkpoint's unless <see cref="InferenceOptions.Precision"/> chose another.</summary>
    public Precision Precision { get; }

    /// <summary>
    /// How text becomes model input: the recorded data settings (<see cref="ModelDescription.Input"/>, else
    /// <see cref="TextInputDescription.Default"/>), with <see cref="InferenceOptions.MaxLength"/> applied; the maximum
    /// length never exceeds the model's <c>max_sequence_length</c>.
    /// </summary>
    public TextInputDescription Input { get; }

    /// <summary>The algorithms applied to the model when it was rebuilt (each as <c>name(hyperparameters)</c>), empty when none.</summary>
    public IReadOnlyList<string> Algorithms { get; }

    /// <summary>The tokenizer the model was trained with, created on first use.</summary>
    /// <exception cref="InvalidDataException">The model was trained without a text tokenizer and none was given, or with one that is not built in.</exception>
    public ITextTokenizer Tokenizer => _tokenizer ??= Tokenizers.Create(Description);

    /// <summary>
    /// Opens the autocast scope of <see cref="Precision"/> on the CPU (a disabled one under <c>fp32</c>), as the
    /// Trainer's evaluation wraps each forward pass; dispose it on the same thread.
    /// </summary>
    public AutocastScope Autocast() => Precision.Enter(DeviceType.CPU);

    /// <summary>Loads the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer).</summary>
    /// <param name="path">The checkpoint.</param>
    /// <param name="description">Used instead of the checkpoint's own description (needed for checkpoints written before descriptions were recorded).</param>
    /// <param name="tokenizer">
    /// The tokenizer; by default the one the description names (<c>gpt2</c>, or the WordPiece vocabulary it records). Needed
    /// for a model trained on token ids alone (synthetic data); checked by <see cref="Tokenizers.Check"/>.
    /// </param>
    /// <param name="options">Precision and maximum length instead of the recorded ones; null: as recorded.</param>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint, or its weights do not fit the described model.</exception>
    /// <exception cref="InvalidDataException">The checkpoint records no model description and none was given, or the tokenizer does not fit the model; the message says what to supply.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><see cref="InferenceOptions.MaxLength"/> is below 1 or above the model's <c>max_sequence_length</c>.</exception>
    /// <exception cref="NotSupportedException">The precision needs autocast kernels this CPU or libtorch lacks; the message says how to choose fp32.</exception>
    /// <exception cref="InvalidOperationException">A required-on-load algorithm the checkpoint records cannot be re-created.</exception>
    public static CheckpointModel Load(string path, ModelDescription? description = null, ITextTokenizer? tokenizer = null, InferenceOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        using ModelCheckpoint checkpoint = ModelCheckpoint.Open(path);
        description ??= DescriptionOf(checkpoint.Metadata, path);
        if (tokenizer is not null)
        {
            Tokenizers.Check(description, tokenizer);
        }

        TextInputDescription input = InputOf(description, options?.MaxLength);
        Precision precision = options?.Precision ?? checkpoint.Precision;
        TransformerModel model = description.CreateModel();
        IReadOnlyList<string> algorithms;
        try
        {
            algorithms = LoadAsEvalDoes(model, checkpoint, path, precision, recorded: options?.Precision is null);
        }
        catch
        {
            model.Dispose();
            throw;
        }

        model.eval();
        return new CheckpointModel(model, description, path, tokenizer, precision, input, algorithms);
    }

    /// <summary>The model description the checkpoint at <paramref name="path"/> records.</summary>
    /// <exception cref="CheckpointException">The file is missing or not a ComposerSharp checkpoint.</exception>
    /// <exception cref="InvalidDataException">The checkpoint records no description (written before checkpoints described themselves); the message says what to supply.</exception>
    public static ModelDescription ReadDescription(string path) => DescriptionOf(CheckpointFile.ReadMetadata(path), path);

    private static ModelDescription DescriptionOf(IReadOnlyDictionary<string, string> metadata, string path)
    {
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

    /// <summary>The recorded input settings (or the default for the model) with <paramref name="maxLength"/> applied, capped at the model's context.</summary>
    private static TextInputDescription InputOf(ModelDescription description, int? maxLength)
    {
        int context = description.Config.MaxSequenceLength;
        TextInputDescription input = description.Input ?? TextInputDescription.Default(description.Config);
        if (maxLength is { } chosen)
        {
            if (chosen < 1 || chosen > context)
            {
                throw new ArgumentOutOfRangeException(
                    nameof(maxLength), chosen, string.Create(CultureInfo.InvariantCulture, $"The maximum length is {chosen}; expected a whole number from 1 to the model's max_sequence_length {context}."));
            }

            return input with { MaxLength = chosen };
        }

        // A dataset may allow more tokens than the model has positions (its texts were all shorter); the model's are the limit.
        return input.MaxLength > context ? input with { MaxLength = context } : input;
    }

    /// <summary>
    /// Loads the weights as <c>eval</c> does: the required-on-load algorithms the checkpoint records are re-created
    /// (<see cref="AlgorithmCatalog"/>) and applied at Init to <paramref name="model"/> under <paramref name="precision"/>,
    /// then the weights are copied in strictly (<see cref="ModelCheckpoint.LoadWeights"/>), the order a Trainer's
    /// load follows (Composer's <c>_apply_required_algorithms</c> before the state dict). Returns the algorithms applied,
    /// each as <c>name(hyperparameters)</c>.
    /// </summary>
    private static IReadOnlyList<string> LoadAsEvalDoes(TransformerModel model, ModelCheckpoint checkpoint, string path, Precision precision, bool recorded)
    {
        try
        {
            precision.CheckSupported(torch.CPU);
        }
        catch (NotSupportedException ex) when (recorded)
        {
            throw new NotSupportedException(
                $"Checkpoint '{path}' was trained and evaluated under precision {precision.ToComposerName()}, which this machine cannot compute: {ex.Message} "
                + "Choose another precision (CLI: --precision fp32; API: InferenceOptions.Precision).", ex);
        }

        var state = new State(model, torch.CPU, precision);
        var logger = new Logger(state);
        var applied = new List<string>();
        foreach (AlgorithmDescription description in checkpoint.RequiredAlgorithms)
        {
            if (!AlgorithmCatalog.Names.Contains(description.Name))
            {
                throw new InvalidOperationException(
                    $"Checkpoint '{path}' was trained with required-on-load algorithm '{description.Name}', which is not one of ComposerSharp's algorithms ({string.Join(", ", AlgorithmCatalog.Names)}); its weights cannot be loaded without it.");
            }

            IAlgorithm algorithm = AlgorithmCatalog.Create(description);
            if (algorithm.Match(Event.Init, state))
            {
                algorithm.Apply(Event.Init, state, logger);
            }

            state.Algorithms.Add(algorithm);
            applied.Add(algorithm.ToString() ?? algorithm.Name);
        }

        checkpoint.LoadWeights(model);
        return applied;
    }
}
