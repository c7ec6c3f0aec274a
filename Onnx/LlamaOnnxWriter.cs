using ComposerSharp.Algorithms;
using ComposerSharp.Models.Decoders;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace ComposerSharp.Onnx;

/// <summary>
/// Writes <see cref="LlamaForCausalLM"/>'s eval-mode computation as an ONNX decoder-with-past graph (transformers'
/// modeling_llama.py): RMSNorm (Float32, as LlamaRMSNorm) or LowPrecisionRMSNorm's LPRMSNorm as the same Float32
/// RMSNorm, rotary embeddings from cos/sin tables for positions [0, max_position_embeddings) gathered at the absolute
/// positions (default, linear and llama3 scaling; dynamic scaling is exact only within max_position_embeddings),
/// grouped-query attention whose cache holds the key/value heads only (<c>past_key_values.N.*</c> [batch, kv_heads,
/// past, head_dim]), SwiGLU MLP, tied or untied head. Every parameter must be consumed; anything else is refused.
/// </summary>
internal sealed class LlamaOnnxWriter : OnnxModuleWriter
{
    private readonly LlamaForCausalLM _model;
    private readonly LlamaConfig _config;
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;

    private LlamaOnnxWriter(LlamaForCausalLM model, OnnxGraph graph)
        : base(model, graph)
    {
        _model = model;
        _config = model.Config;
        _heads = _config.NumHeads;
        _kvHeads = _config.NumKeyValueHeads;
        _headDim = _config.EffectiveHeadDim;
    }

    public static OnnxGraph Write(LlamaForCausalLM model, bool float16Weights)
    {
        var graph = new OnnxGraph(nameof(LlamaForCausalLM), float16Weights);
        var writer = new LlamaOnnxWriter(model, graph);
        writer.WriteModel();
        writer.ThrowIfParametersUnused();
        return graph;
    }

    private void WriteModel()
    {
        string ids = G.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        string mask = G.Input("attention_mask", DataType.Int64, "batch_size", "past_sequence_length + sequence_length");
        var pastKeys = new string[_config.NumLayers];
        var pastValues = new string[_config.NumLayers];
        for (int i = 0; i < _config.NumLayers; i++)
        {
            pastKeys[i] = G.Input($"past_key_values.{i}.key", DataType.Float, "batch_size", _kvHeads, "past_sequence_length", _headDim);
            pastValues[i] = G.Input($"past_key_values.{i}.value", DataType.Float, "batch_size", _kvHeads, "past_sequence_length", _headDim);
        }

        string t = Dim(ids, 1, "seq_len"), p = Dim(pastKeys[0], 2, "past_len");
        string s = G.Node("Add", new[] { p, t }, "total_len");
        string one = G.Int64s(new[] { 1L }, scalar: true);
        string queryPositions = G.Node("Range", new[] { p, s, one }, "query_positions");
        string keyPositions = G.Node("Range", new[] { G.Int64s(new[] { 0L }, scalar: true), s, one }, "key_positions");

        // Rotary tables for every position the model allows, gathered at the query positions: [T, head_dim].
        (Tensor cosTable, Tensor sinTable) = new RotaryEmbedding(_config).Tables(0, _config.MaxPositionEmbeddings, torch.CPU);
        string cos = G.Node("Gather", new[] { G.Weight("rotary.cos", cosTable), queryPositions }, "cos", ("axis", 0L));
        string sin = G.Node("Gather", new[] { G.Weight("rotary.sin", sinTable), queryPositions }, "sin", ("axis", 0L));
        cosTable.Dispose();
        sinTable.Dispose();

        // Additive mask [B, 1, T, S]: causal and not padding (LlamaModel's rule).
        string keys = G.Node("Unsqueeze", new[] { G.Node("Cast", new[] { mask }, "mask_bool", ("to", (long)DataType.Bool)), G.Int64s(new[] { 1L, 2L }) }, "key_mask");
        string q = G.Node("Unsqueeze", new[] { queryPositions, G.Int64s(new[] { 1L }) }, "q_col");
        string k = G.Node("Unsqueeze", new[] { keyPositions, G.Int64s(new[] { 0L }) }, "k_row");
        string allowed = G.Node("And", new[] { keys, G.Node("LessOrEqual", new[] { k, q }, "causal") }, "allowed");
        string additive = G.Node("Where", new[] { allowed, G.Floats(new[] { 0f }), G.Floats(new[] { float.MinValue }) }, "additive_mask");

        string h = G.Node("Gather", new[] { Param("model.embed_tokens.weight"), ids }, "embed_tokens", ("axis", 0L));
        IReadOnlyList<LlamaDecoderLayer> layers = _model.Model.Layers;
        for (int i = 0; i < layers.Count; i++)
        {
            string prefix = $"model.layers.{i}";
            string x = RmsNorm(Child(layers[i], "input_layernorm"), prefix + ".input_layernorm", h);
            (string attended, string presentKey, string presentValue) = Attention(prefix + ".self_attn", x, cos, sin, additive, pastKeys[i], pastValues[i]);
            G.Output(presentKey, $"present.{i}.key", DataType.Float, "batch_size", _kvHeads, "past_sequence_length + sequence_length", _headDim);
            G.Output(presentValue, $"present.{i}.value", DataType.Float, "batch_size", _kvHeads, "past_sequence_length + sequence_length", _headDim);
            h = G.Node("Add", new[] { h, attended }, prefix + "/residual_1");
            string m = RmsNorm(Child(layers[i], "post_attention_layernorm"), prefix + ".post_attention_layernorm", h);
            string gate = Linear(prefix + ".mlp.gate_proj", m);
            string silu = G.Node("Mul", new[] { gate, G.Node("Sigmoid", new[] { gate }, prefix + "/sigmoid") }, prefix + "/silu");
            string mlp = Linear(prefix + ".mlp.down_proj", G.Node("Mul", new[] { silu, Linear(prefix + ".mlp.up_proj", m) }, prefix + "/swiglu"));
            h = G.Node("Add", new[] { h, mlp }, prefix + "/residual_2");
        }

        h = RmsNorm(Child(_model.Model, "norm"), "model.norm", h);
        string head = HasParameter("lm_head.weight") ? Param("lm_head.weight", transpose: true) : G.Node("Transpose", new[] { Param("model.embed_tokens.weight") }, "embed_t", ("perm", new long[] { 1, 0 }));
        G.Output(G.Node("MatMul", new[] { h, head }, "lm_head"), "logits", DataType.Float, "batch_size", "sequence_length", _config.VocabSize);
    }

