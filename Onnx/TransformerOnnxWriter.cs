using ComposerSharp.Algorithms;
using ComposerSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace ComposerSharp.Onnx;

/// <summary>
/// Writes the eval-mode computation of one of our transformer models as an ONNX graph, module by module, from the
/// modules themselves (so algorithm surgery shows up as what it computes): embeddings, each <see cref="TransformerBlock"/>
/// (attention, LayerNorm or its low-precision replacement, the MLP or its gated replacement, StochasticDepth's eval
/// scale), and the head. Every parameter of the model must be consumed by the graph; a parameter or module the writer
/// does not know is an error naming it, never a silently different graph.
/// </summary>
internal sealed class TransformerOnnxWriter : OnnxModuleWriter
{
    private const float MaskedScore = float.MinValue; // torch.finfo(float32).min, as transformers' extended attention masks

    private readonly TransformerModel _model;
    private readonly TransformerConfig _config;
    private readonly long _headDim;

    private TransformerOnnxWriter(TransformerModel model, OnnxGraph graph)
        : base(model, graph)
    {
        _model = model;
        _config = model.Config;
        _headDim = _config.HiddenSize / _config.NumHeads;
    }

    /// <summary>Builds the graph of <paramref name="model"/>; see <see cref="OnnxExport.Export"/> for inputs and outputs.</summary>
    public static OnnxGraph Write(TransformerModel model, bool float16Weights, out OnnxTask task)
    {
        task = TaskOf(model);
        var graph = new OnnxGraph(model.GetType().Name, float16Weights);
        var writer = new TransformerOnnxWriter(model, graph);
        writer.WriteModel(task);
        writer.ThrowIfParametersUnused();
        return graph;
    }

    /// <summary>The Optimum task of <paramref name="model"/>.</summary>
    public static OnnxTask TaskOf(TransformerModel model) => model switch
    {
        BertForMaskedLM => OnnxTask.FillMask,
        BertForSequenceClassification => OnnxTask.TextClassification,
        GptForCausalLM => OnnxTask.TextGenerationWithPast,
        _ => throw new NotSupportedException(
            $"{model?.GetType().Name ?? "null"} cannot be exported to ONNX; expected BertForMaskedLM, BertForSequenceClassification or GptForCausalLM."),
    };

