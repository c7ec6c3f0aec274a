using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Models;
using ComposerSharp.Models.Decoders;
using Google.Protobuf;
using TorchSharp;

namespace ComposerSharp.Onnx;

/// <summary>Options of <see cref="OnnxExport.Export"/>.</summary>
public sealed record OnnxExportOptions
{
    /// <summary>
    /// Store the weights as Float16 (half the file) with a Cast to Float32 in the graph, so the arithmetic stays Float32
    /// and only the weights are rounded (Optimum's <c>--dtype fp16</c> halves the file too, but also computes in fp16,
    /// which ONNX Runtime's CPU provider mostly lacks). Default false: Float32 weights.
    /// </summary>
    public bool Float16Weights { get; init; }

    /// <summary>Run the written file through ONNX Runtime beside the model and refuse it when they differ (default true).</summary>
    public bool Verify { get; init; } = true;

    /// <summary>
    /// The largest accepted max |Δ| between ONNX Runtime's and our Float32 outputs in verification; default 1e-4 for
    /// Float32 weights, and 1e-2 × max(1, max |output|) for Float16 weights (the weights' own rounding, ~5e-4 relative,
    /// summed over a layer's inputs).
    /// </summary>
    public double? Tolerance { get; init; }

    /// <summary>The seed of the random verification inputs (default 0).</summary>
    public long VerificationSeed { get; init; }
}

/// <summary>What <see cref="OnnxExport.Export"/> wrote.</summary>
/// <param name="Path">The ONNX file.</param>
/// <param name="Task">What the graph computes (Optimum's task).</param>
/// <param name="Bytes">The file's size in bytes.</param>
/// <param name="Verification">ONNX Runtime's comparison with the model, or null when verification was off.</param>
/// <param name="WeightsDtype">The stored weights' dtype: <c>float32</c> or <c>float16</c>.</param>
public sealed record OnnxExportResult(string Path, OnnxTask Task, long Bytes, OnnxVerification? Verification, string WeightsDtype);

/// <summary>
/// Exports our transformer models to ONNX (opset 17) for ONNX Runtime, with Optimum's input and output names:
/// <list type="bullet">
/// <item><c>input_ids</c> Int64 [batch_size, sequence_length], <c>attention_mask</c> Int64 (1 = token, 0 = padding;
/// [batch_size, past_sequence_length + sequence_length] for decoders), <c>token_type_ids</c> Int64 [batch_size,
/// sequence_length] where the model has token types (BERT).</item>
/// <item>Decoders (GPT-2, <c>text-generation-with-past</c>): <c>past_key_values.N.key</c> / <c>.value</c> Float32
/// [batch_size, num_heads, past_sequence_length, head_dim] in, <c>present.N.key</c> / <c>.value</c> Float32 [batch_size,
/// num_heads, past_sequence_length + sequence_length, head_dim] out, so generation feeds one position per token (the
/// first call passes past_sequence_length 0). Positions are absolute, counted from the first cached position, as
/// our model counts them (right padding).</item>
/// <item><c>logits</c> Float32: [batch_size, sequence_length, vocab] for fill-mask and causal LM, [batch_size,
/// num_labels] for classification.</item>
/// </list>
/// The graph is the model's evaluation-mode computation written from its modules: LowPrecisionLayerNorm's LPLayerNorm
/// as the Float32 LayerNormalization it computes outside autocast, GatedLinearUnits' gated MLP, ALiBi's attention
/// biases, StochasticDepth's evaluation scale. LlamaForCausalLM exports as a decoder with past whose cache holds the
/// key/value heads only ([batch_size, num_key_value_heads, …]), RMSNorm (and LowPrecisionRMSNorm) in Float32 and rotary
/// tables for positions below max_position_embeddings. Idea: Composer's <c>export_for_inference(save_format='onnx')</c>
/// (composer/utils/inference.py) and Optimum's ONNX configs (optimum/exporters/onnx/model_configs.py).
/// </summary>
public static class OnnxExport
{
    /// <summary>The file name Optimum gives the exported model in a folder.</summary>
    public const string ModelFileName = "model.onnx";

    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/> as ONNX and, unless <see cref="OnnxExportOptions.Verify"/>
    /// is off, checks it with ONNX Runtime first: the file is written under a temporary name beside the target and
    /// renamed only once it passes, so a failed export leaves nothing at <paramref name="path"/>.
    /// </summary>
    /// <param name="model">A BertForMaskedLM, BertForSequenceClassification, GptForCausalLM or LlamaForCausalLM on the CPU (put in eval mode while exporting, restored afterwards).</param>
    /// <param name="path">The .onnx file to write (replaced if present).</param>
    /// <param name="options">Weights' dtype, verification; defaults when null.</param>
    /// <returns>What was written, with the verification's max |Δ|.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> or <paramref name="path"/> is null.</exception>
    /// <exception cref="NotSupportedException">The model, one of its modules or parameters cannot be exported (named in the message).</exception>
    /// <exception cref="OnnxVerificationException">ONNX Runtime's outputs differ from the model's by more than the tolerance.</exception>
    /// <exception cref="IOException">The file cannot be written.</exception>
    /// <exception cref="UnauthorizedAccessException">The folder is not writable.</exception>
    public static OnnxExportResult Export(ComposerModel model, string path, OnnxExportOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= new OnnxExportOptions();
        bool wasTraining = model.training;
        model.eval();
        string full = System.IO.Path.GetFullPath(path);
        string temporary = full + $".tmp-{Environment.ProcessId}";
        try
        {
            OnnxGraph graph;
            OnnxTask task;
            using (torch.no_grad())
            {
                switch (model)
                {
                    case LlamaForCausalLM llama:
                        graph = LlamaOnnxWriter.Write(llama, options.Float16Weights);
                        task = OnnxTask.TextGenerationWithPast;
                        break;
                    case TransformerModel transformer:
                        graph = TransformerOnnxWriter.Write(transformer, options.Float16Weights, out task);
                        break;
                    default:
                        throw new NotSupportedException($"{model.GetType().Name} cannot be exported to ONNX; expected BertForMaskedLM, BertForSequenceClassification, GptForCausalLM or LlamaForCausalLM.");
                }
            }

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
            {
                ["task"] = TaskName(task),
                ["architecture"] = model.GetType().Name,
                ["weights_dtype"] = options.Float16Weights ? "float16" : "float32",
            };
            string? folder = System.IO.Path.GetDirectoryName(full);
            if (!string.IsNullOrEmpty(folder))
            {
                Directory.CreateDirectory(folder);
            }

            using (FileStream stream = File.Create(temporary))
            {
                graph.ToModel(metadata).WriteTo(stream);
            }

            OnnxVerification? verification = null;
            if (options.Verify)
            {
                verification = OnnxVerifier.Verify(model, temporary, task, options.VerificationSeed);
                double tolerance = options.Tolerance ?? (options.Float16Weights ? 1e-2 * Math.Max(1.0, verification.MaxAbsReference) : 1e-4);
                if (!(verification.MaxAbsDifference <= tolerance))
                {
                    throw new OnnxVerificationException(
                        string.Create(CultureInfo.InvariantCulture, $"ONNX Runtime's outputs of '{full}' differ from the model's by max |Δ| {verification.MaxAbsDifference:G3} (largest at {verification.WorstOutput}); the tolerance is {tolerance:G3}. Nothing was written."),
                        verification);
                }
            }

            File.Move(temporary, full, overwrite: true);
            return new OnnxExportResult(full, task, new FileInfo(full).Length, verification, metadata["weights_dtype"]);
        }
        finally
        {
            if (File.Exists(temporary))
            {
                File.Delete(temporary);
            }

            model.train(wasTraining);
        }
    }

