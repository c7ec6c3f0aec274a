using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models;

/// <summary>
/// Multi-head self-attention (Vaswani et al. 2017, §3.2) from managed modules: one Linear projects to queries,
/// keys and values, <c>scaled_dot_product_attention</c> mixes them (or, for BFloat16 on the CPU with gradients
/// enabled, the same math written out, see <see cref="EagerAttention"/>), and a Linear projects back. Input and
/// output [B, T, hidden]; Float32, or BFloat16/Float16 under autocast.
/// </summary>
public sealed class MultiHeadSelfAttention : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006 // PyTorch-style names: the field names are the module names in state_dict and module surgery.
    private readonly Linear qkv;
    private readonly Linear out_proj;
#pragma warning restore IDE1006
    private readonly int _heads;
    private readonly double _dropout;
    private readonly bool _causal;

    /// <summary>Creates the attention of one block.</summary>
    /// <param name="config">Hidden size, heads and attention dropout.</param>
    /// <param name="causal">Position t attends only to positions ≤ t (decoders).</param>
    public MultiHeadSelfAttention(TransformerConfig config, bool causal)
        : base(nameof(MultiHeadSelfAttention))
    {
        ArgumentNullException.ThrowIfNull(config);
        qkv = nn.Linear(config.HiddenSize, 3L * config.HiddenSize);
        out_proj = nn.Linear(config.HiddenSize, config.HiddenSize);
        _heads = config.NumHeads;
        _dropout = config.AttentionDropout;
        _causal = causal;
        RegisterComponents();
    }

    /// <summary>The output projection (its weight gets GPT-2's depth-scaled initialization).</summary>
    public Linear OutProjection => out_proj;

    /// <summary>Attends over <paramref name="x"/> [B, T, hidden].</summary>
    /// <param name="x">Hidden states [B, T, hidden].</param>
    /// <param name="mask">
    /// Bool [B, 1, 1, T] or [B, 1, T, T], true where a query may attend to a key; or a floating additive bias
    /// broadcastable to [B, heads, T, T] (−∞ where a query may not attend; the biases of an <see cref="IAttentionBiasProvider"/>), cast to the query
    /// dtype. Either must already include the causal constraint when the attention is causal. Null: no padding (and,
    /// if causal, the causal mask is applied).
    /// </param>
    /// <returns>[B, T, hidden], the dtype of the projections.</returns>
    public override Tensor forward(Tensor x, Tensor? mask)
    {
        long b = x.shape[0], t = x.shape[1], hidden = x.shape[2];
        using var scope = torch.NewDisposeScope();

        // [B, T, 3·hidden] → [3, B, heads, T, head_dim]
        Tensor[] qkvParts = qkv.call(x).view(b, t, 3, _heads, hidden / _heads).permute(2, 0, 3, 1, 4).unbind(0);
        mask = InQueryDtype(mask, qkvParts[0]);
        double dropout = training ? _dropout : 0.0;
        bool causal = _causal && mask is null;
        Tensor attended = EagerAttention.Preferred(qkvParts[0], t, dropout)
            ? EagerAttention.Attend(qkvParts[0], qkvParts[1], qkvParts[2], mask, dropout, causal)
            : F.scaled_dot_product_attention(qkvParts[0], qkvParts[1], qkvParts[2], mask, dropout, causal);
        return out_proj.call(attended.transpose(1, 2).reshape(b, t, hidden)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Attends over the new positions <paramref name="x"/> [B, T_new, hidden] and the keys and values of earlier
    /// positions held in <paramref name="cache"/> for <paramref name="layer"/>, then appends this step's keys and
    /// values to the cache (the key/value cache of incremental decoding, as Hugging Face's <c>past_key_values</c>).
    /// Causal: new position i sees every cached position and new positions ≤ i. No dropout.
    /// </summary>
    /// <param name="x">New positions [B, T_new, hidden].</param>
    /// <param name="cache">Keys and values of the earlier positions.</param>
    /// <param name="layer">This block's index in the cache.</param>
    /// <param name="bias">Null, or an additive bias [1, heads, T_new, past + T_new] that already holds the causal −∞ (from an <see cref="IAttentionBiasProvider"/>).</param>
    /// <returns>[B, T_new, hidden].</returns>
    internal Tensor ForwardCached(Tensor x, KeyValueCache cache, int layer, Tensor? bias = null)
    {
        long b = x.shape[0], t = x.shape[1], hidden = x.shape[2];
        using var scope = torch.NewDisposeScope();
        Tensor[] qkvParts = qkv.call(x).view(b, t, 3, _heads, hidden / _heads).permute(2, 0, 3, 1, 4).unbind(0);
        (Tensor keys, Tensor values, long past) = cache.Append(layer, qkvParts[1], qkvParts[2]);
        Tensor? mask = InQueryDtype(bias, qkvParts[0]);
        if (bias is null && t > 1 && past > 0)
        {
            Tensor query = torch.arange(past, past + t, dtype: ScalarType.Int64, device: x.device).unsqueeze(1);
            mask = torch.arange(past + t, dtype: ScalarType.Int64, device: x.device).unsqueeze(0).le(query);
        }

        Tensor attended = F.scaled_dot_product_attention(qkvParts[0], keys, values, mask, 0.0, bias is null && t > 1 && past == 0);
        return out_proj.call(attended.transpose(1, 2).reshape(b, t, hidden)).MoveToOuterDisposeScope();
    }

    /// <summary>A floating mask in the query's dtype (scaled_dot_product_attention wants them equal; under autocast the query is BFloat16/Float16); bool masks and null unchanged.</summary>
    private static Tensor? InQueryDtype(Tensor? mask, Tensor query) =>
        mask is not null && mask.is_floating_point() && mask.dtype != query.dtype ? mask.to(query.dtype) : mask;
}

/// <summary>The position-wise feed-forward block: Linear(hidden → intermediate), GELU (exact as BERT, or the tanh approximation as GPT-2; see <see cref="HiddenActivation"/>), Linear(intermediate → hidden).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear fc_in;
    private readonly Linear fc_out;
#pragma warning restore IDE1006
    private readonly HiddenActivation _activation;

    /// <summary>Creates the block with the sizes of <paramref name="config"/>.</summary>
    /// <param name="config">Hidden and intermediate sizes.</param>
    /// <param name="activation">The GELU variant.</param>
    public FeedForward(TransformerConfig config, HiddenActivation activation = HiddenActivation.Gelu)
        : base(nameof(FeedForward))
    {
        ArgumentNullException.ThrowIfNull(config);
        fc_in = nn.Linear(config.HiddenSize, config.IntermediateSize);
        fc_out = nn.Linear(config.IntermediateSize, config.HiddenSize);
        _activation = activation;
        RegisterComponents();
    }

    /// <summary>The input Linear (hidden → intermediate).</summary>
    public Linear InProjection => fc_in;

    /// <summary>The output Linear (its weight gets GPT-2's depth-scaled initialization).</summary>
    public Linear OutProjection => fc_out;

    /// <summary>The activation between the two Linears.</summary>
    public HiddenActivation Activation => _activation;

    /// <summary>[B, T, hidden] → [B, T, hidden].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return fc_out.call(Activations.Apply(fc_in.call(x), _activation)).MoveToOuterDisposeScope();
    }
}