    private void WriteModel(OnnxTask task)
    {
        TransformerBackbone backbone = _model.Backbone;
        bool causal = backbone.Causal;
        string ids = G.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        string mask = G.Input("attention_mask", DataType.Int64, "batch_size", causal ? "past_sequence_length + sequence_length" : "sequence_length");
        string? types = backbone.TypeVocabSize > 0 ? G.Input("token_type_ids", DataType.Int64, "batch_size", "sequence_length") : null;
        var pastKeys = new string[_config.NumLayers];
        var pastValues = new string[_config.NumLayers];
        if (causal)
        {
            for (int i = 0; i < _config.NumLayers; i++)
            {
                pastKeys[i] = G.Input($"past_key_values.{i}.key", DataType.Float, "batch_size", _config.NumHeads, "past_sequence_length", _headDim);
                pastValues[i] = G.Input($"past_key_values.{i}.value", DataType.Float, "batch_size", _config.NumHeads, "past_sequence_length", _headDim);
            }
        }

        // Lengths: T (new positions), P (cached positions, 0 for encoders), S = P + T (keys).
        string t = Dim(ids, 1, "seq_len");
        string p = causal ? Dim(pastKeys[0], 2, "past_len") : G.Int64s(new[] { 0L }, scalar: true);
        string s = causal ? G.Node("Add", new[] { p, t }, "total_len") : t;
        string one = G.Int64s(new[] { 1L }, scalar: true);
        string queryPositions = G.Node("Range", new[] { p, s, one }, "query_positions");        // [T]
        string keyPositions = G.Node("Range", new[] { G.Int64s(new[] { 0L }, scalar: true), s, one }, "key_positions"); // [S]

        string h = Embeddings(backbone, ids, types, queryPositions);
        string additiveMask = AttentionMask(backbone, mask, queryPositions, keyPositions);
        IReadOnlyList<TransformerBlock> layers = backbone.Layers;
        for (int i = 0; i < layers.Count; i++)
        {
            (h, string? presentKey, string? presentValue) = Block(layers[i], $"backbone.layers.{i}", h, additiveMask, causal ? pastKeys[i] : null, causal ? pastValues[i] : null);
            if (causal)
            {
                G.Output(presentKey!, $"present.{i}.key", DataType.Float, "batch_size", _config.NumHeads, "past_sequence_length + sequence_length", _headDim);
                G.Output(presentValue!, $"present.{i}.value", DataType.Float, "batch_size", _config.NumHeads, "past_sequence_length + sequence_length", _headDim);
            }
        }

        if (backbone.PreLayerNorm)
        {
            h = LayerNorm(Child(backbone, "ln_f"), "backbone.ln_f", h);
        }

        string logits = task switch
        {
            OnnxTask.FillMask => MaskedLanguageModelHead(backbone, h),
            OnnxTask.TextClassification => ClassificationHead((BertForSequenceClassification)_model, h, mask),
            _ => G.Node("MatMul", new[] { h, TiedEmbeddingTransposed(backbone) }, "lm_head"),
        };
        if (task == OnnxTask.TextClassification)
        {
            G.Output(logits, "logits", DataType.Float, "batch_size", ((BertForSequenceClassification)_model).Options.NumLabels);
        }
        else
        {
            G.Output(logits, "logits", DataType.Float, "batch_size", "sequence_length", _config.VocabSize);
        }
    }

    private string Embeddings(TransformerBackbone backbone, string ids, string? types, string positions)
    {
        string h = G.Node("Gather", new[] { Param("backbone.wte.weight"), ids }, "wte", ("axis", 0L));
        if (backbone.AttentionBias is null)
        {
            h = G.Node("Add", new[] { h, G.Node("Gather", new[] { Param("backbone.wpe.weight"), positions }, "wpe", ("axis", 0L)) }, "embeddings");
        }
        else
        {
            Skip("backbone.wpe.weight"); // ALiBi: the position table is kept but no longer read (see ReplacePositionEmbedding)
        }

        if (types is not null)
        {
            h = G.Node("Add", new[] { h, G.Node("Gather", new[] { Param("backbone.wtt.weight"), types }, "wtt", ("axis", 0L)) }, "embeddings");
        }

        return backbone.PreLayerNorm ? h : LayerNorm(Child(backbone, "emb_ln"), "backbone.emb_ln", h);
    }

