using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Models.HuggingFace;
using Google.Protobuf;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace ComposerSharp.Onnx;

/// <summary>What <see cref="OnnxBertImport.ToHuggingFaceFolder"/> recovered from an ONNX file.</summary>
/// <param name="Folder">The Hugging Face <c>BertModel</c> folder written (config.json, model.safetensors).</param>
/// <param name="Tensors">Each recovered weight's Hugging Face name (BertModel's, without the <c>bert.</c> prefix) and shape.</param>
/// <param name="Config">The config.json written.</param>
public sealed record OnnxImportResult(string Folder, IReadOnlyDictionary<string, long[]> Tensors, JsonObject Config);

/// <summary>
/// Brings a BERT-family encoder exported to ONNX (by <c>torch.onnx</c> or Optimum, e.g. sentence-transformers'
/// all-MiniLM-L6-v2) back as a Hugging Face <c>BertModel</c> folder that <c>model: {pretrained: FOLDER}</c> (or
/// <c>pretrained: model.onnx</c>, which imports on the fly) loads for fine-tuning. The graph is walked to recover what
/// the export lost: the Linear weights of <c>torch.onnx</c> exports are unnamed initializers stored transposed ([in,
/// out]) feeding a MatMul, found through the Add that follows and takes the named bias; the pooler may be a Gemm;
/// the number of heads comes from the attention's Reshape shape, the LayerNorm epsilon from the (decomposed or
/// fused) LayerNorm, the activation from the graph's Erf (GELU). Any Float initializer that cannot be named, or a
/// missing piece, is an error naming the node or initializer; nothing is guessed. Idea: the reverse of Optimum's
/// BERT ONNX config (optimum/exporters/onnx/model_configs.py) and of torch.onnx's parameter naming.
/// </summary>
public static class OnnxBertImport
{
    /// <summary>Reads <paramref name="onnxPath"/> and writes a <c>BertModel</c> folder into <paramref name="folder"/> (created; its config.json and model.safetensors replaced).</summary>
    /// <param name="onnxPath">A BERT-family ONNX file with input_ids (and attention_mask, token_type_ids).</param>
    /// <param name="folder">The output folder.</param>
    /// <returns>The recovered tensors and config.</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a readable ONNX model (e.g. truncated), is of another family, or holds a weight or structure the importer cannot map (named).</exception>
    public static OnnxImportResult ToHuggingFaceFolder(string onnxPath, string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(onnxPath);
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!File.Exists(onnxPath))
        {
            throw new FileNotFoundException($"The ONNX file '{onnxPath}' (full path '{Path.GetFullPath(onnxPath)}') does not exist.", onnxPath);
        }

        ModelProto model;
        try
        {
            using FileStream stream = File.OpenRead(onnxPath);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException ex)
        {
            throw new InvalidDataException($"'{onnxPath}' is not a readable ONNX model (truncated or not ONNX): {ex.Message}", ex);
        }

        if (model.Graph is null || model.Graph.Node.Count == 0)
        {
            throw new InvalidDataException($"'{onnxPath}' holds no ONNX graph.");
        }