/// <summary>The activation functions of <see cref="HiddenActivation"/>.</summary>
internal static class Activations
{
    /// <summary>Applies <paramref name="activation"/> element-wise; same shape and dtype.</summary>
    public static Tensor Apply(Tensor x, HiddenActivation activation) => activation switch
    {
        HiddenActivation.Gelu => F.gelu(x),
        HiddenActivation.GeluTanh => F.gelu(x, GELU.Approximate.tanh),
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, "Unknown activation."),
    };
}

/// <summary>
/// One transformer block: self-attention and feed-forward, each with dropout on its output and a residual
/// connection, and a LayerNorm either after each residual add (post-LN: BERT, the original Transformer) or at the
/// input of each sublayer (pre-LN: GPT-2; Xiong et al. 2020). Both LayerNorms are plain TorchSharp
/// <see cref="LayerNorm"/> modules in the fields <c>ln_1</c> and <c>ln_2</c>, typed as
/// <c>Module&lt;Tensor, Tensor&gt;</c> so module surgery (e.g. LowPrecisionLayerNorm) can replace them: set the
/// field and re-register the module under the same name.
/// </summary>
public sealed class TransformerBlock : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly MultiHeadSelfAttention attn;
    private readonly nn.Module<Tensor, Tensor> ln_1;
    private readonly nn.Module<Tensor, Tensor> mlp;
    private readonly nn.Module<Tensor, Tensor> ln_2;
    private readonly UniformDropout dropout;
