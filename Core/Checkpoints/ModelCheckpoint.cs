using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core.Checkpoints;

/// <summary>
/// A checkpoint opened once for what a model needs: its metadata, precision, required-on-load algorithms and weights.
/// Opening checks the header and the model weights' SHA-256 (not the optimizer or other state, as for a weights-only
/// load), so a reader that asks for several of these pays for the check once; <see cref="CheckpointFile"/>'s
/// path-based readers each open the file anew.
/// </summary>
public sealed class ModelCheckpoint : IDisposable
{
    private readonly CheckpointReader _reader;

    private ModelCheckpoint(CheckpointReader reader) => _reader = reader;

    /// <summary>Opens the checkpoint at <paramref name="path"/> (a checkpoint or latest pointer) and checks its header and model weights.</summary>
    /// <exception cref="CheckpointException">The file is missing, not a ComposerSharp checkpoint, or its header or model weights are damaged.</exception>
    public static ModelCheckpoint Open(string path) => new(CheckpointFile.Open(path, weightsOnly: true));

    /// <summary>The checkpoint file read (a latest pointer resolved).</summary>
    public string Path => _reader.Path;

    /// <summary>The string metadata: library versions, <c>model_type</c>, and whatever the writer added (the Trainer: the model's description).</summary>
    public IReadOnlyDictionary<string, string> Metadata => _reader.Header.Metadata;

    /// <summary>
    /// The precision the checkpoint was trained and evaluated under: <c>fp32</c>, <c>amp_bf16</c> or <c>amp_fp16</c>
    /// (a header without the field reads as <c>fp32</c>; Composer's <c>export_for_inference</c> keeps the trained
    /// precision the same way).
    /// </summary>
    /// <exception cref="CheckpointException">The recorded precision is not one of the three names; the message names the file and the value.</exception>
    public Precision Precision
    {
        get
        {
            string recorded = _reader.Header.Precision;
            try
            {
                return PrecisionExtensions.Parse(recorded);
            }
            catch (FormatException ex)
            {
                throw new CheckpointException(Path, $"Checkpoint '{Path}' records precision '{recorded}'; expected fp32, amp_bf16 or amp_fp16.", ex);
            }
        }
    }

    /// <summary>
    /// The required-on-load algorithms recorded (those whose surgery changes the model's weights or their names, e.g.
    /// LowPrecisionLayerNorm, ALiBi, gated linear units), in the order they were applied; empty when none. A reader
    /// re-creates and applies them at Init before loading the weights, as Composer's <c>_apply_required_algorithms</c>.
    /// </summary>
    public IReadOnlyList<AlgorithmDescription> RequiredAlgorithms =>
        _reader.Header.Algorithms.Where(a => a.RequiredOnLoad).Select(a => a.ToDescription()).ToArray();

    /// <summary>
    /// Copies the model weights into <paramref name="model"/>'s tensors of the same names, strictly: every weight of the
    /// model must be in the checkpoint and every weight of the checkpoint in the model, with the same dtype and shape
    /// (PyTorch's <c>load_state_dict(strict=True)</c>). Values are copied under no_grad, onto the model's device.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="CheckpointException">A weight's dtype or shape differs, or names are missing or unexpected (the message lists them).</exception>
    public void LoadWeights(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        Dictionary<string, Tensor> target = model.state_dict();
        var seen = new HashSet<string>();
        var unexpected = new List<string>();
        _reader.Read(CheckpointFile.ModelEntry, r => CheckpointFile.ReadTensors(r, (name, loaded) =>
        {
            if (target.TryGetValue(name, out Tensor? t))
            {
                CheckpointFile.CopyWeight(Path, name, t, loaded);
                seen.Add(name);
            }
            else
            {
                unexpected.Add(name);
            }
        }));
        string[] missing = target.Keys.Where(k => !seen.Contains(k)).ToArray();
        if (missing.Length > 0 || unexpected.Count > 0)
        {
            throw new CheckpointException(Path,
                $"Checkpoint '{Path}' does not match the model's weights (missing from the checkpoint: [{string.Join(", ", missing)}]; not in the model: [{string.Join(", ", unexpected)}]).");
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _reader.Dispose();
}