    private (string Output, string PresentKey, string PresentValue) Attention(string prefix, string x, string cos, string sin, string mask, string pastKey, string pastValue)
    {
        string q = Rotate(Heads(Linear(prefix + ".q_proj", x), _heads, prefix + "/q"), cos, sin, prefix + "/q_rope");
        string k = Rotate(Heads(Linear(prefix + ".k_proj", x), _kvHeads, prefix + "/k"), cos, sin, prefix + "/k_rope");
        string v = Heads(Linear(prefix + ".v_proj", x), _kvHeads, prefix + "/v");
        string presentKey = G.Node("Concat", new[] { pastKey, k }, prefix + "/present_key", ("axis", 2L));
        string presentValue = G.Node("Concat", new[] { pastValue, v }, prefix + "/present_value", ("axis", 2L));
        string keys = RepeatKv(presentKey, prefix + "/k_rep"), values = RepeatKv(presentValue, prefix + "/v_rep");
        string merged = Attend(prefix, q, keys, values, mask, _headDim, (long)_heads * _headDim);
        return (Linear(prefix + ".o_proj", merged), presentKey, presentValue);
    }

    // [B, T, n·d] → [B, n, T, d]
    private string Heads(string x, int n, string hint) =>
        G.Node("Transpose", new[] { G.Node("Reshape", new[] { x, G.Int64s(new long[] { 0, 0, n, _headDim }) }, hint + "_split") }, hint + "_heads", ("perm", new long[] { 0, 2, 1, 3 }));

    // x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] over the two halves of head_dim.
    private string Rotate(string x, string cos, string sin, string hint)
    {
        long half = _headDim / 2;
        string axis = G.Int64s(new[] { -1L });
        string first = G.Node("Slice", new[] { x, G.Int64s(new[] { 0L }), G.Int64s(new[] { half }), axis }, hint + "_x1");
        string second = G.Node("Slice", new[] { x, G.Int64s(new[] { half }), G.Int64s(new[] { (long)_headDim }), axis }, hint + "_x2");
        string rotated = G.Node("Concat", new[] { G.Node("Neg", new[] { second }, hint + "_neg"), first }, hint + "_rotated", ("axis", -1L));
        return G.Node("Add", new[] { G.Node("Mul", new[] { x, cos }, hint + "_cos"), G.Node("Mul", new[] { rotated, sin }, hint + "_sin") }, hint);
    }

    // [B, kv, S, d] → [B, heads, S, d], each key/value head repeated heads/kv times in place (repeat_interleave).
    private string RepeatKv(string x, string hint)
    {
        if (_kvHeads == _heads)
        {
            return x;
        }

        string expanded = G.Node("Expand", new[] { G.Node("Unsqueeze", new[] { x, G.Int64s(new[] { 2L }) }, hint + "_unsq"), G.Int64s(new long[] { 1, 1, _heads / _kvHeads, 1, 1 }) }, hint + "_expand");
        return G.Node("Reshape", new[] { expanded, G.Int64s(new long[] { 0, _heads, -1, _headDim }) }, hint);
    }

    // LlamaRMSNorm in Float32: x / sqrt(mean(x²) + eps) · weight. LPRMSNorm computes it in the autocast dtype, Float32 outside autocast.
    private string RmsNorm(nn.Module module, string prefix, string x)
    {
        double eps = module switch
        {
            RMSNorm norm => norm.Eps,
            LPRMSNorm lp => lp.eps,
            _ => throw new NotSupportedException($"{prefix} is a {module.GetType().Name}, which the ONNX exporter does not know; expected RMSNorm or LPRMSNorm."),
        };
        string meanSquare = G.Node("ReduceMean", new[] { G.Node("Mul", new[] { x, x }, prefix + "/sq") }, prefix + "/mean_sq", ("axes", new long[] { -1 }), ("keepdims", 1L));
        string scale = G.Node("Reciprocal", new[] { G.Node("Sqrt", new[] { G.Node("Add", new[] { meanSquare, G.Floats(new[] { (float)eps }) }, prefix + "/eps") }, prefix + "/rms") }, prefix + "/inv_rms");
        return G.Node("Mul", new[] { Param(prefix + ".weight"), G.Node("Mul", new[] { x, scale }, prefix + "/normed") }, prefix);
    }

}