#pragma warning restore IDE1006
    private readonly bool _preLayerNorm;

    /// <summary>Creates a block.</summary>
    /// <param name="config">Sizes, dropout and LayerNorm epsilon.</param>
    /// <param name="preLayerNorm">Pre-LN (true) or post-LN (false).</param>
    /// <param name="causal">Causal self-attention.</param>
    /// <param name="activation">The feed-forward activation.</param>
    public TransformerBlock(TransformerConfig config, bool preLayerNorm, bool causal, HiddenActivation activation = HiddenActivation.Gelu)
        : base(nameof(TransformerBlock))
    {
        ArgumentNullException.ThrowIfNull(config);
        attn = new MultiHeadSelfAttention(config, causal);
        ln_1 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlp = new FeedForward(config, activation);
        ln_2 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        dropout = new UniformDropout(config.Dropout);
        _preLayerNorm = preLayerNorm;
        RegisterComponents();
    }

    /// <summary>The self-attention.</summary>
    public MultiHeadSelfAttention Attention => attn;

    /// <summary>Whether the block is pre-LN (LayerNorm at each sublayer's input) rather than post-LN (after each residual add).</summary>
    public bool PreLayerNorm => _preLayerNorm;

    /// <summary>
    /// The block's residual-branch policy, an extension point for algorithms (see <see cref="IResidualBranchPolicy"/>):
    /// in each forward it may skip the whole block, and it scales both residual branches. Null (default): the block
    /// always runs and the branches are unscaled. StochasticDepth sets its layer drop here.
    /// </summary>
    public IResidualBranchPolicy? ResidualPolicy { get; set; }

    /// <summary>
    /// The feed-forward block [B, T, hidden] → [B, T, hidden]: a <see cref="FeedForward"/> as built, or what module
    /// surgery put in its place (e.g. the gated feed-forward of the GatedLinearUnits algorithm).
    /// </summary>
    public nn.Module<Tensor, Tensor> Mlp => mlp;

    /// <summary>The first LayerNorm: before attention (pre-LN) or after the attention residual add (post-LN). It may have been replaced by module surgery.</summary>
    public nn.Module<Tensor, Tensor> LayerNorm1 => ln_1;

    /// <summary>The second LayerNorm: before the feed-forward block (pre-LN) or after its residual add (post-LN).</summary>
    public nn.Module<Tensor, Tensor> LayerNorm2 => ln_2;

    /// <summary>Applies the block to <paramref name="x"/> [B, T, hidden] with the attention <paramref name="mask"/> (see <see cref="MultiHeadSelfAttention.forward"/>).</summary>
    /// <returns>[B, T, hidden]: Float32 when <paramref name="x"/> is Float32 (residual sums promote), even under autocast.</returns>
    public override Tensor forward(Tensor x, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        IResidualBranchPolicy? policy = ResidualPolicy;
        if (policy is not null && policy.SkipBlock(training))
        {
            return x.alias().MoveToOuterDisposeScope();
        }

        double keep = policy?.BranchScale(training) ?? 1.0;
        Tensor h = ActivationCheckpointing && training
            ? ActivationCheckpoint.Apply((input, m) => Branches(input, m, keep), x, mask, parameters())
            : Branches(x, mask, keep);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Whether this block's activations are recomputed in backward instead of kept, in training mode (Composer's
    /// <c>activation_checkpointing</c>; see <see cref="ActivationCheckpoint"/>). The residual policy's decisions
    /// are taken once, before the checkpointed part, so a recomputation never draws them again. Default false.
    /// </summary>
    public bool ActivationCheckpointing { get; set; }

    /// <summary>The two residual branches of the block, [B, T, hidden] → [B, T, hidden], each scaled by <paramref name="keep"/>.</summary>
    private Tensor Branches(Tensor x, Tensor? mask, double keep)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h;
        if (_preLayerNorm)
        {
            h = x + Scaled(dropout.call(attn.call(ln_1.call(x), mask)), keep);
            h = h + Scaled(dropout.call(mlp.call(ln_2.call(h))), keep);
        }
        else
        {
            h = ln_1.call(x + Scaled(dropout.call(attn.call(x, mask)), keep));
            h = ln_2.call(h + Scaled(dropout.call(mlp.call(h)), keep));
        }

        return h.MoveToOuterDisposeScope();
    }

    private static Tensor Scaled(Tensor branch, double keep) => keep == 1.0 ? branch : branch * keep;

    /// <summary>The block on new positions with a key/value cache (see <see cref="MultiHeadSelfAttention.ForwardCached"/>); no dropout, never skipped, branches scaled by the <see cref="ResidualPolicy"/>'s evaluation factor.</summary>
    internal Tensor ForwardCached(Tensor x, KeyValueCache cache, int layer, Tensor? bias = null)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h;
        double keep = ResidualPolicy?.BranchScale(training: false) ?? 1.0;
        if (_preLayerNorm)
        {
            h = x + Scaled(attn.ForwardCached(ln_1.call(x), cache, layer, bias), keep);
            h = h + Scaled(mlp.call(ln_2.call(h)), keep);
        }
        else
        {
            h = ln_1.call(x + Scaled(attn.ForwardCached(x, cache, layer, bias), keep));
            h = ln_2.call(h + Scaled(mlp.call(h), keep));
        }

        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The shared trunk of the BERT and GPT models: learned token and position embeddings (BERT, GPT-2), dropout, a stack
