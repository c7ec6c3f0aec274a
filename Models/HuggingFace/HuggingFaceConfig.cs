using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ComposerSharp.Models.HuggingFace;

/// <summary>The Hugging Face <c>transformers</c> model classes this project reads and writes (config.json <c>architectures[0]</c>).</summary>
public enum HuggingFaceArchitecture
{
    /// <summary><c>BertForMaskedLM</c> ↔ <see cref="BertForMaskedLM"/>.</summary>
    BertForMaskedLM,

    /// <summary><c>BertForSequenceClassification</c> ↔ <see cref="BertForSequenceClassification"/>.</summary>
    BertForSequenceClassification,

    /// <summary><c>GPT2LMHeadModel</c> ↔ <see cref="GptForCausalLM"/>.</summary>
    Gpt2LMHeadModel,

    /// <summary><c>BertModel</c> (encoder and pooler, no head); read only, loaded as an MLM or classifier whose head starts fresh.</summary>
    BertModel,

    /// <summary><c>BertForPreTraining</c> (MLM and next-sentence heads, as the published <c>bert-base-uncased</c>); read only, loaded as an MLM.</summary>
    BertForPreTraining,

    /// <summary>
    /// ComposerSharp's name for a <see cref="BertForSequenceClassification"/> with mean pooling
    /// (<see cref="SequencePooling.Mean"/>): NOT a <c>transformers</c> class, since <c>transformers</c>' BERT classifier
    /// pools the first token only. The folder is <c>BertForSequenceClassification</c>'s in every tensor name, shape and
    /// config field, plus <c>"classifier_pooling": "mean"</c> (the field and values of <c>transformers</c>' ModernBERT):
    /// <c>BertModel.from_pretrained</c> loads the encoder and pooler, and the logits are
    /// <c>classifier(tanh(pooler.dense(Σ_t m_t h_t / Σ_t m_t)))</c> over the attention mask m. Loading it with
    /// <c>AutoModelForSequenceClassification</c> would silently pool <c>[CLS]</c> instead.
    /// </summary>
    BertForMeanPooledSequenceClassification,
}

/// <summary>What a Hugging Face <c>config.json</c> says about a model: its class, sizes and label names.</summary>
/// <param name="Architecture">The class named in <c>architectures[0]</c> (or implied by <c>model_type</c>).</param>
/// <param name="Config">Sizes, dropout, LayerNorm epsilon, activation and token-type vocabulary.</param>
/// <param name="Labels">Class names in id order (<c>id2label</c>), or null when the config has none.</param>
public sealed record HuggingFaceModelConfig(HuggingFaceArchitecture Architecture, TransformerConfig Config, IReadOnlyList<string>? Labels)
{
    /// <summary>A classifier's pooling (<c>classifier_pooling</c>; first token unless the folder says <c>mean</c>).</summary>
    public SequencePooling Pooling { get; init; } = SequencePooling.ClsToken;

    /// <summary>True for the two classifier architectures.</summary>
    public bool IsClassifier => Architecture.IsClassifier();
}

/// <summary>Helpers over <see cref="HuggingFaceArchitecture"/>.</summary>
public static class HuggingFaceArchitectureExtensions
{
    /// <summary>True for <see cref="HuggingFaceArchitecture.BertForSequenceClassification"/> and <see cref="HuggingFaceArchitecture.BertForMeanPooledSequenceClassification"/>.</summary>
    public static bool IsClassifier(this HuggingFaceArchitecture architecture) =>
        architecture is HuggingFaceArchitecture.BertForSequenceClassification or HuggingFaceArchitecture.BertForMeanPooledSequenceClassification;
}

/// <summary>
/// Reads and writes the <c>config.json</c> fields of <c>transformers</c>' <c>BertConfig</c> and <c>GPT2Config</c>
/// (configuration_bert.py, configuration_gpt2.py) that determine the architecture.
/// </summary>
public static class HuggingFaceConfig
{
    /// <summary>The config file name inside a model folder.</summary>
    public const string FileName = "config.json";

