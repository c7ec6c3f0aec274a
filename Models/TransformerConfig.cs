namespace ComposerSharp.Models;

/// <summary>
/// Size and regularization of a transformer (Vaswani et al. 2017) as used by <see cref="BertForMaskedLM"/>,
/// <see cref="BertForSequenceClassification"/> and <see cref="GptForCausalLM"/>; the field meanings follow
/// Hugging Face's <c>BertConfig</c>/<c>GPT2Config</c>. Start from a named preset (<see cref="Preset"/>) and change
/// fields with <c>with { ... }</c>.
/// </summary>
public sealed record TransformerConfig
{
    /// <summary>
    /// Vocabulary size that fits the GPT-2 tokenizer's 50,260 ids (GPT-2's 50,257 plus pad, mask and cls) rounded up
    /// to a multiple of 64, as nanoGPT pads GPT-2's vocabulary for faster matrix multiplies. The presets use it.
    /// </summary>
    public const int Gpt2PaddedVocabSize = 50304;

    private static readonly IReadOnlyDictionary<string, TransformerConfig> Presets = new Dictionary<string, TransformerConfig>(StringComparer.OrdinalIgnoreCase)
    {
        // BERT sizes from Devlin et al. 2019 (base, large) and Turc et al. 2019, "Well-Read Students Learn Better" (tiny … medium).
        ["bert-tiny"] = Bert(2, 128, 2, 512),
        ["bert-mini"] = Bert(4, 256, 4, 1024),
        ["bert-small"] = Bert(4, 512, 8, 2048),
        ["bert-medium"] = Bert(8, 512, 8, 2048),
        ["bert-base"] = Bert(12, 768, 12, 3072),
        ["bert-large"] = Bert(24, 1024, 16, 4096),

        // GPT-2 small from Radford et al. 2019; gpt-tiny is a test-sized model of the same design.
        ["gpt-tiny"] = Gpt(2, 128, 2, 512, 256),
        ["gpt2"] = Gpt(12, 768, 12, 3072, 1024),
    };

    /// <summary>The preset names: bert-tiny, bert-mini, bert-small, bert-medium, bert-base, bert-large, gpt-tiny, gpt2.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = Presets.Keys.ToArray();

    /// <summary>Number of transformer blocks.</summary>
    public int NumLayers { get; init; } = 2;

    /// <summary>Hidden size (model width) d_model.</summary>
    public int HiddenSize { get; init; } = 128;

    /// <summary>Attention heads; must divide <see cref="HiddenSize"/>.</summary>
    public int NumHeads { get; init; } = 2;

    /// <summary>Width of the feed-forward block (4 × hidden in BERT and GPT-2).</summary>
    public int IntermediateSize { get; init; } = 512;

    /// <summary>Longest sequence in tokens (rows of the learned position embedding).</summary>
    public int MaxSequenceLength { get; init; } = 512;

    /// <summary>Rows of the token embedding; every input id must be below it.</summary>
    public int VocabSize { get; init; } = Gpt2PaddedVocabSize;

    /// <summary>Dropout probability on embeddings and on each residual branch (BERT/GPT-2: 0.1).</summary>
    public double Dropout { get; init; } = 0.1;

    /// <summary>Dropout probability on attention weights (BERT/GPT-2: 0.1).</summary>
    public double AttentionDropout { get; init; } = 0.1;

    /// <summary>Epsilon of every LayerNorm (BERT: 1e-12; GPT-2: 1e-5).</summary>
    public double LayerNormEps { get; init; } = 1e-12;

    /// <summary>
    /// Where LayerNorm sits: false = post-LN (after each residual add, original Transformer and BERT), true = pre-LN
    /// (before each sublayer, plus a final LayerNorm; GPT-2 and Xiong et al. 2020), null = the model's own default
    /// (post-LN for BERT, pre-LN for GPT).
    /// </summary>
    public bool? PreLayerNorm { get; init; }