/// of <see cref="TransformerBlock"/>s, and the LayerNorm placement of the variant: post-LN adds a LayerNorm on the
/// embeddings (<c>emb_ln</c>, as BERT); pre-LN adds a final LayerNorm after the last block (<c>ln_f</c>, as GPT-2).
/// With a token-type vocabulary (BERT), a token-type (segment) embedding <c>wtt</c> is added too; inputs without
/// <c>token_type_ids</c> use type 0, as Hugging Face's <c>BertEmbeddings</c>.
/// Input <c>input_ids</c> Int64 [B, T], optional <c>attention_mask</c> [B, T] (non-zero = real token) and optional
/// <c>token_type_ids</c> Int64 [B, T]; output hidden states [B, T, hidden].
/// </summary>
public sealed class TransformerBackbone : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly Embedding wte;
    private readonly Embedding wpe;
    private readonly Embedding? wtt;
    private readonly nn.Module<Tensor, Tensor>? emb_ln;
    private readonly UniformDropout emb_dropout;
    private readonly ModuleList<TransformerBlock> layers;
    private readonly nn.Module<Tensor, Tensor>? ln_f;
#pragma warning restore IDE1006
    private IAttentionBiasProvider? _attentionBias;

    /// <summary>Creates the trunk and initializes it as BERT and GPT-2 do: Linear and Embedding weights ~ N(0, InitializerRange²), biases 0, LayerNorm weight 1 and bias 0; with <paramref name="scaleResidualInit"/>, the output Linears of attention and feed-forward get std InitializerRange/√(2·NumLayers) (GPT-2, Radford et al. 2019, §2.3).</summary>
    /// <param name="config">Sizes; validated.</param>
    /// <param name="preLayerNorm">Pre-LN (true) or post-LN (false).</param>
    /// <param name="causal">Causal self-attention (decoders).</param>
    /// <param name="scaleResidualInit">Use GPT-2's depth-scaled init for residual output projections.</param>
    /// <param name="activation">The feed-forward activation.</param>
    /// <param name="typeVocabSize">Rows of the token-type embedding; 0 for none.</param>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid (see <see cref="TransformerConfig.Validate"/>).</exception>
    public TransformerBackbone(TransformerConfig config, bool preLayerNorm, bool causal, bool scaleResidualInit, HiddenActivation activation = HiddenActivation.Gelu, int typeVocabSize = 0)
        : base(nameof(TransformerBackbone))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        ArgumentOutOfRangeException.ThrowIfNegative(typeVocabSize);
        Config = config;
        PreLayerNorm = preLayerNorm;
        Causal = causal;
        Activation = activation;
        TypeVocabSize = typeVocabSize;
        wte = nn.Embedding(config.VocabSize, config.HiddenSize);
        wpe = nn.Embedding(config.MaxSequenceLength, config.HiddenSize);
        wtt = typeVocabSize > 0 ? nn.Embedding(typeVocabSize, config.HiddenSize) : null;
        emb_ln = preLayerNorm ? null : nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        emb_dropout = new UniformDropout(config.Dropout);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumLayers).Select(_ => new TransformerBlock(config, preLayerNorm, causal, activation)).ToArray());
        ln_f = preLayerNorm ? nn.LayerNorm(config.HiddenSize, config.LayerNormEps) : null;
        RegisterComponents();
        Initialize(scaleResidualInit);
    }

    /// <summary>The configuration; after <see cref="ReplacePositionEmbedding"/> its <see cref="TransformerConfig.MaxSequenceLength"/> is the maximum given there.</summary>
    public TransformerConfig Config { get; private set; }

    /// <summary>
    /// The attention-bias provider that <see cref="ReplacePositionEmbedding"/> put in place of the learned position
    /// embedding (then unused), or null while the backbone adds <see cref="PositionEmbedding"/>.
    /// </summary>
    public IAttentionBiasProvider? AttentionBias => _attentionBias;

    /// <summary>Whether the blocks are pre-LN.</summary>
    public bool PreLayerNorm { get; }

    /// <summary>Whether self-attention is causal.</summary>
    public bool Causal { get; }

    /// <summary>The feed-forward activation of every block.</summary>
    public HiddenActivation Activation { get; }

    /// <summary>Rows of the token-type embedding (0: none).</summary>
    public int TypeVocabSize { get; }

    /// <summary>
    /// Switches activation checkpointing on or off for every transformer block (Composer's default choice of
    /// checkpointed units under <c>activation_checkpointing: true</c>; see <see cref="TransformerBlock.ActivationCheckpointing"/>).
    /// </summary>
    /// <param name="enabled">True: each block's activations are recomputed in backward instead of kept.</param>
    public void SetActivationCheckpointing(bool enabled)
    {
        foreach (TransformerBlock layer in layers)
        {
            layer.ActivationCheckpointing = enabled;
        }
    }

    /// <summary>The token embedding, [VocabSize, hidden]; its weight is tied to the MLM and LM output layers.</summary>
    public Embedding TokenEmbedding => wte;

    /// <summary>
    /// The learned position embedding <c>wpe</c>, Float32 [MaxSequenceLength at construction, hidden]; added to the
    /// token embedding unless <see cref="ReplacePositionEmbedding"/> ran. It stays a parameter of the model (its
    /// state-dict key is kept) either way.
    /// </summary>
    public Embedding PositionEmbedding => wpe;

    /// <summary>The blocks.</summary>
    public IReadOnlyList<TransformerBlock> Layers => layers.ToArray();

    /// <summary>
    /// An extension point for position-encoding algorithms: from now on the learned position embedding
    /// <see cref="PositionEmbedding"/> is no longer added, and every self-attention gets the additive bias of
    /// <paramref name="attentionBias"/> (built once per forward, with the padding and causal masks folded in) instead
    /// of the boolean mask. Sequences up to <paramref name="maxSequenceLength"/> tokens are accepted from then on,
    /// longer than the position embedding's rows if wanted: <see cref="Config"/> reports it as
    /// <see cref="TransformerConfig.MaxSequenceLength"/>. The position embedding's weight is left as it is (an
    /// algorithm may zero and freeze it, as Alibi does). Calling it again replaces the provider and the maximum.
    /// </summary>
    /// <param name="attentionBias">The bias source, e.g. ALiBi's (Composer's <c>apply_alibi</c>, composer/algorithms/alibi).</param>
    /// <param name="maxSequenceLength">The longest sequence the model will accept, at least 1.</param>
    /// <exception cref="ArgumentNullException"><paramref name="attentionBias"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxSequenceLength"/> is below 1.</exception>
    public void ReplacePositionEmbedding(IAttentionBiasProvider attentionBias, int maxSequenceLength)
    {
        ArgumentNullException.ThrowIfNull(attentionBias);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSequenceLength, 1);
        _attentionBias = attentionBias;
        Config = Config with { MaxSequenceLength = maxSequenceLength };
    }

    /// <summary>Hidden states of <paramref name="inputIds"/>.</summary>
    /// <param name="inputIds">Int64 [B, T], ids in [0, VocabSize), T ≤ MaxSequenceLength.</param>
    /// <param name="attentionMask">Int64/Bool [B, T], non-zero for real tokens, zero for padding; null for none.</param>
    /// <returns>[B, T, hidden], Float32 (the residual stream stays in the embedding dtype).</returns>
    /// <exception cref="ArgumentException">Wrong rank or dtype, T too long, ids outside the vocabulary, or a mask of another shape.</exception>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask) => Forward(inputIds, attentionMask, null);

    /// <summary>Hidden states of <paramref name="inputIds"/> with segment ids.</summary>
    /// <param name="inputIds">Int64 [B, T], ids in [0, VocabSize), T ≤ MaxSequenceLength.</param>
    /// <param name="attentionMask">Int64/Bool [B, T], non-zero for real tokens, zero for padding; null for none.</param>
    /// <param name="tokenTypeIds">Int64 [B, T] in [0, TypeVocabSize); null for all type 0. Ignored without a token-type embedding.</param>
    /// <returns>[B, T, hidden], Float32.</returns>
    /// <exception cref="ArgumentException">Wrong rank or dtype, T too long, ids outside the vocabulary, or a mask of another shape.</exception>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        CheckInputs(inputIds, attentionMask);
        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        Tensor positions = torch.arange(t, dtype: ScalarType.Int64, device: inputIds.device);
        Tensor h = Embed(inputIds, positions, tokenTypeIds);
        if (emb_ln is not null)
        {
            h = emb_ln.call(h);
        }

        h = emb_dropout.call(h);
        Tensor? mask = _attentionBias is null
            ? BuildMask(attentionMask, t)
            : _attentionBias.Build(Config.NumHeads, 0, t, t, Causal, attentionMask, inputIds.device);
        foreach (TransformerBlock layer in layers)
        {
            h = layer.call(h, mask);
        }

        if (ln_f is not null)
        {
            h = ln_f.call(h);
        }

        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Hidden states of new positions for incremental decoding: <paramref name="inputIds"/> [B, T_new] continue the
    /// <c>cache.Length</c> positions already in <paramref name="cache"/>, whose keys and values are reused, so each
    /// new token costs one position's work. Causal models only; no padding, no dropout (call under no_grad, eval mode).
    /// </summary>
    /// <param name="inputIds">Int64 [B, T_new].</param>
    /// <param name="cache">The cache of earlier positions (empty for the first call); extended by T_new.</param>
    /// <returns>[B, T_new, hidden].</returns>
    /// <exception cref="InvalidOperationException">The backbone is not causal.</exception>
    /// <exception cref="ArgumentException">cache.Length + T_new exceeds MaxSequenceLength, the cache belongs to a model with another layer count, or bad ids.</exception>
    public Tensor ForwardCached(Tensor inputIds, KeyValueCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (!Causal)
        {
            throw new InvalidOperationException("A key/value cache needs causal self-attention (a decoder such as GptForCausalLM).");
        }

        if (cache.NumLayers != Config.NumLayers)
        {
            throw new ArgumentException($"The cache was made for {cache.NumLayers} layers but the model has {Config.NumLayers}.", nameof(cache));
        }

        long past = cache.Length, t = inputIds.shape.Length == 2 ? inputIds.shape[1] : 0;
        if (past + t > Config.MaxSequenceLength)
        {
            throw new ArgumentException($"{past} cached + {t} new positions exceed the model's MaxSequenceLength of {Config.MaxSequenceLength}.", nameof(inputIds));
        }

        CheckInputs(inputIds, null, past);
        using var scope = torch.NewDisposeScope();
        Tensor positions = torch.arange(past, past + t, dtype: ScalarType.Int64, device: inputIds.device);
        Tensor h = Embed(inputIds, positions, null);
        if (emb_ln is not null)
        {
            h = emb_ln.call(h);
        }

        Tensor? bias = _attentionBias?.Build(Config.NumHeads, past, t, past + t, causal: true, null, inputIds.device);
        for (int i = 0; i < layers.Count; i++)
        {
            h = layers[i].ForwardCached(h, cache, i, bias);
        }

        if (ln_f is not null)
        {
            h = ln_f.call(h);
        }

        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Throws when <paramref name="inputIds"/> holds an id outside [0, VocabSize). Reads the minimum and maximum to the
    /// host, so call it where the ids are still on the CPU (the Trainer does, before it moves a batch to an
    /// accelerator), not in a step on a device.
    /// </summary>
    /// <param name="inputIds">Int64 ids of any shape.</param>
    /// <exception cref="ArgumentException">An id is negative or not below VocabSize; the message gives the ids' range and VocabSize.</exception>
    public void CheckInputIds(Tensor inputIds)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.numel() == 0)
        {
            return;
        }

        using var scope = torch.NewDisposeScope();
        long min = inputIds.min().item<long>(), max = inputIds.max().item<long>();
        if (min < 0 || max >= Config.VocabSize)
        {
            throw new ArgumentException(
                $"input_ids holds ids in [{min}, {max}] but the model's VocabSize is {Config.VocabSize}; set VocabSize to at least the tokenizer vocabulary's size.", nameof(inputIds));
        }
    }

    private Tensor Embed(Tensor inputIds, Tensor positions, Tensor? tokenTypeIds)
    {
        Tensor tokens;
        try
        {
            tokens = wte.call(inputIds);
        }
        catch (System.Runtime.InteropServices.ExternalException)
        {
            // libtorch's CPU lookup rejects ids outside the table ("index out of range in self"): say which and why.
            CheckInputIds(inputIds);
            throw;
        }

        Tensor h = _attentionBias is null ? tokens + wpe.call(positions) : tokens;
        if (wtt is null)
        {
            return h;
        }

        if (tokenTypeIds is null)
        {
            return h + wtt.weight![0];
        }

        if (!tokenTypeIds.shape.SequenceEqual(inputIds.shape) || tokenTypeIds.dtype != ScalarType.Int64)
        {
            throw new ArgumentException(
                $"token_type_ids must be Int64 [{string.Join(", ", inputIds.shape)}] like input_ids; got {tokenTypeIds.dtype} [{string.Join(", ", tokenTypeIds.shape)}].", nameof(tokenTypeIds));
        }

        return h + wtt.call(tokenTypeIds);
    }

    private Tensor? BuildMask(Tensor? attentionMask, long t)
    {
        if (attentionMask is null)
        {
            return null;
        }

        Tensor keys = attentionMask.ne(0).view(attentionMask.shape[0], 1, 1, t);
        if (!Causal)
        {
            return keys;
        }

        Device device = attentionMask.device;
        Tensor causal = torch.ones(t, t, dtype: ScalarType.Bool, device: device).tril();

        // Every query may always see itself, so no row is all-false (a padded query would otherwise attend to nothing and give NaN).
        return keys.logical_and(causal).logical_or(torch.eye(t, dtype: ScalarType.Bool, device: device));
    }

    private void CheckInputs(Tensor inputIds, Tensor? attentionMask, long past = 0)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.Dimensions != 2 || inputIds.dtype != ScalarType.Int64)
        {
            throw new ArgumentException($"input_ids must be Int64 [B, T]; got {inputIds.dtype} [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        }

        if (past + inputIds.shape[1] > Config.MaxSequenceLength)
        {
            throw new ArgumentException(
                $"input_ids has {inputIds.shape[1]} tokens per sample; the model's max_sequence_length (TransformerConfig.MaxSequenceLength) is {Config.MaxSequenceLength}: " +
                "shorten the samples (a dataset's sequence_length or block_size) or give the model a longer max_sequence_length.",
                nameof(inputIds));
        }

        // No id range check here: it would read min/max to the host in every forward (a device synchronisation on
        // CUDA). On the CPU the embedding lookup checks the range itself and Embed turns its error into the message
        // below; for accelerators the Trainer checks the batch on the host before moving it (CheckInputIds).
        if (attentionMask is not null && !attentionMask.shape.SequenceEqual(inputIds.shape))
        {
            throw new ArgumentException(
                $"attention_mask has shape [{string.Join(", ", attentionMask.shape)}] but input_ids has [{string.Join(", ", inputIds.shape)}].", nameof(attentionMask));
        }
    }

    private void Initialize(bool scaleResidualInit)
    {
        double std = Config.InitializerRange;
        using var noGrad = torch.no_grad();
        foreach ((string _, nn.Module module) in named_modules())
        {
            switch (module)
            {
                case Linear linear:
                    nn.init.normal_(linear.weight, 0.0, std);
                    if (linear.bias is not null)
                    {
                        nn.init.zeros_(linear.bias);
                    }

                    break;
                case Embedding embedding:
                    nn.init.normal_(embedding.weight, 0.0, std);
                    break;
            }
        }

        if (scaleResidualInit)
        {
            double scaled = std / Math.Sqrt(2.0 * Config.NumLayers);
            foreach (TransformerBlock block in layers)
            {
                nn.init.normal_(block.Attention.OutProjection.weight, 0.0, scaled);
                nn.init.normal_(((FeedForward)block.Mlp).OutProjection.weight, 0.0, scaled); // a fresh block holds a FeedForward
            }
        }
    }
}

