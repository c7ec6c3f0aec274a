namespace ComposerSharp.Models.Decoders;

/// <summary>
/// The rotary-embedding frequency scaling of a Llama model: Hugging Face's <c>rope_scaling</c> dictionary
/// (transformers/modeling_rope_utils.py, <c>ROPE_INIT_FUNCTIONS</c>). Supported <c>rope_type</c> (or legacy
/// <c>type</c>) values: <c>default</c>, <c>linear</c>, <c>dynamic</c>, <c>llama3</c>.
/// </summary>
/// <param name="RopeType">One of <c>default</c>, <c>linear</c>, <c>dynamic</c>, <c>llama3</c>.</param>
/// <param name="Factor">The scaling factor <c>factor</c> (≥ 1 for linear, dynamic and llama3).</param>
/// <param name="LowFreqFactor">llama3's <c>low_freq_factor</c>.</param>
/// <param name="HighFreqFactor">llama3's <c>high_freq_factor</c> (&gt; <paramref name="LowFreqFactor"/>).</param>
/// <param name="OriginalMaxPositionEmbeddings">llama3's <c>original_max_position_embeddings</c>, in tokens; 0 uses the config's <c>max_position_embeddings</c>.</param>
public sealed record RopeScaling(string RopeType, double Factor = 1.0, double LowFreqFactor = 1.0, double HighFreqFactor = 4.0, int OriginalMaxPositionEmbeddings = 0)
{
    /// <summary>The <c>rope_type</c> values this implementation supports.</summary>
    public static IReadOnlyList<string> Supported { get; } = new[] { "default", "linear", "dynamic", "llama3" };

    /// <summary>Checks the type and factors.</summary>
    /// <exception cref="ArgumentException">An unsupported <c>rope_scaling.rope_type</c> (the message names the supported ones) or a bad factor.</exception>
    public void Validate()
    {
        if (!Supported.Contains(RopeType))
        {
            throw new ArgumentException($"rope_scaling.rope_type '{RopeType}' is not supported; supported: {string.Join(", ", Supported)} (yarn, longrope and others are not implemented).", nameof(RopeType));
        }

        if (RopeType != "default" && !(Factor >= 1.0))
        {
            throw new ArgumentException($"rope_scaling.factor {Factor} is invalid; expected a number ≥ 1 for rope_type '{RopeType}'.", nameof(Factor));
        }

        if (RopeType == "llama3" && !(HighFreqFactor > LowFreqFactor))
        {
            throw new ArgumentException($"rope_scaling.high_freq_factor {HighFreqFactor} must exceed low_freq_factor {LowFreqFactor} for rope_type 'llama3'.", nameof(HighFreqFactor));
        }
    }
}