    /// <summary>
    /// The feed-forward (and BERT MLM-transform) activation: null = the model's own default (exact GELU for BERT, as
    /// Hugging Face's <c>hidden_act: gelu</c>; the tanh approximation for GPT, as GPT-2's <c>gelu_new</c>).
    /// </summary>
    public HiddenActivation? Activation { get; init; }

    /// <summary>
    /// Rows of BERT's token-type (segment) embedding (Hugging Face <c>type_vocab_size</c>; BERT: 2). Inputs without
    /// <c>token_type_ids</c> use type 0. GPT models have no token-type embedding and ignore it; 0 removes it from BERT.
    /// </summary>
    public int TypeVocabSize { get; init; } = 2;

    /// <summary>Standard deviation of the normal initialization of Linear and Embedding weights (BERT/GPT-2: 0.02).</summary>
    public double InitializerRange { get; init; } = 0.02;

    /// <summary>The named preset <paramref name="name"/> (case-insensitive).</summary>
    /// <exception cref="ArgumentException">Unknown name; the message lists the presets.</exception>
    public static TransformerConfig Preset(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return Presets.TryGetValue(name.Trim(), out TransformerConfig? config)
            ? config
            : throw new ArgumentException($"'{name}' is not a model preset; expected one of: {string.Join(", ", Presets.Keys)}.", nameof(name));
    }

    /// <summary>Throws when a field is out of range.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A size is not positive, a probability is outside [0, 1), or HiddenSize is not a multiple of NumHeads; the message names the field, its value and what is expected.</exception>
    public void Validate()
    {
        Positive(NumLayers, nameof(NumLayers));
        Positive(HiddenSize, nameof(HiddenSize));
        Positive(NumHeads, nameof(NumHeads));
        Positive(IntermediateSize, nameof(IntermediateSize));
        Positive(MaxSequenceLength, nameof(MaxSequenceLength));
        Positive(VocabSize, nameof(VocabSize));
        if (HiddenSize % NumHeads != 0)
        {
            // No actual-value argument: .NET would print it on a second line; the message names both values.
            throw new ArgumentOutOfRangeException(nameof(HiddenSize), $"HiddenSize ({HiddenSize}) must be a multiple of NumHeads ({NumHeads}).");
        }

        if (TypeVocabSize < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TypeVocabSize), TypeVocabSize, "TypeVocabSize must be 0 (no token-type embedding) or more.");
        }

        Probability(Dropout, nameof(Dropout));
        Probability(AttentionDropout, nameof(AttentionDropout));
        if (!(LayerNormEps > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(LayerNormEps), LayerNormEps, "LayerNormEps must be positive.");
        }

        if (!(InitializerRange > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(InitializerRange), InitializerRange, "InitializerRange must be positive.");
        }
    }

    private static TransformerConfig Bert(int layers, int hidden, int heads, int intermediate) => new()
    {
        NumLayers = layers,
        HiddenSize = hidden,
        NumHeads = heads,
        IntermediateSize = intermediate,
        MaxSequenceLength = 512,
        LayerNormEps = 1e-12,
        PreLayerNorm = false,
    };

    private static TransformerConfig Gpt(int layers, int hidden, int heads, int intermediate, int context) => new()
    {
        NumLayers = layers,
        HiddenSize = hidden,
        NumHeads = heads,
        IntermediateSize = intermediate,
        MaxSequenceLength = context,
        LayerNormEps = 1e-5,
        PreLayerNorm = true,
    };

    private static void Positive(int value, string name)
    {
        if (value <= 0)
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be at least 1.");
        }
    }

    private static void Probability(double value, string name)
    {
        if (!(value >= 0 && value < 1))
        {
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be a probability in [0, 1).");
        }
    }
}

/// <summary>The GELU variant of the feed-forward block (Hendrycks and Gimpel 2016).</summary>
public enum HiddenActivation
{
    /// <summary>Exact GELU, x·Φ(x) with the normal CDF from erf (Hugging Face <c>gelu</c>; BERT).</summary>
    Gelu,

    /// <summary>The tanh approximation 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) (Hugging Face <c>gelu_new</c>; GPT-2).</summary>
    GeluTanh,
}