/// <summary>
/// Base of the transformer <see cref="ComposerModel"/>s: holds the <see cref="TransformerBackbone"/> (field
/// <c>backbone</c>) and runs it on a batch's <c>input_ids</c> and optional <c>attention_mask</c>; subclasses add a head.
/// </summary>
public abstract class TransformerModel : ComposerModel
{
#pragma warning disable IDE1006
    private readonly TransformerBackbone backbone;
#pragma warning restore IDE1006

    /// <summary>Creates the model around <paramref name="backbone"/>; subclasses call <c>RegisterComponents()</c> after creating their head.</summary>
    protected TransformerModel(string name, TransformerBackbone backbone)
        : base(name) => this.backbone = backbone ?? throw new ArgumentNullException(nameof(backbone));

    /// <summary>The transformer trunk.</summary>
    public TransformerBackbone Backbone => backbone;

    /// <summary>The configuration.</summary>
    public TransformerConfig Config => backbone.Config;

    /// <summary>The batch's <c>attention_mask</c>, or null when it has none.</summary>
    protected static Tensor? AttentionMask(Batch batch) => batch.TryGetValue("attention_mask", out Tensor mask) ? mask : null;

    /// <summary>
    /// Checks the batch's <c>input_ids</c> against the vocabulary (<see cref="TransformerBackbone.CheckInputIds"/>) when
    /// they are on the CPU; the forward itself does not read ids to the host.
    /// </summary>
    /// <exception cref="ArgumentException">An id is outside [0, VocabSize).</exception>
    public override void ValidateBatch(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (batch.TryGetValue("input_ids", out Tensor ids) && ids.device_type == DeviceType.CPU)
        {
            backbone.CheckInputIds(ids);
        }
    }

    /// <summary>Hidden states [B, T, hidden] (Float32) of the batch's <c>input_ids</c>, owned by the dispose scope open at the call.</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    protected Tensor Encode(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return backbone.Forward(batch["input_ids"], AttentionMask(batch), batch.TryGetValue("token_type_ids", out Tensor types) ? types : null);
    }
}
