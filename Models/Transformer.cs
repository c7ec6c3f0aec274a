using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models;

/// <summary>
/// Multi-head self-attention (Vaswani et al. 2017, §3.2) from managed modules: one Linear projects to queries,
/// keys and values, <c>scaled_dot_product_attention</c> mixes them, and a Linear projects back. Input and output
/// [B, T, hidden]; Float32, or BFloat16/Float16 under autocast.
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
    /// Bool [B, 1, 1, T] or [B, 1, T, T], true where a query may attend to a key; it must already include the causal
    /// constraint when the attention is causal. Null: no padding (and, if causal, the causal mask is applied).
    /// </param>
    /// <returns>[B, T, hidden], the dtype of the projections.</returns>
    public override Tensor forward(Tensor x, Tensor? mask)
    {
        long b = x.shape[0], t = x.shape[1], hidden = x.shape[2];
        using var scope = torch.NewDisposeScope();

        // [B, T, 3·hidden] → [3, B, heads, T, head_dim]
        Tensor[] qkvParts = qkv.call(x).view(b, t, 3, _heads, hidden / _heads).permute(2, 0, 3, 1, 4).unbind(0);
        Tensor attended = F.scaled_dot_product_attention(qkvParts[0], qkvParts[1], qkvParts[2], mask, training ? _dropout : 0.0, _causal && mask is null);
        return out_proj.call(attended.transpose(1, 2).reshape(b, t, hidden)).MoveToOuterDisposeScope();
    }
}

/// <summary>The position-wise feed-forward block: Linear(hidden → intermediate), GELU (exact, as BERT), Linear(intermediate → hidden).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear fc_in;
    private readonly Linear fc_out;
#pragma warning restore IDE1006

    /// <summary>Creates the block with the sizes of <paramref name="config"/>.</summary>
    public FeedForward(TransformerConfig config)
        : base(nameof(FeedForward))
    {
        ArgumentNullException.ThrowIfNull(config);
        fc_in = nn.Linear(config.HiddenSize, config.IntermediateSize);
        fc_out = nn.Linear(config.IntermediateSize, config.HiddenSize);
        RegisterComponents();
    }

    /// <summary>The output Linear (its weight gets GPT-2's depth-scaled initialization).</summary>
    public Linear OutProjection => fc_out;

    /// <summary>[B, T, hidden] → [B, T, hidden].</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        return fc_out.call(F.gelu(fc_in.call(x))).MoveToOuterDisposeScope();
    }
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
    private readonly FeedForward mlp;
    private readonly nn.Module<Tensor, Tensor> ln_2;
    private readonly Dropout dropout;
