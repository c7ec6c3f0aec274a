using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Onnx;

/// <summary>
/// What every model-to-ONNX writer shares: the model's parameters written once each as initializers (by their
/// state_dict names, transposed copies for MatMul), the check that every parameter was consumed, Linear layers, the
/// length of a dynamic axis, child modules by name, and scaled dot-product attention over [B, heads, T, d] values.
/// </summary>
internal abstract class OnnxModuleWriter
{
    private readonly string _modelName;
    private readonly Dictionary<string, Tensor> _parameters;
    private readonly HashSet<string> _consumed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _written = new(StringComparer.Ordinal);

    protected OnnxModuleWriter(nn.Module model, OnnxGraph graph)
    {
        _modelName = model.GetType().Name;
        G = graph;
        _parameters = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);
    }

    protected OnnxGraph G { get; }

    /// <summary>Refuses the export when a parameter was never written: the graph would compute something else.</summary>
    protected void ThrowIfParametersUnused()
    {
        string[] unused = _parameters.Keys.Where(k => !_consumed.Contains(k)).Order(StringComparer.Ordinal).ToArray();
        if (unused.Length > 0)
        {
            throw new NotSupportedException(
                $"{_modelName} has parameters the ONNX exporter does not know how to compute with: [{string.Join(", ", unused.Take(8))}{(unused.Length > 8 ? ", …" : string.Empty)}]; nothing was written.");
        }
    }

    /// <summary>Marks a parameter as deliberately unused by the computation (it is not written).</summary>
    protected void Skip(string name) => _consumed.Add(name);

    protected bool HasParameter(string name) => _parameters.ContainsKey(name);

    /// <summary>The parameter's initializer (written on first use; <paramref name="transpose"/> for a MatMul's [in, out] layout).</summary>
    protected string Param(string name, bool transpose = false)
    {
        string key = name + (transpose ? "^T" : string.Empty);
        if (_written.TryGetValue(key, out string? known))
        {
            return known;
        }

        if (!_parameters.TryGetValue(name, out Tensor? tensor))
        {
            throw new NotSupportedException($"{_modelName} has no parameter '{name}' where the ONNX exporter expects one; nothing was written.");
        }

        _consumed.Add(name);
        string value = G.Weight(transpose ? name + ".T" : name, tensor, transpose);
        _written[key] = value;
        return value;
    }

    /// <summary>x · Wᵀ (+ b) for the Linear at <paramref name="prefix"/>.</summary>
    protected string Linear(string prefix, string x)
    {
        string y = G.Node("MatMul", new[] { x, Param(prefix + ".weight", transpose: true) }, prefix + "/matmul");
        return HasParameter(prefix + ".bias") ? G.Node("Add", new[] { y, Param(prefix + ".bias") }, prefix + "/add") : y;
    }

    /// <summary>The length of axis <paramref name="axis"/> of <paramref name="value"/> as an Int64 scalar.</summary>
    protected string Dim(string value, long axis, string hint) =>
        G.Node("Gather", new[] { G.Node("Shape", new[] { value }, hint + "_shape"), G.Int64s(new[] { axis }, scalar: true) }, hint, ("axis", 0L));

    /// <summary>
    /// softmax(q·kᵀ/√d + mask)·v over q [B, heads, T, d] and k, v [B, heads, S, d], merged back to [B, T, width].
    /// </summary>
    protected string Attend(string prefix, string q, string k, string v, string mask, int headDim, long width)
    {
        string scores = G.Node("MatMul", new[] { q, G.Node("Transpose", new[] { k }, prefix + "/k_t", ("perm", new long[] { 0, 1, 3, 2 })) }, prefix + "/scores");
        scores = G.Node("Mul", new[] { scores, G.Floats(new[] { (float)(1.0 / Math.Sqrt(headDim)) }) }, prefix + "/scaled");
        string probabilities = G.Node("Softmax", new[] { G.Node("Add", new[] { scores, mask }, prefix + "/masked") }, prefix + "/probs", ("axis", -1L));
        string context = G.Node("MatMul", new[] { probabilities, v }, prefix + "/context");
        return G.Node("Reshape", new[] { G.Node("Transpose", new[] { context }, prefix + "/context_t", ("perm", new long[] { 0, 2, 1, 3 })), G.Int64s(new long[] { 0, 0, width }) }, prefix + "/merged");
    }

    protected static nn.Module Child(nn.Module parent, string name) =>
        parent.named_children().FirstOrDefault(c => c.name == name).module
            ?? throw new NotSupportedException($"{parent.GetType().Name} has no module '{name}' where the ONNX exporter expects one.");
}