    /// <summary>
    /// The additive mask [B, 1 | heads, T, S] our backbone uses: keys where attention_mask is 0 hidden; for decoders
    /// also later keys, while a query always sees itself; with ALiBi, minus slope × |i − j| per head (AlibiBias.Build).
    /// </summary>
    private string AttentionMask(TransformerBackbone backbone, string mask, string queryPositions, string keyPositions)
    {
        string keys = G.Node("Unsqueeze", new[] { G.Node("Cast", new[] { mask }, "mask_bool", ("to", (long)DataType.Bool)), G.Int64s(new[] { 1L, 2L }) }, "key_mask"); // [B, 1, 1, S]
        string q = G.Node("Unsqueeze", new[] { queryPositions, G.Int64s(new[] { 1L }) }, "q_col"); // [T, 1]
        string k = G.Node("Unsqueeze", new[] { keyPositions, G.Int64s(new[] { 0L }) }, "k_row");   // [1, S]
        string allowed = keys;
        IAttentionBiasProvider? bias = backbone.AttentionBias;
        if (backbone.Causal)
        {
            allowed = G.Node("And", new[] { allowed, G.Node("LessOrEqual", new[] { k, q }, "causal") }, "allowed");
        }

        if (backbone.Causal || bias is not null)
        {
            allowed = G.Node("Or", new[] { allowed, G.Node("Equal", new[] { k, q }, "diagonal") }, "allowed");
        }

        string additive = G.Node("Where", new[] { allowed, G.Floats(new[] { 0f }), G.Floats(new[] { MaskedScore }) }, "additive_mask");
        if (bias is null)
        {
            return additive;
        }

        if (bias is not AlibiAttentionBias alibi)
        {
            throw new NotSupportedException($"The attention bias {bias.GetType().Name} cannot be exported to ONNX; expected ALiBi (AlibiAttentionBias).");
        }

        float[] slopes = alibi.Slopes.Select(v => (float)-v).ToArray();
        string distance = G.Node("Cast", new[] { G.Node("Abs", new[] { G.Node("Sub", new[] { q, k }, "offset") }, "distance") }, "distance_f", ("to", (long)DataType.Float)); // [T, S]
        string perHead = G.Node("Mul", new[] { G.Floats(slopes, scalar: false, shape: new long[] { slopes.Length, 1, 1 }), distance }, "alibi"); // [heads, T, S]
        return G.Node("Add", new[] { additive, perHead }, "alibi_mask");
    }

    private (string Hidden, string? PresentKey, string? PresentValue) Block(TransformerBlock block, string prefix, string x, string mask, string? pastKey, string? pastValue)
    {
        IResidualBranchPolicy? policy = block.ResidualPolicy;
        if (policy is not null && policy.SkipBlock(training: false))
        {
            throw new NotSupportedException($"{prefix}: its residual policy {policy.GetType().Name} skips the block in evaluation, which the exporter does not express.");
        }

        double keep = policy?.BranchScale(training: false) ?? 1.0;
        string? presentKey, presentValue;
        string h;
        if (block.PreLayerNorm)
        {
            (string attended, presentKey, presentValue) = Attention(prefix + ".attn", LayerNorm(block.LayerNorm1, prefix + ".ln_1", x), mask, pastKey, pastValue);
            h = G.Node("Add", new[] { x, Scaled(attended, keep) }, prefix + "/residual_1");
            h = G.Node("Add", new[] { h, Scaled(Mlp(block.Mlp, prefix + ".mlp", LayerNorm(block.LayerNorm2, prefix + ".ln_2", h)), keep) }, prefix + "/residual_2");
        }
        else
        {
            (string attended, presentKey, presentValue) = Attention(prefix + ".attn", x, mask, pastKey, pastValue);
            h = LayerNorm(block.LayerNorm1, prefix + ".ln_1", G.Node("Add", new[] { x, Scaled(attended, keep) }, prefix + "/residual_1"));
            h = LayerNorm(block.LayerNorm2, prefix + ".ln_2", G.Node("Add", new[] { h, Scaled(Mlp(block.Mlp, prefix + ".mlp", h), keep) }, prefix + "/residual_2"));
        }

        return (h, presentKey, presentValue);
    }

    private string Scaled(string branch, double keep) =>
        keep == 1.0 ? branch : G.Node("Mul", new[] { branch, G.Floats(new[] { (float)keep }) }, "branch_scale");

