using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models.Decoders;

/// <summary>
/// Rotary position embeddings (Su et al. 2021, RoFormer) with Hugging Face's frequency scalings
/// (transformers/modeling_rope_utils.py: default, linear, dynamic NTK, llama3). Produces cos and sin tables
/// Float32 [T, head_dim] for positions; <see cref="Apply"/> rotates queries or keys [B, heads, T, head_dim] by them
/// (<c>rotate_half</c> convention of modeling_llama.py: the first half of each head pairs with the second half).
/// </summary>
public sealed class RotaryEmbedding
{
    private readonly LlamaConfig _config;
    private readonly double[] _baseInvFreq;

    /// <summary>Creates the tables' source for <paramref name="config"/> (validated).</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public RotaryEmbedding(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        _config = config;
        _baseInvFreq = InverseFrequencies(config, config.MaxPositionEmbeddings);
    }

    /// <summary>
    /// The inverse frequencies θ_i [head_dim / 2] (radians per token) of <paramref name="config"/> for a sequence of
    /// <paramref name="seqLen"/> tokens (only <c>dynamic</c> depends on it: beyond max_position_embeddings its base
    /// grows as base·((factor·seqLen/max) − (factor − 1))^(d/(d−2))).
    /// </summary>
    public static double[] InverseFrequencies(LlamaConfig config, long seqLen)
    {
        ArgumentNullException.ThrowIfNull(config);
        int d = config.EffectiveHeadDim;
        double theta = config.RopeTheta;
        RopeScaling? s = config.RopeScaling;
        if (s is { RopeType: "dynamic" } && seqLen > config.MaxPositionEmbeddings)
        {
            theta *= Math.Pow((s.Factor * seqLen / config.MaxPositionEmbeddings) - (s.Factor - 1), d / (d - 2.0));
        }

        double[] inv = new double[d / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            inv[i] = 1.0 / Math.Pow(theta, 2.0 * i / d);
        }

        if (s is { RopeType: "linear" })
        {
            for (int i = 0; i < inv.Length; i++)
            {
                inv[i] /= s.Factor;
            }
        }
        else if (s is { RopeType: "llama3" })
        {
            double old = s.OriginalMaxPositionEmbeddings > 0 ? s.OriginalMaxPositionEmbeddings : config.MaxPositionEmbeddings;
            double lowFreqWavelen = old / s.LowFreqFactor, highFreqWavelen = old / s.HighFreqFactor;
            for (int i = 0; i < inv.Length; i++)
            {
                double wavelen = 2 * Math.PI / inv[i];
                if (wavelen > lowFreqWavelen)
                {
                    inv[i] /= s.Factor;
                }
                else if (wavelen >= highFreqWavelen)
                {
                    double smooth = ((old / wavelen) - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    inv[i] = ((1 - smooth) * inv[i] / s.Factor) + (smooth * inv[i]);
                }
            }
        }

        return inv;
    }

    /// <summary>cos and sin, Float32 [T, head_dim], for positions start … start+T−1 (angles computed in Float32 as Hugging Face does).</summary>
    public (Tensor Cos, Tensor Sin) Tables(long start, long length, Device device)
    {
        using var scope = torch.NewDisposeScope();
        long seqLen = start + length;
        double[] inv = _config.RopeScaling is { RopeType: "dynamic" } && seqLen > _config.MaxPositionEmbeddings
            ? InverseFrequencies(_config, seqLen)
            : _baseInvFreq;
        Tensor invFreq = torch.tensor(inv.Select(v => (float)v).ToArray(), device: device);
        Tensor positions = torch.arange(start, seqLen, dtype: ScalarType.Float32, device: device);
        Tensor freqs = positions.unsqueeze(1) * invFreq.unsqueeze(0);
        Tensor emb = torch.cat(new[] { freqs, freqs }, 1);
        return (emb.cos().MoveToOuterDisposeScope(), emb.sin().MoveToOuterDisposeScope());
    }

    /// <summary>Rotates <paramref name="x"/> [B, heads, T, head_dim] by tables [T, head_dim] (cast to x's dtype).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(cos);
        ArgumentNullException.ThrowIfNull(sin);
        using var scope = torch.NewDisposeScope();
        long half = x.shape[^1] / 2;
        Tensor rotated = torch.cat(new[] { -x.narrow(-1, half, half), x.narrow(-1, 0, half) }, -1);
        return ((x * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Llama self-attention (Touvron et al. 2023; Hugging Face's <c>LlamaAttention</c>): q/k/v/o projections
/// (<c>q_proj</c>, <c>k_proj</c>, <c>v_proj</c>, <c>o_proj</c>, biases only with <c>attention_bias</c>), rotary
/// embeddings on queries and keys, and grouped-query attention (Ainslie et al. 2023): NumKeyValueHeads key/value heads
/// shared by groups of query heads. Input and output [B, T, hidden].
/// </summary>
public sealed class LlamaAttention : nn.Module<Tensor, Tensor, Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear q_proj;
    private readonly Linear k_proj;
    private readonly Linear v_proj;
    private readonly Linear o_proj;
#pragma warning restore IDE1006
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;
    private readonly double _dropout;

    /// <summary>Creates the attention of one layer.</summary>
    public LlamaAttention(LlamaConfig config)
        : base(nameof(LlamaAttention))
    {
        ArgumentNullException.ThrowIfNull(config);
        _heads = config.NumHeads;
        _kvHeads = config.NumKeyValueHeads;
        _headDim = config.EffectiveHeadDim;
        _dropout = config.AttentionDropout;
        q_proj = nn.Linear(config.HiddenSize, (long)_heads * _headDim, hasBias: config.AttentionBias);
        k_proj = nn.Linear(config.HiddenSize, (long)_kvHeads * _headDim, hasBias: config.AttentionBias);
        v_proj = nn.Linear(config.HiddenSize, (long)_kvHeads * _headDim, hasBias: config.AttentionBias);
        o_proj = nn.Linear((long)_heads * _headDim, config.HiddenSize, hasBias: config.AttentionBias);
        RegisterComponents();
    }

    /// <summary>Attends over <paramref name="x"/> [B, T, hidden] with rotary tables [T, head_dim].</summary>
    /// <param name="x">Hidden states [B, T, hidden].</param>
    /// <param name="cos">Rotary cos table, Float32 [T, head_dim].</param>
    /// <param name="sin">Rotary sin table, Float32 [T, head_dim].</param>
    /// <param name="mask">Bool [B, 1, T, T] (true = may attend; includes the causal constraint), or null for plain causal attention.</param>
    /// <returns>[B, T, hidden].</returns>
    public override Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask) => Attend(x, cos, sin, mask, null, 0);

    /// <summary>The attention with an optional key/value cache that holds only the NumKeyValueHeads heads, [B, kv_heads, past, head_dim].</summary>
    internal Tensor Attend(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KeyValueCache? cache, int layer)
    {
        long b = x.shape[0], t = x.shape[1];
        using var scope = torch.NewDisposeScope();
        Tensor q = RotaryEmbedding.Apply(q_proj.call(x).view(b, t, _heads, _headDim).transpose(1, 2), cos, sin);
        Tensor k = RotaryEmbedding.Apply(k_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2), cos, sin);
        Tensor v = v_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        bool causal = mask is null;
        if (cache is not null)
        {
            (k, v, long past) = cache.Append(layer, k, v);
            if (past > 0)
            {
                causal = false;
                if (t > 1)
                {
                    Tensor query = torch.arange(past, past + t, dtype: ScalarType.Int64, device: x.device).unsqueeze(1);
                    mask = torch.arange(past + t, dtype: ScalarType.Int64, device: x.device).unsqueeze(0).le(query);
                }
            }
        }

        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, 1);
            v = v.repeat_interleave(_heads / _kvHeads, 1);
        }

        double dropout = training && cache is null ? _dropout : 0.0;
        causal &= t > 1;
        Tensor attended = EagerAttention.Preferred(q, k.shape[2], dropout)
            ? EagerAttention.Attend(q, k, v, mask, dropout, causal)
            : F.scaled_dot_product_attention(q, k, v, mask, dropout, causal);
        return o_proj.call(attended.transpose(1, 2).reshape(b, t, (long)_heads * _headDim)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The SwiGLU feed-forward of Llama (Shazeer 2020; Hugging Face's <c>LlamaMLP</c>):
/// <c>down_proj(silu(gate_proj(x)) · up_proj(x))</c>, biases only with <c>mlp_bias</c>. [B, T, hidden] → [B, T, hidden].
/// </summary>
public sealed class LlamaMLP : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear gate_proj;
    private readonly Linear up_proj;
    private readonly Linear down_proj;
#pragma warning restore IDE1006

    /// <summary>Creates the MLP with the sizes of <paramref name="config"/>.</summary>
    public LlamaMLP(LlamaConfig config)
        : base(nameof(LlamaMLP))
    {
        ArgumentNullException.ThrowIfNull(config);
        gate_proj = nn.Linear(config.HiddenSize, config.IntermediateSize, hasBias: config.MlpBias);
        up_proj = nn.Linear(config.HiddenSize, config.IntermediateSize, hasBias: config.MlpBias);
        down_proj = nn.Linear(config.IntermediateSize, config.HiddenSize, hasBias: config.MlpBias);
        RegisterComponents();
    }

    /// <summary>[B, T, hidden] → [B, T, hidden].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return down_proj.call(F.silu(gate_proj.call(x)) * up_proj.call(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// One Llama decoder layer (Hugging Face's <c>LlamaDecoderLayer</c>): pre-norm residual blocks
/// <c>h = x + self_attn(input_layernorm(x))</c>, <c>out = h + mlp(post_attention_layernorm(h))</c>, both norms
/// <see cref="RMSNorm"/>. The norms are typed <c>Module&lt;Tensor, Tensor&gt;</c> so module surgery can replace them.
/// </summary>
public sealed class LlamaDecoderLayer : nn.Module<Tensor, Tensor, Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly LlamaAttention self_attn;
    private readonly LlamaMLP mlp;
    private readonly nn.Module<Tensor, Tensor> input_layernorm;
    private readonly nn.Module<Tensor, Tensor> post_attention_layernorm;
#pragma warning restore IDE1006

    /// <summary>Creates a layer.</summary>
    public LlamaDecoderLayer(LlamaConfig config)
        : base(nameof(LlamaDecoderLayer))
    {
        ArgumentNullException.ThrowIfNull(config);
        self_attn = new LlamaAttention(config);
        mlp = new LlamaMLP(config);
        input_layernorm = new RMSNorm(config.HiddenSize, config.RmsNormEps);
        post_attention_layernorm = new RMSNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    /// <summary>The layer on [B, T, hidden] with rotary tables [T, head_dim] and an optional bool mask [B, 1, T, T].</summary>
    /// <returns>[B, T, hidden], Float32 for a Float32 residual stream.</returns>
    public override Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask) => Run(x, cos, sin, mask, null, 0);

    internal Tensor Run(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KeyValueCache? cache, int layer)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h = x + self_attn.Attend(input_layernorm.call(x), cos, sin, mask, cache, layer);
        return (h + mlp.call(post_attention_layernorm.call(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The Llama trunk (Hugging Face's <c>LlamaModel</c>): token embedding <c>embed_tokens</c>, the decoder
/// <c>layers</c> and a final RMSNorm <c>norm</c>. No position embedding: positions enter through rotary embeddings.
/// </summary>
public sealed class LlamaModel : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly Embedding embed_tokens;
    private readonly ModuleList<LlamaDecoderLayer> layers;
    private readonly nn.Module<Tensor, Tensor> norm;
#pragma warning restore IDE1006
    private readonly RotaryEmbedding _rotary;

    /// <summary>Creates the trunk of <paramref name="config"/>.</summary>
    /// <exception cref="ArgumentException">The config is invalid.</exception>
    public LlamaModel(LlamaConfig config)
        : base(nameof(LlamaModel))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        _rotary = new RotaryEmbedding(config);
        embed_tokens = nn.Embedding(config.VocabSize, config.HiddenSize);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumLayers).Select(_ => new LlamaDecoderLayer(config)).ToArray());
        norm = new RMSNorm(config.HiddenSize, config.RmsNormEps);
        RegisterComponents();
    }

    /// <summary>The configuration.</summary>
    public LlamaConfig Config { get; }

    /// <summary>The token embedding [VocabSize, hidden].</summary>
    public Embedding TokenEmbedding => embed_tokens;

    /// <summary>The decoder layers.</summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers => layers.ToArray();

    /// <summary>Final hidden states [B, T, hidden] (Float32) of <paramref name="inputIds"/> Int64 [B, T].</summary>
    /// <param name="inputIds">Int64 [B, T], ids in [0, VocabSize).</param>
    /// <param name="attentionMask">[B, T], non-zero for real tokens (right padding); null for none.</param>
    /// <exception cref="ArgumentException">Wrong rank or dtype, or a mask of another shape.</exception>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask) => Run(inputIds, attentionMask, null);

    internal Tensor Run(Tensor inputIds, Tensor? attentionMask, KeyValueCache? cache)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.dim() != 2 || inputIds.dtype != ScalarType.Int64)
        {
            throw new ArgumentException($"input_ids must be Int64 [B, T]; got {inputIds.dtype} with shape [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        }

        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
        {
            throw new ArgumentException($"attention_mask shape [{string.Join(", ", attentionMask.shape)}] differs from input_ids shape [{string.Join(", ", inputIds.shape)}].", nameof(attentionMask));
        }

        if (cache is not null && attentionMask is not null)
        {
            throw new ArgumentException("attention_mask is not supported with a key/value cache; decode unpadded sequences.", nameof(attentionMask));
        }

        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        long start = cache?.Length ?? 0;
        (Tensor cos, Tensor sin) = _rotary.Tables(start, t, inputIds.device);
        Tensor? mask = null;
        if (attentionMask is not null)
        {
            Tensor causal = torch.ones(t, t, dtype: ScalarType.Bool, device: inputIds.device).tril();
            mask = causal.unsqueeze(0).unsqueeze(0).logical_and(attentionMask.ne(0).unsqueeze(1).unsqueeze(1));
        }

        Tensor h = embed_tokens.call(inputIds);
        for (int i = 0; i < layers.Count; i++)
        {
            h = layers[i].Run(h, cos, sin, mask, cache, i);
        }

        return norm.call(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Llama with a language-model head (Hugging Face's <c>LlamaForCausalLM</c>, transformers/models/llama/modeling_llama.py;
/// TinyLlama, Llama 2/3 shapes): <see cref="LlamaModel"/> under <c>model</c> and <c>lm_head</c> (no bias), or the
/// token embedding's weight when <c>tie_word_embeddings</c>. The state_dict keys are Hugging Face's. Reads
/// <c>input_ids</c> Int64 [B, T], optional <c>attention_mask</c> [B, T], and for loss and metrics unshifted
/// <c>labels</c> [B, T] (as <see cref="GptForCausalLM"/>: position t is scored against label t+1). Outputs logits
/// [B, T, VocabSize]: Float32, or BFloat16 under amp_bf16 autocast. Initialized as Hugging Face's
/// <c>_init_weights</c>: Linear and Embedding weights ~ N(0, initializer_range²), biases 0, RMSNorm weights 1.
/// </summary>
public sealed class LlamaForCausalLM : ComposerModel
{
#pragma warning disable IDE1006
    private readonly LlamaModel model;
    private readonly Linear? lm_head;
#pragma warning restore IDE1006

    /// <summary>Creates and initializes the model.</summary>
    /// <param name="config">Sizes; e.g. <c>LlamaConfig.Preset("llama-tiny")</c>.</param>
    /// <exception cref="ArgumentException">The config is invalid; the message names the field.</exception>
    public LlamaForCausalLM(LlamaConfig config)
        : base(nameof(LlamaForCausalLM))
    {
        ArgumentNullException.ThrowIfNull(config);
        model = new LlamaModel(config);
        lm_head = config.TieWordEmbeddings ? null : nn.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
        using var noGrad = torch.no_grad();
        foreach ((string name, Parameter p) in named_parameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                p.fill_(1.0);
            }
            else if (name.EndsWith(".bias", StringComparison.Ordinal))
            {
                p.zero_();
            }
            else
            {
                nn.init.normal_(p, 0.0, config.InitializerRange);
            }
        }
    }

    /// <summary>The configuration.</summary>
    public LlamaConfig Config => model.Config;

    /// <summary>The trunk (<c>model</c>).</summary>
    public LlamaModel Model => model;

    /// <summary>The LM head's weight [VocabSize, hidden]: <c>lm_head.weight</c>, or the token embedding's when tied.</summary>
    public Parameter OutputWeight => lm_head?.weight ?? model.TokenEmbedding.weight!;

    /// <summary>Next-token logits [B, T, VocabSize]: row t predicts token t+1.</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    public override Tensor forward(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var scope = torch.NewDisposeScope();
        Tensor? mask = batch.TryGetValue("attention_mask", out Tensor m) ? m : null;
        return F.linear(model.call(batch["input_ids"], mask), OutputWeight).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Logits [B, T_new, VocabSize] of new positions <paramref name="inputIds"/> [B, T_new] continuing the sequence held
    /// in <paramref name="cache"/>, which holds only the NumKeyValueHeads key/value heads per layer. Call in eval mode under no_grad.
    /// </summary>
    public Tensor ForwardCached(Tensor inputIds, KeyValueCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        using var scope = torch.NewDisposeScope();
        return F.linear(model.Run(inputIds, null, cache), OutputWeight).MoveToOuterDisposeScope();
    }

    /// <summary>An empty key/value cache for this model.</summary>
    public KeyValueCache NewCache() => new(Config.NumLayers);

    /// <summary>Mean next-token cross-entropy over positions whose target is not −100, in Float32.</summary>
    public override Tensor Loss(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        return Losses.CrossEntropy(outputs, GptForCausalLM.Targets(batch)).MoveToOuterDisposeScope();
    }

    /// <summary>The next-token targets that are not −100, over which <see cref="Loss"/> averages.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    public override long LossGeneratingTokens(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var scope = torch.NewDisposeScope();
        return Losses.CountLabeled(GptForCausalLM.Targets(batch));
    }

    /// <summary>Train and eval: CrossEntropy, Perplexity (of the next token).</summary>
    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) => new IMetric[] { new CrossEntropyMetric(), new PerplexityMetric() };

    /// <summary>Updates <paramref name="metric"/> with the batch's labels shifted to the next token.</summary>
    public override void UpdateMetric(Batch batch, Tensor outputs, IMetric metric)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(metric);
        using var scope = torch.NewDisposeScope();
        var shifted = batch.ToDictionary(kv => kv.Key, kv => kv.Value);
        shifted["labels"] = GptForCausalLM.Targets(batch);
        metric.Update(outputs, new Batch(shifted, batch.NumTokens));
    }

    /// <summary>Checks that ids on the CPU are in [0, VocabSize).</summary>
    /// <exception cref="ArgumentException">An id is out of range; the message names it.</exception>
    public override void ValidateBatch(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.TryGetValue("input_ids", out Tensor ids) && ids.device_type == DeviceType.CPU && ids.numel() > 0)
        {
            long min = ids.min().item<long>(), max = ids.max().item<long>();
            if (min < 0 || max >= Config.VocabSize)
            {
                throw new ArgumentException($"input_ids hold {(min < 0 ? min : max)}; expected ids in [0, {Config.VocabSize}).", nameof(batch));
            }
        }
    }
}
