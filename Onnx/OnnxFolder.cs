using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;

namespace ComposerSharp.Onnx;

/// <summary>
/// The <c>config.json</c> beside an exported <c>model.onnx</c>, as Optimum leaves one beside its exports: the model's
/// Hugging Face config (labels as <c>id2label</c>/<c>label2id</c>, <c>max_position_embeddings</c>) where the model has
/// a Hugging Face counterpart, else the same fields for our architecture; plus <c>composersharp_onnx</c> (task, opset,
/// weights' dtype, the verification's max |Δ|), which a consumer needs no TorchSharp to read.
/// </summary>
public static class OnnxFolder
{
    /// <summary>Writes <c>config.json</c> into <paramref name="folder"/> (replacing it) and returns its path.</summary>
    /// <param name="model">The exported model.</param>
    /// <param name="folder">The export folder (exists).</param>
    /// <param name="labels">Class names by index for classifiers; null otherwise.</param>
    /// <param name="result">What the export wrote.</param>
    /// <returns>The written file's path.</returns>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="IOException">The file cannot be written.</exception>
    public static string WriteConfig(TransformerModel model, string folder, IReadOnlyList<string>? labels, OnnxExportResult result)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(result);
        JsonObject config;
        try
        {
            config = HuggingFaceConfig.ToJson(model, labels);
        }
        catch (Exception ex) when (ex is NotSupportedException or InvalidOperationException)
        {
            // An algorithm-changed model (gated MLP, ALiBi) has no transformers class; the consumer's fields stay.
            TransformerConfig c = model.Config;
            config = new JsonObject
            {
                ["architectures"] = new JsonArray(model.GetType().Name),
                ["hidden_size"] = c.HiddenSize,
                ["num_attention_heads"] = c.NumHeads,
                ["num_hidden_layers"] = c.NumLayers,
                ["vocab_size"] = c.VocabSize,
                ["max_position_embeddings"] = c.MaxSequenceLength,
            };
            if (labels is { Count: > 0 })
            {
                var id2label = new JsonObject();
                var label2id = new JsonObject();
                for (int i = 0; i < labels.Count; i++)
                {
                    id2label[i.ToString(CultureInfo.InvariantCulture)] = labels[i];
                    label2id[labels[i]] = i;
                }

                config["id2label"] = id2label;
                config["label2id"] = label2id;
            }
        }

        config["composersharp_onnx"] = new JsonObject
        {
            ["task"] = OnnxExport.TaskName(result.Task),
            ["opset"] = OnnxGraph.Opset,
            ["weights_dtype"] = result.WeightsDtype,
            ["verified_by_onnxruntime"] = result.Verification is not null,
            ["max_abs_difference"] = result.Verification?.MaxAbsDifference,
        };
        string path = Path.Combine(folder, HuggingFaceConfig.FileName);
        File.WriteAllText(path, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return path;
    }
}