    /// <summary>The config.json of <paramref name="model"/>.</summary>
    /// <param name="model">A <see cref="BertForMaskedLM"/>, <see cref="BertForSequenceClassification"/> or <see cref="GptForCausalLM"/>.</param>
    /// <param name="labels">Class names in id order for a classifier (<c>id2label</c>); LABEL_0, LABEL_1, … when null.</param>
    /// <exception cref="NotSupportedException">The model has a feature Hugging Face's class lacks (pre-LN BERT, post-LN GPT, no token types in BERT); the message names it. A mean-pooling classifier is written as <see cref="HuggingFaceArchitecture.BertForMeanPooledSequenceClassification"/>.</exception>
    /// <exception cref="ArgumentException"><paramref name="labels"/> has another count than the classifier's classes.</exception>
    public static JsonObject ToJson(TransformerModel model, IReadOnlyList<string>? labels = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        TransformerConfig c = model.Config;
        TransformerBackbone b = model.Backbone;
        if (model is GptForCausalLM)
        {
            Require(b.PreLayerNorm, "GPT2LMHeadModel is pre-LN; this GPT model is post-LN (PreLayerNorm = false)");
            return new JsonObject
            {
                ["architectures"] = new JsonArray("GPT2LMHeadModel"),
                ["model_type"] = "gpt2",
                ["vocab_size"] = c.VocabSize,
                ["n_positions"] = c.MaxSequenceLength,
                ["n_ctx"] = c.MaxSequenceLength,
                ["n_embd"] = c.HiddenSize,
                ["n_layer"] = c.NumLayers,
                ["n_head"] = c.NumHeads,
                ["n_inner"] = c.IntermediateSize,
                ["activation_function"] = ActivationName(b.Activation),
                ["resid_pdrop"] = c.Dropout,
                ["embd_pdrop"] = c.Dropout,
                ["attn_pdrop"] = c.AttentionDropout,
                ["layer_norm_epsilon"] = c.LayerNormEps,
                ["initializer_range"] = c.InitializerRange,
                ["scale_attn_weights"] = true,
                ["scale_attn_by_inverse_layer_idx"] = false,
                ["reorder_and_upcast_attn"] = false,
                ["tie_word_embeddings"] = true,
                ["use_cache"] = true,
                ["bos_token_id"] = 50256,
                ["eos_token_id"] = 50256,
                ["torch_dtype"] = "float32",
            };
        }

        Require(!b.PreLayerNorm, "BERT is post-LN; this BERT model is pre-LN (PreLayerNorm = true)");
        Require(b.TypeVocabSize > 0, "BERT has a token-type embedding; this model has TypeVocabSize = 0");
        var json = new JsonObject
        {
            ["model_type"] = "bert",
            ["vocab_size"] = c.VocabSize,
            ["hidden_size"] = c.HiddenSize,
            ["num_hidden_layers"] = c.NumLayers,
            ["num_attention_heads"] = c.NumHeads,
            ["intermediate_size"] = c.IntermediateSize,
            ["hidden_act"] = ActivationName(b.Activation),
            ["hidden_dropout_prob"] = c.Dropout,
            ["attention_probs_dropout_prob"] = c.AttentionDropout,
            ["max_position_embeddings"] = c.MaxSequenceLength,
            ["type_vocab_size"] = b.TypeVocabSize,
            ["initializer_range"] = c.InitializerRange,
            ["layer_norm_eps"] = c.LayerNormEps,
            ["position_embedding_type"] = "absolute",
            ["use_cache"] = true,
            ["torch_dtype"] = "float32",
        };
        switch (model)
        {
            case BertForMaskedLM:
                json["architectures"] = new JsonArray("BertForMaskedLM");
                break;
            case BertForSequenceClassification cls:
                int n = cls.Options.NumLabels;
                if (labels is not null && labels.Count != n)
                {
                    throw new ArgumentException($"{labels.Count} label names were given for a classifier of {n} classes.", nameof(labels));
                }

                var id2label = new JsonObject();
                var label2id = new JsonObject();
                for (int i = 0; i < n; i++)
                {
                    string name = labels?[i] ?? $"LABEL_{i}";
                    id2label[i.ToString(CultureInfo.InvariantCulture)] = name;
                    label2id[name] = i;
                }

                bool mean = cls.Options.Pooling == SequencePooling.Mean;
                json["architectures"] = new JsonArray(mean ? "BertForMeanPooledSequenceClassification" : "BertForSequenceClassification");
                json["classifier_pooling"] = mean ? "mean" : "cls";
                json["id2label"] = id2label;
                json["label2id"] = label2id;
                json["problem_type"] = "single_label_classification";
                json["classifier_dropout"] = null;
                break;
            default:
                throw new NotSupportedException($"{model.GetType().Name} has no Hugging Face counterpart; expected BertForMaskedLM, BertForSequenceClassification or GptForCausalLM.");
        }

        return json;
    }

