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
internal sealed class LlamaOnnxWriter
{
    private readonly LlamaForCausalLM _model;
    private readonly OnnxGraph _g;
    private readonly Dictionary<string, Tensor> _parameters;
    private readonly HashSet<string> _consumed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _written = new(StringComparer.Ordinal);
    private readonly LlamaConfig _config;
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;

    private LlamaOnnxWriter(LlamaForCausalLM model, OnnxGraph graph)
    {
        _model = model;
        _g = graph;
        _config = model.Config;
        _heads = _config.NumHeads;
        _kvHeads = _config.NumKeyValueHeads;
        _headDim = _config.EffectiveHeadDim;
        _parameters = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);
    }

    public static OnnxGraph Write(LlamaForCausalLM model, bool float16Weights)
    {
        var graph = new OnnxGraph(nameof(LlamaForCausalLM), float16Weights);
        var writer = new LlamaOnnxWriter(model, graph);
        writer.WriteModel();
        string[] unused = writer._parameters.Keys.Where(k => !writer._consumed.Contains(k)).Order(StringComparer.Ordinal).ToArray();
        if (unused.Length > 0)
        {
            throw new NotSupportedException($"LlamaForCausalLM has parameters the ONNX exporter does not know how to compute with: [{string.Join(", ", unused.Take(8))}]; nothing was written.");
        }

        return graph;
    }

    private void WriteModel()
    {
        string ids = _g.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        string mask = _g.Input("attention_mask", DataType.Int64, "batch_size", "past_sequence_length + sequence_length");
        var pastKeys = new string[_config.NumLayers];
        var pastValues = new string[_config.NumLayers];
        for (int i = 0; i < _config.NumLayers; i++)
        {
            pastKeys[i] = _g.Input($"past_key_values.{i}.key", DataType.Float, "batch_size", _kvHeads, "past_sequence_length", _headDim);
            pastValues[i] = _g.Input($"past_key_values.{i}.value", DataType.Float, "batch_size", _kvHeads, "past_sequence_length", _headDim);
        }

        string t = Dim(ids, 1, "seq_len"), p = Dim(pastKeys[0], 2, "past_len");
        string s = _g.Node("Add", new[] { p, t }, "total_len");
        string one = _g.Int64s(new[] { 1L }, scalar: true);
        string queryPositions = _g.Node("Range", new[] { p, s, one }, "query_positions");
        string keyPositions = _g.Node("Range", new[] { _g.Int64s(new[] { 0L }, scalar: true), s, one }, "key_positions");

        // Rotary tables for every position the model allows, gathered at the query positions: [T, head_dim].
        (Tensor cosTable, Tensor sinTable) = new RotaryEmbedding(_config).Tables(0, _config.MaxPositionEmbeddings, torch.CPU);
        string cos = _g.Node("Gather", new[] { _g.Weight("rotary.cos", cosTable), queryPositions }, "cos", ("axis", 0L));
        string sin = _g.Node("Gather", new[] { _g.Weight("rotary.sin", sinTable), queryPositions }, "sin", ("axis", 0L));
        cosTable.Dispose();
        sinTable.Dispose();

        // Additive mask [B, 1, T, S]: causal and not padding (LlamaModel's rule).
        string keys = _g.Node("Unsqueeze", new[] { _g.Node("Cast", new[] { mask }, "mask_bool", ("to", (long)DataType.Bool)), _g.Int64s(new[] { 1L, 2L }) }, "key_mask");
        string q = _g.Node("Unsqueeze", new[] { queryPositions, _g.Int64s(new[] { 1L }) }, "q_col");
        string k = _g.Node("Unsqueeze", new[] { keyPositions, _g.Int64s(new[] { 0L }) }, "k_row");
        string allowed = _g.Node("And", new[] { keys, _g.Node("LessOrEqual", new[] { k, q }, "causal") }, "allowed");
        string additive = _g.Node("Where", new[] { allowed, _g.Floats(new[] { 0f }), _g.Floats(new[] { float.MinValue }) }, "additive_mask");

        string h = _g.Node("Gather", new[] { Param("model.embed_tokens.weight"), ids }, "embed_tokens", ("axis", 0L));
        IReadOnlyList<LlamaDecoderLayer> layers = _model.Model.Layers;
        for (int i = 0; i < layers.Count; i++)
        {
            string prefix = $"model.layers.{i}";
            string x = RmsNorm(Child(layers[i], "input_layernorm"), prefix + ".input_layernorm", h);
            (string attended, string presentKey, string presentValue) = Attention(prefix + ".self_attn", x, cos, sin, additive, pastKeys[i], pastValues[i]);
            _g.Output(presentKey, $"present.{i}.key", DataType.Float, "batch_size", _kvHeads, "past_sequence_length + sequence_length", _headDim);
            _g.Output(presentValue, $"present.{i}.value", DataType.Float, "batch_size", _kvHeads, "past_sequence_length + sequence_length", _headDim);
            h = _g.Node("Add", new[] { h, attended }, prefix + "/residual_1");
            string m = RmsNorm(Child(layers[i], "post_attention_layernorm"), prefix + ".post_attention_layernorm", h);
            string gate = Linear(prefix + ".mlp.gate_proj", m);
            string silu = _g.Node("Mul", new[] { gate, _g.Node("Sigmoid", new[] { gate }, prefix + "/sigmoid") }, prefix + "/silu");
            string mlp = Linear(prefix + ".mlp.down_proj", _g.Node("Mul", new[] { silu, Linear(prefix + ".mlp.up_proj", m) }, prefix + "/swiglu"));
            h = _g.Node("Add", new[] { h, mlp }, prefix + "/residual_2");
        }

        h = RmsNorm(Child(_model.Model, "norm"), "model.norm", h);
        string head = _parameters.ContainsKey("lm_head.weight") ? Param("lm_head.weight", transpose: true) : _g.Node("Transpose", new[] { Param("model.embed_tokens.weight") }, "embed_t", ("perm", new long[] { 1, 0 }));
        _g.Output(_g.Node("MatMul", new[] { h, head }, "lm_head"), "logits", DataType.Float, "batch_size", "sequence_length", _config.VocabSize);
    }

    private (string Output, string PresentKey, string PresentValue) Attention(string prefix, string x, string cos, string sin, string mask, string pastKey, string pastValue)
    {
        string q = Rotate(Heads(Linear(prefix + ".q_proj", x), _heads, prefix + "/q"), cos, sin, prefix + "/q_rope");
        string k = Rotate(Heads(Linear(prefix + ".k_proj", x), _kvHeads, prefix + "/k"), cos, sin, prefix + "/k_rope");
        string v = Heads(Linear(prefix + ".v_proj", x), _kvHeads, prefix + "/v");
        string presentKey = _g.Node("Concat", new[] { pastKey, k }, prefix + "/present_key", ("axis", 2L));
        string presentValue = _g.Node("Concat", new[] { pastValue, v }, prefix + "/present_value", ("axis", 2L));
        string keys = RepeatKv(presentKey, prefix + "/k_rep"), values = RepeatKv(presentValue, prefix + "/v_rep");
        string scores = _g.Node("MatMul", new[] { q, _g.Node("Transpose", new[] { keys }, prefix + "/k_t", ("perm", new long[] { 0, 1, 3, 2 })) }, prefix + "/scores");
        scores = _g.Node("Mul", new[] { scores, _g.Floats(new[] { (float)(1.0 / Math.Sqrt(_headDim)) }) }, prefix + "/scaled");
        string probabilities = _g.Node("Softmax", new[] { _g.Node("Add", new[] { scores, mask }, prefix + "/masked") }, prefix + "/probs", ("axis", -1L));
        string context = _g.Node("MatMul", new[] { probabilities, values }, prefix + "/context");
        string merged = _g.Node("Reshape", new[] { _g.Node("Transpose", new[] { context }, prefix + "/context_t", ("perm", new long[] { 0, 2, 1, 3 })), _g.Int64s(new long[] { 0, 0, (long)_heads * _headDim }) }, prefix + "/merged");
        return (Linear(prefix + ".o_proj", merged), presentKey, presentValue);
    }

    // [B, T, n·d] → [B, n, T, d]
    private string Heads(string x, int n, string hint) =>
        _g.Node("Transpose", new[] { _g.Node("Reshape", new[] { x, _g.Int64s(new long[] { 0, 0, n, _headDim }) }, hint + "_split") }, hint + "_heads", ("perm", new long[] { 0, 2, 1, 3 }));

    // x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁] over the two halves of head_dim.
    private string Rotate(string x, string cos, string sin, string hint)
    {
        long half = _headDim / 2;
        string axis = _g.Int64s(new[] { -1L });
        string first = _g.Node("Slice", new[] { x, _g.Int64s(new[] { 0L }), _g.Int64s(new[] { half }), axis }, hint + "_x1");
        string second = _g.Node("Slice", new[] { x, _g.Int64s(new[] { half }), _g.Int64s(new[] { (long)_headDim }), axis }, hint + "_x2");
        string rotated = _g.Node("Concat", new[] { _g.Node("Neg", new[] { second }, hint + "_neg"), first }, hint + "_rotated", ("axis", -1L));
        return _g.Node("Add", new[] { _g.Node("Mul", new[] { x, cos }, hint + "_cos"), _g.Node("Mul", new[] { rotated, sin }, hint + "_sin") }, hint);
    }

    // [B, kv, S, d] → [B, heads, S, d], each key/value head repeated heads/kv times in place (repeat_interleave).
    private string RepeatKv(string x, string hint)
    {
        if (_kvHeads == _heads)
        {
            return x;
        }

        string expanded = _g.Node("Expand", new[] { _g.Node("Unsqueeze", new[] { x, _g.Int64s(new[] { 2L }) }, hint + "_unsq"), _g.Int64s(new long[] { 1, 1, _heads / _kvHeads, 1, 1 }) }, hint + "_expand");
        return _g.Node("Reshape", new[] { expanded, _g.Int64s(new long[] { 0, _heads, -1, _headDim }) }, hint);
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
        string meanSquare = _g.Node("ReduceMean", new[] { _g.Node("Mul", new[] { x, x }, prefix + "/sq") }, prefix + "/mean_sq", ("axes", new long[] { -1 }), ("keepdims", 1L));
        string scale = _g.Node("Reciprocal", new[] { _g.Node("Sqrt", new[] { _g.Node("Add", new[] { meanSquare, _g.Floats(new[] { (float)eps }) }, prefix + "/eps") }, prefix + "/rms") }, prefix + "/inv_rms");
        return _g.Node("Mul", new[] { Param(prefix + ".weight"), _g.Node("Mul", new[] { x, scale }, prefix + "/normed") }, prefix);
    }

    private string Linear(string prefix, string x)
    {
        string y = _g.Node("MatMul", new[] { x, Param(prefix + ".weight", transpose: true) }, prefix + "/matmul");
        return _parameters.ContainsKey(prefix + ".bias") ? _g.Node("Add", new[] { y, Param(prefix + ".bias") }, prefix + "/add") : y;
    }

    private string Dim(string value, long axis, string hint) =>
        _g.Node("Gather", new[] { _g.Node("Shape", new[] { value }, hint + "_shape"), _g.Int64s(new[] { axis }, scalar: true) }, hint, ("axis", 0L));

    private string Param(string name, bool transpose = false)
    {
        string key = name + (transpose ? "^T" : string.Empty);
        if (_written.TryGetValue(key, out string? known))
        {
            return known;
        }

        Tensor tensor = _parameters.TryGetValue(name, out Tensor? found) ? found : throw new NotSupportedException($"LlamaForCausalLM has no parameter '{name}' where the ONNX exporter expects one; nothing was written.");
        _consumed.Add(name);
        string value = _g.Weight(transpose ? name + ".T" : name, tensor, transpose);
        _written[key] = value;
        return value;
    }

    private static nn.Module Child(nn.Module parent, string name) =>
        parent.named_children().FirstOrDefault(c => c.name == name).module
            ?? throw new NotSupportedException($"{parent.GetType().Name} has no module '{name}' where the ONNX exporter expects one.");
}