#pragma warning restore IDE1006
    private readonly bool _preLayerNorm;

    /// <summary>Creates a block.</summary>
    /// <param name="config">Sizes, dropout and LayerNorm epsilon.</param>
    /// <param name="preLayerNorm">Pre-LN (true) or post-LN (false).</param>
    /// <param name="causal">Causal self-attention.</param>
    public TransformerBlock(TransformerConfig config, bool preLayerNorm, bool causal)
        : base(nameof(TransformerBlock))
    {
        ArgumentNullException.ThrowIfNull(config);
        attn = new MultiHeadSelfAttention(config, causal);
        ln_1 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlp = new FeedForward(config);
        ln_2 = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        dropout = nn.Dropout(config.Dropout);
        _preLayerNorm = preLayerNorm;
        RegisterComponents();
    }

    /// <summary>The self-attention.</summary>
    public MultiHeadSelfAttention Attention => attn;

    /// <summary>The feed-forward block.</summary>
    public FeedForward Mlp => mlp;

    /// <summary>Applies the block to <paramref name="x"/> [B, T, hidden] with the attention <paramref name="mask"/> (see <see cref="MultiHeadSelfAttention.forward"/>).</summary>
    /// <returns>[B, T, hidden]: Float32 when <paramref name="x"/> is Float32 (residual sums promote), even under autocast.</returns>
    public override Tensor forward(Tensor x, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h;
        if (_preLayerNorm)
        {
            h = x + dropout.call(attn.call(ln_1.call(x), mask));
            h = h + dropout.call(mlp.call(ln_2.call(h)));
        }
        else
        {
            h = ln_1.call(x + dropout.call(attn.call(x, mask)));
            h = ln_2.call(h + dropout.call(mlp.call(h)));
        }

        return h.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The shared trunk of the BERT and GPT models: learned token and position embeddings (BERT, GPT-2), dropout, a stack
/// of <see cref="TransformerBlock"/>s, and the LayerNorm placement of the variant: post-LN adds a LayerNorm on the
/// embeddings (<c>emb_ln</c>, as BERT); pre-LN adds a final LayerNorm after the last block (<c>ln_f</c>, as GPT-2).
/// BERT's token-type (segment) embedding is omitted: inputs are single segments.
/// Input <c>input_ids</c> Int64 [B, T] and optional <c>attention_mask</c> [B, T] (non-zero = real token); output
/// hidden states [B, T, hidden].
/// </summary>
public sealed class TransformerBackbone : nn.Module<Tensor, Tensor?, Tensor>
{
#pragma warning disable IDE1006
    private readonly Embedding wte;
    private readonly Embedding wpe;
    private readonly nn.Module<Tensor, Tensor>? emb_ln;
    private readonly Dropout emb_dropout;
    private readonly ModuleList<TransformerBlock> layers;
    private readonly nn.Module<Tensor, Tensor>? ln_f;
#pragma warning restore IDE1006

    /// <summary>Creates the trunk and initializes it as BERT and GPT-2 do: Linear and Embedding weights ~ N(0, InitializerRange²), biases 0, LayerNorm weight 1 and bias 0; with <paramref name="scaleResidualInit"/>, the output Linears of attention and feed-forward get std InitializerRange/√(2·NumLayers) (GPT-2, Radford et al. 2019, §2.3).</summary>
    /// <param name="config">Sizes; validated.</param>
    /// <param name="preLayerNorm">Pre-LN (true) or post-LN (false).</param>
    /// <param name="causal">Causal self-attention (decoders).</param>
    /// <param name="scaleResidualInit">Use GPT-2's depth-scaled init for residual output projections.</param>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid (see <see cref="TransformerConfig.Validate"/>).</exception>
    public TransformerBackbone(TransformerConfig config, bool preLayerNorm, bool causal, bool scaleResidualInit)
        : base(nameof(TransformerBackbone))
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        Config = config;
        PreLayerNorm = preLayerNorm;
        Causal = causal;
        wte = nn.Embedding(config.VocabSize, config.HiddenSize);
        wpe = nn.Embedding(config.MaxSequenceLength, config.HiddenSize);
        emb_ln = preLayerNorm ? null : nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        emb_dropout = nn.Dropout(config.Dropout);
        layers = nn.ModuleList(Enumerable.Range(0, config.NumLayers).Select(_ => new TransformerBlock(config, preLayerNorm, causal)).ToArray());
        ln_f = preLayerNorm ? nn.LayerNorm(config.HiddenSize, config.LayerNormEps) : null;
        RegisterComponents();
        Initialize(scaleResidualInit);
    }

    /// <summary>The configuration.</summary>
    public TransformerConfig Config { get; }

    /// <summary>Whether the blocks are pre-LN.</summary>
    public bool PreLayerNorm { get; }

    /// <summary>Whether self-attention is causal.</summary>
    public bool Causal { get; }

    /// <summary>The token embedding, [VocabSize, hidden]; its weight is tied to the MLM and LM output layers.</summary>
    public Embedding TokenEmbedding => wte;

    /// <summary>The blocks.</summary>
    public IReadOnlyList<TransformerBlock> Layers => layers.ToArray();

    /// <summary>Hidden states of <paramref name="inputIds"/>.</summary>
    /// <param name="inputIds">Int64 [B, T], ids in [0, VocabSize), T ≤ MaxSequenceLength.</param>
    /// <param name="attentionMask">Int64/Bool [B, T], non-zero for real tokens, zero for padding; null for none.</param>
    /// <returns>[B, T, hidden], Float32 (the residual stream stays in the embedding dtype).</returns>
    /// <exception cref="ArgumentException">Wrong rank or dtype, T too long, ids outside the vocabulary, or a mask of another shape.</exception>
    public override Tensor forward(Tensor inputIds, Tensor? attentionMask)
    {
        CheckInputs(inputIds, attentionMask);
        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        Tensor positions = torch.arange(t, dtype: ScalarType.Int64, device: inputIds.device);
        Tensor h = wte.call(inputIds) + wpe.call(positions);
        if (emb_ln is not null)
        {
            h = emb_ln.call(h);
        }

        h = emb_dropout.call(h);
        Tensor? mask = BuildMask(attentionMask, t);
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

    private void CheckInputs(Tensor inputIds, Tensor? attentionMask)
    {
        ArgumentNullException.ThrowIfNull(inputIds);
        if (inputIds.Dimensions != 2 || inputIds.dtype != ScalarType.Int64)
        {
            throw new ArgumentException($"input_ids must be Int64 [B, T]; got {inputIds.dtype} [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        }

        if (inputIds.shape[1] > Config.MaxSequenceLength)
        {
            throw new ArgumentException($"input_ids has {inputIds.shape[1]} tokens per sample; the model's MaxSequenceLength is {Config.MaxSequenceLength}.", nameof(inputIds));
        }

        if (inputIds.numel() > 0)
        {
            using var scope = torch.NewDisposeScope();
            long min = inputIds.min().item<long>(), max = inputIds.max().item<long>();
            if (min < 0 || max >= Config.VocabSize)
            {
                throw new ArgumentException(
                    $"input_ids holds ids in [{min}, {max}] but the model's VocabSize is {Config.VocabSize}; set VocabSize to at least the tokenizer vocabulary's size.", nameof(inputIds));
            }
        }

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
                nn.init.normal_(block.Mlp.OutProjection.weight, 0.0, scaled);
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

    /// <summary>Hidden states [B, T, hidden] (Float32) of the batch's <c>input_ids</c>, owned by the dispose scope open at the call.</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    protected Tensor Encode(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return backbone.call(batch["input_ids"], AttentionMask(batch));
    }
}