/// <summary>
/// The sizes and options of a Llama decoder, with Hugging Face's <c>LlamaConfig</c> field names in the docs
/// (transformers/models/llama/configuration_llama.py). Defaults are TinyLlama-1.1B's except the vocabulary.
/// </summary>
/// <param name="VocabSize"><c>vocab_size</c>.</param>
/// <param name="HiddenSize"><c>hidden_size</c>.</param>
/// <param name="IntermediateSize"><c>intermediate_size</c> of the SwiGLU MLP.</param>
/// <param name="NumLayers"><c>num_hidden_layers</c>.</param>
/// <param name="NumHeads"><c>num_attention_heads</c>.</param>
/// <param name="NumKeyValueHeads"><c>num_key_value_heads</c>: equal to NumHeads (multi-head), 1 (multi-query) or a divisor (grouped-query; Ainslie et al. 2023).</param>
/// <param name="MaxPositionEmbeddings"><c>max_position_embeddings</c>, in tokens: the longest sequence accepted.</param>
/// <param name="RmsNormEps"><c>rms_norm_eps</c>.</param>
/// <param name="RopeTheta"><c>rope_theta</c>, the rotary base.</param>
/// <param name="TieWordEmbeddings"><c>tie_word_embeddings</c>: the LM head shares the token embedding's weight.</param>
/// <param name="AttentionBias"><c>attention_bias</c>: biases on q/k/v/o projections.</param>
/// <param name="MlpBias"><c>mlp_bias</c>: biases on gate/up/down projections.</param>
/// <param name="AttentionDropout"><c>attention_dropout</c> (training only).</param>
/// <param name="InitializerRange"><c>initializer_range</c>: std of the normal init of Linear and Embedding weights.</param>
/// <param name="HeadDim"><c>head_dim</c>; 0 means HiddenSize / NumHeads.</param>
/// <param name="RopeScaling"><c>rope_scaling</c>; null for none.</param>
public sealed record LlamaConfig(
    int VocabSize = 32000,
    int HiddenSize = 2048,
    int IntermediateSize = 5632,
    int NumLayers = 22,
    int NumHeads = 32,
    int NumKeyValueHeads = 4,
    int MaxPositionEmbeddings = 2048,
    double RmsNormEps = 1e-5,
    double RopeTheta = 10000.0,
    bool TieWordEmbeddings = false,
    bool AttentionBias = false,
    bool MlpBias = false,
    double AttentionDropout = 0.0,
    double InitializerRange = 0.02,
    int HeadDim = 0,
    RopeScaling? RopeScaling = null)
{
    /// <summary>The per-head size: <see cref="HeadDim"/>, or HiddenSize / NumHeads when it is 0.</summary>
    public int EffectiveHeadDim => HeadDim > 0 ? HeadDim : HiddenSize / NumHeads;

    /// <summary>The preset names of <see cref="Preset"/>.</summary>
    public static IReadOnlyList<string> PresetNames { get; } = new[] { "llama-tiny", "tinyllama-1.1b" };

    /// <summary>
    /// A named configuration: <c>llama-tiny</c> (2 layers, hidden 64, 4 heads, 2 KV heads, vocabulary 256, 128 tokens; for
    /// tests and examples) or <c>tinyllama-1.1b</c> (TinyLlama/TinyLlama-1.1B: 22 layers, hidden 2048, 32 heads, 4 KV
    /// heads, intermediate 5632, vocabulary 32000, 2048 tokens).
    /// </summary>
    /// <exception cref="ArgumentException">Unknown name; the message lists the known ones.</exception>
    public static LlamaConfig Preset(string name) => name switch
    {
        "llama-tiny" => new LlamaConfig(VocabSize: 256, HiddenSize: 64, IntermediateSize: 176, NumLayers: 2, NumHeads: 4, NumKeyValueHeads: 2, MaxPositionEmbeddings: 128),
        "tinyllama-1.1b" => new LlamaConfig(),
        _ => throw new ArgumentException($"Unknown Llama preset '{name}'; expected one of: {string.Join(", ", PresetNames)}.", nameof(name)),
    };

    /// <summary>Checks sizes and options.</summary>
    /// <exception cref="ArgumentException">A size is not positive, heads do not divide, or rope_scaling is unsupported; the message names the field.</exception>
    public void Validate()
    {
        Positive(VocabSize, "vocab_size");
        Positive(HiddenSize, "hidden_size");
        Positive(IntermediateSize, "intermediate_size");
        Positive(NumLayers, "num_hidden_layers");
        Positive(NumHeads, "num_attention_heads");
        Positive(NumKeyValueHeads, "num_key_value_heads");
        Positive(MaxPositionEmbeddings, "max_position_embeddings");
        if (NumHeads % NumKeyValueHeads != 0)
        {
            throw new ArgumentException($"num_attention_heads {NumHeads} is not a multiple of num_key_value_heads {NumKeyValueHeads}.", nameof(NumKeyValueHeads));
        }

        if (HeadDim == 0 && HiddenSize % NumHeads != 0)
        {
            throw new ArgumentException($"hidden_size {HiddenSize} is not a multiple of num_attention_heads {NumHeads} and head_dim is not given.", nameof(HiddenSize));
        }

        if (EffectiveHeadDim % 2 != 0)
        {
            throw new ArgumentException($"head_dim {EffectiveHeadDim} must be even for rotary embeddings.", nameof(HeadDim));
        }

        if (!(RmsNormEps > 0))
        {
            throw new ArgumentException($"rms_norm_eps {RmsNormEps} must be > 0.", nameof(RmsNormEps));
        }

        if (!(RopeTheta > 0))
        {
            throw new ArgumentException($"rope_theta {RopeTheta} must be > 0.", nameof(RopeTheta));
        }

        if (AttentionDropout is < 0 or >= 1)
        {
            throw new ArgumentException($"attention_dropout {AttentionDropout} must be in [0, 1).", nameof(AttentionDropout));
        }

        RopeScaling?.Validate();
    }

    private static void Positive(int value, string field)
    {
        if (value <= 0)
        {
            throw new ArgumentException($"{field} {value} must be > 0.", field);
        }
    }
}
