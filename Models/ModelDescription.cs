using System.Text.Json;
using System.Text.Json.Serialization;

namespace ComposerSharp.Models;

/// <summary>
/// Everything needed to rebuild a transformer model without the config that made it: its kind, full configuration,
/// classifier head and label names, the tokenizer it was trained with, and the framework version. Stored as JSON in a
/// checkpoint's metadata under <see cref="MetadataKey"/> (self-describing checkpoints), so that <c>eval</c>,
/// <c>predict</c>, <c>generate</c>, <c>export</c> and fine-tuning need only the checkpoint.
/// </summary>
public sealed record ModelDescription
{
    /// <summary>The checkpoint metadata key holding the JSON.</summary>
    public const string MetadataKey = "model_description";

    /// <summary>The kind for <see cref="BertForMaskedLM"/>.</summary>
    public const string BertMlm = "bert_mlm";

    /// <summary>The kind for <see cref="BertForSequenceClassification"/>.</summary>
    public const string BertClassification = "bert_classification";

    /// <summary>The kind for <see cref="GptForCausalLM"/>.</summary>
    public const string Gpt = "gpt";

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    /// <summary>The model kind: <see cref="BertMlm"/>, <see cref="BertClassification"/> or <see cref="Gpt"/> (the CLI's <c>model.name</c>).</summary>
    public required string Kind { get; init; }

    /// <summary>The full configuration.</summary>
    public required TransformerConfig Config { get; init; }

    /// <summary>The classifier head (<see cref="BertClassification"/> only).</summary>
    public SequenceClassificationOptions? Classification { get; init; }

    /// <summary>Class names in id order (<see cref="BertClassification"/> only), or null when unknown.</summary>
    public IReadOnlyList<string>? Labels { get; init; }

    /// <summary>
    /// The tokenizer's name: <c>gpt2</c> (GPT-2 byte-level BPE with ComposerSharp's pad, mask and cls ids, built in) or
    /// <c>bert_wordpiece</c> (a BERT WordPiece vocabulary, recorded in <see cref="TokenizerFiles"/>); null when the model was
    /// trained on token ids without a text tokenizer.
    /// </summary>
    public string? Tokenizer { get; init; }

    /// <summary>The tokenizer vocabulary's identity: its count of ordinary (non-special) tokens, e.g. 50256 for GPT-2.</summary>
    public int? TokenizerRegularCount { get; init; }

    /// <summary>The vocabulary's content identity, SHA-256 (lower-case hex) of its vocab.txt (<c>bert_wordpiece</c>), or null.</summary>
    public string? TokenizerSha256 { get; init; }

    /// <summary>
    /// The files that rebuild a tokenizer which is not built in (file name → text; <c>bert_wordpiece</c>: vocab.txt and
    /// tokenizer_config.json), so that the checkpoint alone can read text; null for <c>gpt2</c>.
    /// </summary>
    public IReadOnlyDictionary<string, string>? TokenizerFiles { get; init; }

    /// <summary>
    /// How the run's data turned text into model input (the evaluation data's settings when the run had an eval loader,
    /// else the training data's), so that inference reads text as evaluation did; null when the data recorded none
    /// (token-id datasets, checkpoints written before this was recorded), in which case inference uses
    /// <see cref="TextInputDescription.Default"/> for the model.
    /// </summary>
    public TextInputDescription? Input { get; init; }

    /// <summary>The ComposerSharp version that wrote the description.</summary>
    public string? FrameworkVersion { get; init; }

    /// <summary>The description of <paramref name="model"/>.</summary>
    /// <exception cref="NotSupportedException">Not one of the three transformer models.</exception>
    public static ModelDescription Of(TransformerModel model, IReadOnlyList<string>? labels = null, string? tokenizer = null, int? tokenizerRegularCount = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        TransformerConfig config = model.Config with
        {
            PreLayerNorm = model.Backbone.PreLayerNorm,
            Activation = model.Backbone.Activation,
        };
        return new ModelDescription
        {
            Kind = KindOf(model),
            Config = config,
            Classification = (model as BertForSequenceClassification)?.Options,
            Labels = model is BertForSequenceClassification ? labels : null,
            Tokenizer = tokenizer,
            TokenizerRegularCount = tokenizerRegularCount,
            FrameworkVersion = typeof(ModelDescription).Assembly.GetName().Version?.ToString(),
        };
    }

    /// <summary>The kind name of <paramref name="model"/>.</summary>
    /// <exception cref="NotSupportedException">Not one of the three transformer models.</exception>
    public static string KindOf(object model) => model switch
    {
        BertForMaskedLM => BertMlm,
        BertForSequenceClassification => BertClassification,
        GptForCausalLM => Gpt,
        _ => throw new NotSupportedException($"{model?.GetType().Name ?? "null"} is not a model kind that can be described; expected BertForMaskedLM, BertForSequenceClassification or GptForCausalLM."),
    };

    /// <summary>A new, freshly initialised model of this description (load weights into it afterwards).</summary>
    /// <exception cref="InvalidDataException">Unknown kind.</exception>
    public TransformerModel CreateModel() => Kind switch
    {
        BertMlm => new BertForMaskedLM(Config),
        BertClassification => new BertForSequenceClassification(Config, Classification),
        Gpt => new GptForCausalLM(Config),
        _ => throw new InvalidDataException($"Model kind '{Kind}' is unknown; expected {BertMlm}, {BertClassification} or {Gpt}."),
    };

    /// <summary>The JSON form stored in checkpoints (snake_case keys).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>Parses <see cref="ToJson"/>'s output.</summary>
    /// <param name="json">The JSON text.</param>
    /// <param name="source">Where it came from, for error messages (e.g. the checkpoint path).</param>
    /// <exception cref="InvalidDataException">Not a valid description; the message names the source.</exception>
    public static ModelDescription FromJson(string json, string source)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            return JsonSerializer.Deserialize<ModelDescription>(json, Json) ?? throw new InvalidDataException($"{source}: the model description is null.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"{source}: the model description is not valid: {ex.Message}", ex);
        }
    }
}

/// <summary>
/// The text-to-ids settings of a text dataset, recorded in a <see cref="ModelDescription"/> so that inference
/// (<c>predict</c>, <c>TextClassifier</c>) reads text as the run's evaluation did, in the spirit of a Hugging Face
/// tokenizer's <c>model_max_length</c> and <c>truncation</c> settings saved beside its model. Truncation keeps the
/// first tokens (Hugging Face's <c>truncation_side="right"</c>), the only side the datasets implement.
/// </summary>
public sealed record TextInputDescription
{
    /// <summary>Maximum tokens per sample, special ids included (the dataset's <c>max_length</c>); longer texts keep their first tokens.</summary>
    public required int MaxLength { get; init; }

    /// <summary>Whether each sample starts with the cls id and, for a vocabulary with a separator, ends with it (the dataset's <c>prepend_cls</c>, Hugging Face's <c>add_special_tokens</c>).</summary>
    public bool PrependCls { get; init; } = true;

    /// <summary>
    /// What inference assumes for a checkpoint that records no input settings: the model's whole context
    /// (<paramref name="config"/>'s <c>max_sequence_length</c>) with the cls id prepended, as predict read text before
    /// the settings were recorded.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="config"/> is null.</exception>
    public static TextInputDescription Default(TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new TextInputDescription { MaxLength = config.MaxSequenceLength };
    }
}
