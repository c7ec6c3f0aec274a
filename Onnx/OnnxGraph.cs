using Google.Protobuf;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace ComposerSharp.Onnx;

/// <summary>
/// Builds one ONNX graph (opset <see cref="Opset"/>, default domain) node by node with the ONNX protobuf classes of the
/// OnnxSharp package: inputs and outputs with symbolic dimensions, initializers from TorchSharp tensors (optionally
/// stored as Float16 and cast back to Float32 when the session loads, Optimum's "fp16 weights" trade of file size for
/// nothing in accuracy of the arithmetic), constants, and nodes whose outputs get unique names.
/// </summary>
internal sealed class OnnxGraph
{
    /// <summary>The opset every exported graph targets: 17 is the first with <c>LayerNormalization</c>.</summary>
    public const int Opset = 17;

    private readonly GraphProto _graph = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _constants = new(StringComparer.Ordinal);
    private readonly bool _float16Weights;
    private int _next;

    public OnnxGraph(string name, bool float16Weights)
    {
        _graph.Name = name;
        _float16Weights = float16Weights;
    }

    /// <summary>Declares a graph input of <paramref name="type"/> with dimensions given as symbolic names (string) or sizes (long).</summary>
    public string Input(string name, DataType type, params object[] dims)
    {
        _graph.Input.Add(ValueInfo(name, type, dims));
        _names.Add(name);
        return name;
    }

    /// <summary>Declares <paramref name="value"/> as a graph output named <paramref name="name"/> (an Identity node renames it).</summary>
    public void Output(string value, string name, DataType type, params object[] dims)
    {
        if (value != name)
        {
            _graph.Node.Add(new NodeProto { OpType = "Identity", Name = $"{name}/Identity", Input = { value }, Output = { name } });
            _names.Add(name);
        }

        _graph.Output.Add(ValueInfo(name, type, dims));
    }

    /// <summary>Adds <paramref name="tensor"/> (any floating dtype; written as Float32, or Float16 with a Cast when the graph stores fp16 weights) and returns the name of its Float32 value.</summary>
    public string Weight(string name, Tensor tensor, bool transpose = false)
    {
        using var scope = torch.NewDisposeScope();
        Tensor t = (transpose ? tensor.detach().t() : tensor.detach()).to(ScalarType.Float32).contiguous().cpu();
        if (!_float16Weights)
        {
            AddInitializer(name, DataType.Float, t.shape, t.data<float>().ToArray(), sizeof(float));
            return name;
        }

        AddInitializer(name, DataType.Float16, t.shape, t.to(ScalarType.Float16).data<Half>().ToArray(), 2);
        return Node("Cast", new[] { name }, name + "/to_float", ("to", (long)DataType.Float));
    }

    /// <summary>A constant Int64 tensor (1-D, or a scalar when <paramref name="scalar"/>), shared by every use of the same values.</summary>
    public string Int64s(long[] values, bool scalar = false)
    {
        string key = (scalar ? "s:" : "v:") + string.Join(",", values);
        if (_constants.TryGetValue(key, out string? known))
        {
            return known;
        }

        string name = Unique("const_i64");
        AddInitializer(name, DataType.Int64, scalar ? Array.Empty<long>() : new long[] { values.Length }, values, sizeof(long), reserved: true);
        _constants[key] = name;
        return name;
    }

    /// <summary>A constant Float32 scalar or 1-D tensor, shared by every use of the same values.</summary>
    public string Floats(float[] values, bool scalar = true, long[]? shape = null)
    {
        string key = "f:" + (scalar ? "s:" : string.Join("x", shape ?? new long[] { values.Length }) + ":") + string.Join(",", values.Select(v => BitConverter.SingleToInt32Bits(v)));
        if (_constants.TryGetValue(key, out string? known))
        {
            return known;
        }

        string name = Unique("const_f32");
        AddInitializer(name, DataType.Float, scalar ? Array.Empty<long>() : shape ?? new long[] { values.Length }, values, sizeof(float), reserved: true);
        _constants[key] = name;
        return name;
    }

    /// <summary>Adds a node with one output and returns its name (unique, derived from <paramref name="hint"/>).</summary>
    public string Node(string opType, string[] inputs, string hint, params (string Name, object Value)[] attributes) =>
        NodeN(opType, inputs, 1, hint, attributes)[0];

    /// <summary>Adds a node with <paramref name="outputs"/> outputs and returns their names.</summary>
    public string[] NodeN(string opType, string[] inputs, int outputs, string hint, params (string Name, object Value)[] attributes)
    {
        var node = new NodeProto { OpType = opType, Name = Unique(hint + "/" + opType) };
        node.Input.AddRange(inputs);
        string[] names = Enumerable.Range(0, outputs).Select(i => Unique(hint + (outputs == 1 ? string.Empty : "_" + i))).ToArray();
        node.Output.AddRange(names);
        foreach ((string name, object value) in attributes)
        {
            node.Attribute.Add(Attribute(name, value));
        }

        _graph.Node.Add(node);
        return names;
    }

    /// <summary>The finished model: IR version 8 (the IR of opset 17), producer ComposerSharp, the given metadata.</summary>
    public ModelProto ToModel(IReadOnlyDictionary<string, string> metadata)
    {
        var model = new ModelProto
        {
            IrVersion = 8,
            ProducerName = "ComposerSharp",
            ProducerVersion = typeof(OnnxGraph).Assembly.GetName().Version?.ToString() ?? "0",
            Graph = _graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = string.Empty, Version = Opset });
        foreach ((string key, string value) in metadata)
        {
            model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        }

        return model;
    }

    private void AddInitializer<T>(string name, DataType type, long[] shape, T[] values, int elementSize, bool reserved = false)
        where T : struct
    {
        if (!reserved && !_names.Add(name))
        {
            throw new InvalidOperationException($"Two ONNX values are named '{name}'.");
        }

        var proto = new TensorProto { Name = name, DataType = (int)type };
        proto.Dims.AddRange(shape);
        byte[] raw = new byte[values.Length * elementSize];
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).CopyTo(raw); // ONNX raw_data is little-endian, as x64 is
        proto.RawData = ByteString.CopyFrom(raw);
        _graph.Initializer.Add(proto);
    }

    private string Unique(string hint)
    {
        string name = hint;
        while (!_names.Add(name))
        {
            name = $"{hint}_{++_next}";
        }

        return name;
    }

    private static ValueInfoProto ValueInfo(string name, DataType type, object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (object dim in dims)
        {
            shape.Dim.Add(dim switch
            {
                string symbol => new TensorShapeProto.Types.Dimension { DimParam = symbol },
                long size => new TensorShapeProto.Types.Dimension { DimValue = size },
                int size => new TensorShapeProto.Types.Dimension { DimValue = size },
                _ => throw new ArgumentException($"An ONNX dimension is a name or a size; got {dim.GetType().Name}.", nameof(dims)),
            });
        }

        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }

    private static AttributeProto Attribute(string name, object value) => value switch
    {
        long i => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = i },
        int i => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = i },
        float f => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = f },
        double f => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = (float)f },
        long[] ints => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints, Ints = { ints } },
        string s => new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(s) },
        _ => throw new ArgumentException($"Unsupported ONNX attribute type {value.GetType().Name} for '{name}'.", nameof(value)),
    };
}