    private (string Output, string? PresentKey, string? PresentValue) Attention(string prefix, string x, string mask, string? pastKey, string? pastValue)
    {
        string qkv = Linear(prefix + ".qkv", x);                                                                       // [B, T, 3·H]
        string split = G.Node("Reshape", new[] { qkv, G.Int64s(new long[] { 0, 0, 3, _config.NumHeads, _headDim }) }, prefix + "/qkv_heads");
        string heads = G.Node("Transpose", new[] { split }, prefix + "/qkv_t", ("perm", new long[] { 2, 0, 3, 1, 4 }));  // [3, B, heads, T, d]
        string q = G.Node("Gather", new[] { heads, G.Int64s(new[] { 0L }, scalar: true) }, prefix + "/q", ("axis", 0L));
        string k = G.Node("Gather", new[] { heads, G.Int64s(new[] { 1L }, scalar: true) }, prefix + "/k", ("axis", 0L));
        string v = G.Node("Gather", new[] { heads, G.Int64s(new[] { 2L }, scalar: true) }, prefix + "/v", ("axis", 0L));
        if (pastKey is not null)
        {
            k = G.Node("Concat", new[] { pastKey, k }, prefix + "/present_key", ("axis", 2L));
            v = G.Node("Concat", new[] { pastValue!, v }, prefix + "/present_value", ("axis", 2L));
        }

        string merged = Attend(prefix, q, k, v, mask, (int)_headDim, _config.HiddenSize);
        return (Linear(prefix + ".out_proj", merged), pastKey is null ? null : k, pastKey is null ? null : v);
    }

    private string Mlp(nn.Module<Tensor, Tensor> mlp, string prefix, string x)
    {
        switch (mlp)
        {
            case FeedForward ff:
                return Linear(prefix + ".fc_out", Activation(Linear(prefix + ".fc_in", x), ff.Activation));
            case GatedFeedForward glu:
                string gate = GluActivationOf(Linear(prefix + ".gated_layer", x), glu.Activation);
                return Linear(prefix + ".wo", G.Node("Mul", new[] { gate, Linear(prefix + ".non_gated_layer", x) }, prefix + "/glu"));
            default:
                throw new NotSupportedException($"{prefix} is a {mlp.GetType().Name}, which the ONNX exporter does not know; expected FeedForward or GatedFeedForward.");
        }
    }

    private string Activation(string x, HiddenActivation activation) => activation switch
    {
        HiddenActivation.Gelu => GeluErf(x),
        HiddenActivation.GeluTanh => GeluTanh(x),
        _ => throw new NotSupportedException($"The activation {activation} cannot be exported to ONNX."),
    };

    private string GluActivationOf(string x, GluActivation activation) => activation switch
    {
        GluActivation.Gelu => GeluErf(x),
        GluActivation.GeluTanh => GeluTanh(x),
        GluActivation.Relu => G.Node("Relu", new[] { x }, "relu"),
        GluActivation.Silu => G.Node("Mul", new[] { x, G.Node("Sigmoid", new[] { x }, "sigmoid") }, "silu"),
        _ => throw new NotSupportedException($"The gated-linear-unit activation {activation} cannot be exported to ONNX."),
    };

    // gelu(x) = x · Φ(x) = 0.5 · x · (1 + erf(x / √2)) (opset 17 has no Gelu op; opset 20 does).
    private string GeluErf(string x)
    {
        string erf = G.Node("Erf", new[] { G.Node("Mul", new[] { x, G.Floats(new[] { (float)(1.0 / Math.Sqrt(2.0)) }) }, "gelu_scaled") }, "gelu_erf");
        return GeluFinish(x, erf);
    }

    // gelu_tanh(x) = 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))) (GPT-2's "gelu_new").
    private string GeluTanh(string x)
    {
        string cube = G.Node("Mul", new[] { G.Node("Mul", new[] { x, x }, "gelu_sq"), x }, "gelu_cube");
        string inner = G.Node("Add", new[] { x, G.Node("Mul", new[] { cube, G.Floats(new[] { 0.044715f }) }, "gelu_c") }, "gelu_inner");
        string tanh = G.Node("Tanh", new[] { G.Node("Mul", new[] { inner, G.Floats(new[] { (float)Math.Sqrt(2.0 / Math.PI) }) }, "gelu_k") }, "gelu_tanh");
        return GeluFinish(x, tanh);
    }