    /// <summary>Reads <c>config.json</c> in <paramref name="folder"/>.</summary>
    /// <exception cref="FileNotFoundException">The folder has no config.json (the message names the path).</exception>
    /// <exception cref="InvalidDataException">The file is not JSON, lacks a field, names an unsupported model type, architecture or activation, or asks for a feature this project lacks; the message names the file, field and value.</exception>
    public static HuggingFaceModelConfig Read(string folder)
    {
        ArgumentNullException.ThrowIfNull(folder);
        string path = Path.Combine(folder, FileName);
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"'{Path.GetFullPath(folder)}' is not a Hugging Face model folder: it has no {FileName}.", path);
        }

        JsonObject json;
        try
        {
            json = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"'{path}' is not a JSON object.");
        }
        catch (JsonException ex)
        {
            throw new InvalidDataException($"'{path}' is not valid JSON: {ex.Message}", ex);
        }

        var r = new Reader(json, path);
        string modelType = r.String("model_type");
        string? architecture = json["architectures"] is JsonArray { Count: > 0 } a ? a[0]?.GetValue<string>() : null;
        switch (modelType)
        {
            case "gpt2":
                if (architecture is not (null or "GPT2LMHeadModel" or "GPT2Model"))
                {
                    throw r.Bad("architectures", architecture, "GPT2LMHeadModel or GPT2Model");
                }

                if (r.Bool("scale_attn_by_inverse_layer_idx", false) || !r.Bool("scale_attn_weights", true) || r.Bool("add_cross_attention", false) || !r.Bool("tie_word_embeddings", true))
                {
                    throw new InvalidDataException($"'{path}': only GPT-2 with scale_attn_weights = true, tied word embeddings and no cross-attention or inverse-layer-index scaling is supported.");
                }

                int hidden = r.Int("n_embd");
                var gpt = TransformerConfig.Preset("gpt2") with
                {
                    VocabSize = r.Int("vocab_size"),
                    MaxSequenceLength = r.Int("n_positions"),
                    HiddenSize = hidden,
                    NumLayers = r.Int("n_layer"),
                    NumHeads = r.Int("n_head"),
                    IntermediateSize = r.IntOrNull("n_inner") ?? 4 * hidden,
                    Activation = ParseActivation(r, "activation_function", r.String("activation_function", "gelu_new")),
                    Dropout = r.Double("resid_pdrop", 0.1),
                    AttentionDropout = r.Double("attn_pdrop", 0.1),
                    LayerNormEps = r.Double("layer_norm_epsilon", 1e-5),
                    InitializerRange = r.Double("initializer_range", 0.02),
                    PreLayerNorm = true,
                    TypeVocabSize = 0,
                };
                return new HuggingFaceModelConfig(HuggingFaceArchitecture.Gpt2LMHeadModel, Validated(gpt, path), null);
            case "bert":
                HuggingFaceArchitecture arch = architecture switch
                {
                    null or "BertModel" => HuggingFaceArchitecture.BertModel,
                    "BertForMaskedLM" => HuggingFaceArchitecture.BertForMaskedLM,
                    "BertForPreTraining" => HuggingFaceArchitecture.BertForPreTraining,
                    "BertForSequenceClassification" => HuggingFaceArchitecture.BertForSequenceClassification,
                    "BertForMeanPooledSequenceClassification" => HuggingFaceArchitecture.BertForMeanPooledSequenceClassification,
                    _ => throw r.Bad("architectures", architecture, "BertModel, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification or BertForMeanPooledSequenceClassification"),
                };
                bool meanArchitecture = arch == HuggingFaceArchitecture.BertForMeanPooledSequenceClassification;
                string pooling = r.String("classifier_pooling", meanArchitecture ? "mean" : "cls");
                if (pooling != (meanArchitecture ? "mean" : "cls") && arch.IsClassifier())
                {
                    throw r.Bad("classifier_pooling", pooling, meanArchitecture
                        ? $"mean for architecture {architecture}"
                        : $"cls for architecture {architecture}, which pools the first token (a mean-pooled classifier is BertForMeanPooledSequenceClassification)");
                }

                if (pooling is not ("cls" or "mean"))
                {
                    throw r.Bad("classifier_pooling", pooling, "cls or mean");
                }
                string positions = r.String("position_embedding_type", "absolute");
                if (positions != "absolute")
                {
                    throw r.Bad("position_embedding_type", positions, "absolute");
                }

                var bert = TransformerConfig.Preset("bert-base") with
                {
                    VocabSize = r.Int("vocab_size"),
                    HiddenSize = r.Int("hidden_size"),
                    NumLayers = r.Int("num_hidden_layers"),
                    NumHeads = r.Int("num_attention_heads"),
                    IntermediateSize = r.Int("intermediate_size"),
                    Activation = ParseActivation(r, "hidden_act", r.String("hidden_act", "gelu")),
                    Dropout = r.Double("hidden_dropout_prob", 0.1),
                    AttentionDropout = r.Double("attention_probs_dropout_prob", 0.1),
                    MaxSequenceLength = r.Int("max_position_embeddings"),
                    TypeVocabSize = r.Int("type_vocab_size", 2),
                    InitializerRange = r.Double("initializer_range", 0.02),
                    LayerNormEps = r.Double("layer_norm_eps", 1e-12),
                    PreLayerNorm = false,
                };
                return new HuggingFaceModelConfig(arch, Validated(bert, path), ReadLabels(json, path))
                {
                    Pooling = pooling == "mean" ? SequencePooling.Mean : SequencePooling.ClsToken,
                };
            default:
                throw r.Bad("model_type", modelType, "bert or gpt2");
        }
    }

    private static IReadOnlyList<string>? ReadLabels(JsonObject json, string path)
    {
        if (json["id2label"] is not JsonObject id2label || id2label.Count == 0)
        {
            return json["num_labels"] is JsonValue v ? Enumerable.Range(0, v.GetValue<int>()).Select(i => $"LABEL_{i}").ToArray() : null;
        }

        var labels = new string[id2label.Count];
        foreach ((string key, JsonNode? value) in id2label)
        {
            if (!int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= labels.Length)
            {
                throw new InvalidDataException($"'{path}': id2label key '{key}' is not an id in [0, {labels.Length}).");
            }

            labels[id] = value?.GetValue<string>() ?? throw new InvalidDataException($"'{path}': id2label['{key}'] is null.");
        }

        return labels;
    }

    private static TransformerConfig Validated(TransformerConfig config, string path)
    {
        try
        {
            config.Validate();
            return config;
        }
        catch (ArgumentOutOfRangeException ex)
        {
            throw new InvalidDataException($"'{path}' describes an invalid model: {ex.Message}", ex);
        }
    }

    private static string ActivationName(HiddenActivation activation) => activation switch
    {
        HiddenActivation.Gelu => "gelu",
        HiddenActivation.GeluTanh => "gelu_new",
        _ => throw new NotSupportedException($"Activation {activation} has no Hugging Face name."),
    };

    private static HiddenActivation ParseActivation(Reader r, string field, string name) => name switch
    {
        "gelu" => HiddenActivation.Gelu,
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => HiddenActivation.GeluTanh,
        _ => throw r.Bad(field, name, "gelu, gelu_new or gelu_pytorch_tanh"),
    };

    private static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new NotSupportedException($"Cannot write a Hugging Face config: {what}.");
        }
    }

    private sealed class Reader(JsonObject json, string path)
    {
        public InvalidDataException Bad(string field, object? value, string expected) =>
            new($"'{path}': {field} is '{value ?? "null"}'; expected {expected}.");

        public string String(string field, string? fallback = null) =>
            Node(field, fallback is null) is { } n ? Read(field, n, x => x.GetValue<string>()) : fallback!;

        public int Int(string field, int? fallback = null) =>
            Node(field, fallback is null) is { } n ? Read(field, n, x => x.GetValue<int>()) : fallback!.Value;

        public int? IntOrNull(string field) => Node(field, false) is { } n ? Read(field, n, x => x.GetValue<int>()) : null;

        public double Double(string field, double fallback) => Node(field, false) is { } n ? Read(field, n, x => x.GetValue<double>()) : fallback;

        public bool Bool(string field, bool fallback) => Node(field, false) is { } n ? Read(field, n, x => x.GetValue<bool>()) : fallback;

        private JsonNode? Node(string field, bool required) =>
            json[field] ?? (required ? throw new InvalidDataException($"'{path}' has no '{field}'.") : null);

        private T Read<T>(string field, JsonNode node, Func<JsonNode, T> read)
        {
            try
            {
                return read(node);
            }
            catch (Exception ex) when (ex is InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"'{path}': {field} is {node.ToJsonString()}; expected a {typeof(T).Name}.", ex);
            }
        }
    }
}