    /// <summary>
    /// Composer's <c>export_for_inference(save_format='onnx', save_path=…)</c>: writes <paramref name="saveFolder"/>/
    /// <c>model.onnx</c> (verified as <see cref="Export"/> does) and, for BERT and GPT models, the <c>config.json</c>
    /// a consumer reads (labels, max length, task; see <see cref="OnnxFolder"/>). Tokenizer files are the caller's
    /// (the CLI's <c>export --format onnx</c> adds them from the checkpoint).
    /// </summary>
    /// <param name="model">The model (see <see cref="Export"/>).</param>
    /// <param name="saveFolder">The folder to write into (created).</param>
    /// <param name="options">Weights' dtype, verification; defaults when null.</param>
    /// <param name="labels">Class names by index for classifiers; null otherwise.</param>
    /// <returns>What was written.</returns>
    /// <exception cref="NotSupportedException">The model cannot be exported (named).</exception>
    /// <exception cref="OnnxVerificationException">ONNX Runtime disagrees with the model beyond the tolerance (nothing is left).</exception>
    /// <exception cref="IOException">The folder cannot be written.</exception>
    public static OnnxExportResult ExportForInference(ComposerModel model, string saveFolder, OnnxExportOptions? options = null, IReadOnlyList<string>? labels = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(saveFolder);
        OnnxExportResult result = Export(model, System.IO.Path.Combine(saveFolder, ModelFileName), options);
        if (model is TransformerModel transformer)
        {
            OnnxFolder.WriteConfig(transformer, saveFolder, labels, result);
        }

        return result;
    }

    /// <summary>Optimum's name of <paramref name="task"/> (<c>fill-mask</c>, <c>text-classification</c>, <c>text-generation-with-past</c>).</summary>
    /// <param name="task">The task.</param>
    /// <returns>The name.</returns>
    public static string TaskName(OnnxTask task) => task switch
    {
        OnnxTask.FillMask => "fill-mask",
        OnnxTask.TextClassification => "text-classification",
        _ => "text-generation-with-past",
    };
}

/// <summary>An exported ONNX file whose ONNX Runtime outputs differ from the model's beyond the tolerance (the file was removed).</summary>
public sealed class OnnxVerificationException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What differed, by how much, and the tolerance.</param>
    /// <param name="verification">The comparison.</param>
    public OnnxVerificationException(string message, OnnxVerification verification)
        : base(message) => Verification = verification;

    /// <summary>The comparison that failed.</summary>
    public OnnxVerification Verification { get; }
}