        var reader = new GraphReader(model.Graph, onnxPath);
        Dictionary<string, Tensor> tensors = reader.BertWeights();
        JsonObject config = reader.BertConfig(tensors);
        using var scope = torch.NewDisposeScope();
        Directory.CreateDirectory(folder);
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)).ToList();
        string weights = Path.Combine(folder, HuggingFaceFormat.WeightsFileName);
        string staging = weights + ".tmp";
        SafetensorsWriter.Write(staging, ordered, new Dictionary<string, string> { ["format"] = "pt", ["source"] = Path.GetFileName(onnxPath) });
        File.Move(staging, weights, overwrite: true);
        File.WriteAllText(Path.Combine(folder, HuggingFaceConfig.FileName), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return new OnnxImportResult(folder, tensors.ToDictionary(kv => kv.Key, kv => kv.Value.shape), config);
    }

    private sealed class GraphReader
    {
        private readonly GraphProto _graph;
        private readonly string _file;
        private readonly Dictionary<string, TensorProto> _initializers;
        private readonly Dictionary<string, TensorProto> _constants = new(StringComparer.Ordinal);
        private readonly Dictionary<string, NodeProto> _producer = new(StringComparer.Ordinal);
        private readonly Dictionary<string, List<NodeProto>> _consumers = new(StringComparer.Ordinal);

        public GraphReader(GraphProto graph, string file)
        {
            _graph = graph;
            _file = file;
            _initializers = graph.Initializer.ToDictionary(t => t.Name, StringComparer.Ordinal);
            foreach (NodeProto node in graph.Node)
            {
                foreach (string output in node.Output)
                {
                    _producer[output] = node;
                }

                foreach (string input in node.Input.Where(i => i.Length > 0))
                {
                    if (!_consumers.TryGetValue(input, out List<NodeProto>? list))
                    {
                        _consumers[input] = list = new List<NodeProto>();
                    }

                    list.Add(node);
                }

                if (node.OpType == "Constant" && node.Attribute.FirstOrDefault(a => a.Name == "value") is { T: { } value })
                {
                    _constants[node.Output[0]] = value;
                }
            }
        }

        /// <summary>Every Float weight under its BertModel name, Linear weights as [out, in].</summary>
        public Dictionary<string, Tensor> BertWeights()
        {
            var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            var named = new HashSet<string>(StringComparer.Ordinal);
            foreach ((string name, TensorProto proto) in _initializers)
            {
                if (IsFloat(proto) && Strip(name) is { } hf && LooksNamed(hf))
                {
                    result[hf] = Read(proto);
                    named.Add(name);
                }
            }

            if (!result.ContainsKey("embeddings.word_embeddings.weight"))
            {
                throw new InvalidDataException(
                    $"'{_file}' is not a BERT-family export: it has no initializer named embeddings.word_embeddings.weight (named Float initializers: [{string.Join(", ", result.Keys.Take(6))}{(result.Count > 6 ? ", …" : string.Empty)}]).");
            }

            foreach (NodeProto node in _graph.Node.Where(n => n.OpType is "MatMul" or "Gemm"))
            {
                if (node.Input.Count < 2 || !_initializers.TryGetValue(node.Input[1], out TensorProto? weight) || named.Contains(node.Input[1]))
                {
                    continue; // an activation × activation MatMul (attention scores), or a Gemm on a named weight (handled above)
                }

                string bias = BiasOf(node) ?? throw new InvalidDataException(
                    $"'{_file}': node {node.Name} ({node.OpType}) multiplies by the unnamed initializer '{node.Input[1]}' [{string.Join(", ", weight.Dims)}], and no Add or Gemm bias after it names the layer; the importer cannot tell which weight it is.");
                string hf = Strip(bias)![..^".bias".Length] + ".weight";
                bool transposed = node.OpType == "MatMul" || Attribute(node, "transB") != 1;
                using var scope = torch.NewDisposeScope();
                Tensor value = Read(weight);
                result[hf] = (transposed ? value.t().contiguous() : value).MoveToOuterDisposeScope(); // ONNX MatMul holds [in, out]; PyTorch Linear [out, in]
                named.Add(node.Input[1]);
            }

            string[] unmapped = _initializers.Values.Where(t => IsFloat(t) && t.Dims.Count >= 1 && !named.Contains(t.Name)).Select(t => $"{t.Name} [{string.Join(", ", t.Dims)}] (used by {string.Join(", ", Users(t.Name))})").ToArray();
            if (unmapped.Length > 0)
            {
                throw new InvalidDataException($"'{_file}' holds Float initializers the importer cannot map to BERT weights: {string.Join("; ", unmapped.Take(5))}{(unmapped.Length > 5 ? "; …" : string.Empty)}.");
            }

            return result;
        }

        public JsonObject BertConfig(Dictionary<string, Tensor> tensors)
        {
            long[] words = Require(tensors, "embeddings.word_embeddings.weight");
            long hidden = words[1];
            int layers = tensors.Keys.Select(LayerIndex).Where(i => i >= 0).DefaultIfEmpty(-1).Max() + 1;
            if (layers == 0)
            {
                throw new InvalidDataException($"'{_file}' has no encoder.layer.N weights.");
            }

            for (int i = 0; i < layers; i++)
            {
                foreach (string part in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense" })
                {
                    Require(tensors, $"encoder.layer.{i}.{part}.weight");
                }
            }

            long heads = Heads(hidden);
            if (!_graph.Node.Any(n => n.OpType == "Erf") && !_graph.Node.Any(n => n.OpType == "Gelu"))
            {
                throw new InvalidDataException($"'{_file}' has no Erf or Gelu node: its feed-forward activation is not BERT's GELU, and the importer does not guess another.");
            }

            var config = new JsonObject
            {
                ["architectures"] = new JsonArray("BertModel"),
                ["model_type"] = "bert",
                ["vocab_size"] = words[0],
                ["hidden_size"] = hidden,
                ["num_hidden_layers"] = layers,
                ["num_attention_heads"] = heads,
                ["intermediate_size"] = Require(tensors, "encoder.layer.0.intermediate.dense.weight")[0],
                ["hidden_act"] = "gelu",
                ["max_position_embeddings"] = Require(tensors, "embeddings.position_embeddings.weight")[0],
                ["type_vocab_size"] = tensors.TryGetValue("embeddings.token_type_embeddings.weight", out Tensor? types) ? types.shape[0] : 0,
                ["layer_norm_eps"] = Epsilon(),
                ["hidden_dropout_prob"] = 0.1,
                ["attention_probs_dropout_prob"] = 0.1,
                ["initializer_range"] = 0.02,
            };
            return config;
        }

        private long[] Require(Dictionary<string, Tensor> tensors, string name) => tensors.TryGetValue(name, out Tensor? t)
            ? t.shape
            : throw new InvalidDataException($"'{_file}' lacks the BERT weight '{name}' (no named initializer and no MatMul whose bias names it).");

        private static int LayerIndex(string name)
        {
            const string prefix = "encoder.layer.";
            if (!name.StartsWith(prefix, StringComparison.Ordinal))
            {
                return -1;
            }

            int end = name.IndexOf('.', prefix.Length);
            return end > 0 && int.TryParse(name.AsSpan(prefix.Length, end - prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int i) ? i : -1;
        }

        // The attention reshapes [B, T, hidden] to [B, T, heads, head_dim]: the third entry of the first Reshape's
        // target shape after layer 0's query/key/value projection (a constant, or a Concat of constants).
        private long Heads(long hidden)
        {
            foreach (NodeProto add in _graph.Node.Where(n => n.OpType == "Add" && n.Input.Any(i => Strip(i) is { } s && s.StartsWith("encoder.layer.0.attention.self.", StringComparison.Ordinal))))
            {
                foreach (NodeProto reshape in Consumers(add.Output[0]).Where(n => n.OpType == "Reshape"))
                {
                    long[]? shape = Int64s(reshape.Input[1]);
                    if (shape is null && _producer.TryGetValue(reshape.Input[1], out NodeProto? concat) && concat.OpType == "Concat" && concat.Input.Count == 4)
                    {
                        long[]? heads = Int64s(concat.Input[2]), dim = Int64s(concat.Input[3]);
                        shape = heads is { Length: 1 } && dim is { Length: 1 } ? new long[] { 0, 0, heads[0], dim[0] } : null;
                    }

                    if (shape is { Length: 4 } && shape[2] > 0 && shape[3] > 0 && shape[2] * shape[3] == hidden)
                    {
                        return shape[2];
                    }
                }
            }

            throw new InvalidDataException($"'{_file}': the number of attention heads could not be read from layer 0's attention Reshape (expected a constant shape [.., .., heads, head_dim] with heads × head_dim = {hidden}).");
        }

        // LayerNormalization's epsilon attribute, or the constant added to the variance before Sqrt in a decomposed LayerNorm.
        private double Epsilon()
        {
            if (_graph.Node.FirstOrDefault(n => n.OpType == "LayerNormalization") is { } ln)
            {
                float epsilon = ln.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? 1e-5f;
                return double.Parse(epsilon.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
            }

            foreach (NodeProto sqrt in _graph.Node.Where(n => n.OpType == "Sqrt"))
            {
                if (_producer.TryGetValue(sqrt.Input[0], out NodeProto? add) && add.OpType == "Add")
                {
                    foreach (string input in add.Input)
                    {
                        if (Floats(input) is { Length: 1 } eps)
                        {
                            return double.Parse(eps[0].ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture); // 1e-12 as written, not its float's 9.99999996e-13
                        }
                    }
                }
            }

            throw new InvalidDataException($"'{_file}': no LayerNormalization node and no decomposed LayerNorm (Add of a constant before Sqrt) was found, so the LayerNorm epsilon is unknown.");
        }

        private string? BiasOf(NodeProto node)
        {
            if (node.OpType == "Gemm")
            {
                return node.Input.Count > 2 && Strip(node.Input[2]) is { } gemmBias && gemmBias.EndsWith(".bias", StringComparison.Ordinal) ? node.Input[2] : null;
            }

            foreach (NodeProto add in Consumers(node.Output[0]).Where(n => n.OpType == "Add"))
            {
                string? bias = add.Input.FirstOrDefault(i => _initializers.ContainsKey(i) && Strip(i) is { } s && s.EndsWith(".bias", StringComparison.Ordinal));
                if (bias is not null)
                {
                    return bias;
                }
            }

            return null;
        }

        private IEnumerable<NodeProto> Consumers(string value) => _consumers.TryGetValue(value, out List<NodeProto>? list) ? list : Enumerable.Empty<NodeProto>();

        private IEnumerable<string> Users(string value) => Consumers(value).Select(n => $"{n.OpType} {n.Name}").DefaultIfEmpty("nothing");

        private long[]? Int64s(string value)
        {
            TensorProto? t = _initializers.GetValueOrDefault(value) ?? _constants.GetValueOrDefault(value);
            if (t is null || t.DataType != (int)DataType.Int64)
            {
                return null;
            }

            return t.Int64Data.Count > 0 ? t.Int64Data.ToArray() : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(t.RawData.Span).ToArray();
        }

        private float[]? Floats(string value)
        {
            TensorProto? t = _initializers.GetValueOrDefault(value) ?? _constants.GetValueOrDefault(value);
            if (t is null || t.DataType != (int)DataType.Float)
            {
                return null;
            }

            return t.FloatData.Count > 0 ? t.FloatData.ToArray() : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray();
        }

        private static long Attribute(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name)?.I ?? 0;

        private static bool IsFloat(TensorProto t) => t.DataType is (int)DataType.Float or (int)DataType.Float16;

        // Hugging Face BertModel names: the "bert." prefix of task models dropped.
        private static string? Strip(string name) => name.StartsWith("bert.", StringComparison.Ordinal) ? name["bert.".Length..] : name;

        private static bool LooksNamed(string name) =>
            (name.StartsWith("embeddings.", StringComparison.Ordinal) || name.StartsWith("encoder.", StringComparison.Ordinal) || name.StartsWith("pooler.", StringComparison.Ordinal))
            && (name.EndsWith(".weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal));

        private Tensor Read(TensorProto t)
        {
            long[] shape = t.Dims.ToArray();
            if (t.DataType == (int)DataType.Float16)
            {
                Half[] halves = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(t.RawData.Span).ToArray();
                return torch.tensor(halves.Select(h => (float)h).ToArray(), shape);
            }

            float[] values = t.FloatData.Count > 0 ? t.FloatData.ToArray() : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray();
            long expected = shape.Aggregate(1L, (a, b) => a * b);
            if (values.Length != expected)
            {
                throw new InvalidDataException($"'{_file}': initializer '{t.Name}' holds {values.Length} values for shape [{string.Join(", ", shape)}] ({expected}); external data and truncated tensors are not supported.");
            }

            return torch.tensor(values, shape);
        }
    }
}