    private string GeluFinish(string x, string curve) =>
        G.Node("Mul", new[] { G.Node("Mul", new[] { x, G.Floats(new[] { 0.5f }) }, "gelu_half"), G.Node("Add", new[] { curve, G.Floats(new[] { 1f }) }, "gelu_one") }, "gelu");

    /// <summary>
    /// LayerNorm, or LowPrecisionLayerNorm's LPLayerNorm (which computes LayerNorm in the autocast dtype, and in fp32
    /// without autocast: exported as the fp32 LayerNormalization it computes outside autocast).
    /// </summary>
    private string LayerNorm(nn.Module module, string prefix, string x)
    {
        double eps = module switch
        {
            TorchSharp.Modules.LayerNorm ln => ln.eps,
            LPLayerNorm lp => lp.eps,
            _ => throw new NotSupportedException($"{prefix} is a {module.GetType().Name}, which the ONNX exporter does not know; expected LayerNorm or LPLayerNorm."),
        };
        var inputs = new List<string> { x, Param(prefix + ".weight") };
        if (HasParameter(prefix + ".bias"))
        {
            inputs.Add(Param(prefix + ".bias"));
        }

        return G.Node("LayerNormalization", inputs.ToArray(), prefix, ("axis", -1L), ("epsilon", eps));
    }

    private string MaskedLanguageModelHead(TransformerBackbone backbone, string h)
    {
        h = LayerNorm(Child(_model, "mlm_ln"), "mlm_ln", Activation(Linear("mlm_transform", h), backbone.Activation));
        return G.Node("Add", new[] { G.Node("MatMul", new[] { h, TiedEmbeddingTransposed(backbone) }, "decoder"), Param("mlm_bias") }, "mlm_logits");
    }

    private string ClassificationHead(BertForSequenceClassification model, string h, string mask)
    {
        string pooled;
        if (model.Options.Pooling == SequencePooling.ClsToken)
        {
            pooled = G.Node("Gather", new[] { h, G.Int64s(new[] { 0L }, scalar: true) }, "cls", ("axis", 1L)); // [B, H]
        }
        else
        {
            string weights = G.Node("Unsqueeze", new[] { G.Node("Cast", new[] { G.Node("Cast", new[] { mask }, "mask_b", ("to", (long)DataType.Bool)) }, "mask_f", ("to", (long)DataType.Float)), G.Int64s(new[] { -1L }) }, "mask_weights"); // [B, T, 1]
            string sum = G.Node("ReduceSum", new[] { G.Node("Mul", new[] { h, weights }, "masked_hidden"), G.Int64s(new[] { 1L }) }, "hidden_sum", ("keepdims", 0L));
            string count = G.Node("Max", new[] { G.Node("ReduceSum", new[] { weights, G.Int64s(new[] { 1L }) }, "token_count", ("keepdims", 0L)), G.Floats(new[] { 1f }) }, "token_count_min1");
            pooled = G.Node("Div", new[] { sum, count }, "mean_pooled");
        }

        string pooler = G.Node("Tanh", new[] { Linear("pooler", pooled) }, "pooler_tanh");
        return Linear("classifier", pooler);
    }

    private string TiedEmbeddingTransposed(TransformerBackbone backbone)
    {
        string wte = Param("backbone.wte.weight");
        return G.Node("Transpose", new[] { wte }, "wte_t", ("perm", new long[] { 1, 0 }));
    }

}

/// <summary>What an exported graph computes, by Optimum's task names.</summary>
public enum OnnxTask
{
    /// <summary><c>fill-mask</c>: BERT masked-LM logits Float32 [batch, sequence, vocab].</summary>
    FillMask,

    /// <summary><c>text-classification</c>: sequence-classification logits Float32 [batch, labels].</summary>
    TextClassification,

    /// <summary><c>text-generation-with-past</c>: causal-LM logits Float32 [batch, sequence, vocab] and the key/value cache in and out.</summary>
    TextGenerationWithPast,
}
