using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace ComposerSharp.Models.HuggingFace;

/// <summary>Options of <see cref="HuggingFaceFormat.FromPretrained"/>.</summary>
public sealed record PretrainedOptions
{
    /// <summary>
    /// The model to build, when it differs from the folder's: e.g. <see cref="HuggingFaceArchitecture.BertForSequenceClassification"/>
    /// from a <c>BertForMaskedLM</c> folder (fine-tuning; the pooler and classifier start fresh). Null: the folder's class
    /// (<c>BertModel</c> and <c>BertForPreTraining</c> become <see cref="BertForMaskedLM"/>).
    /// </summary>
    public HuggingFaceArchitecture? Architecture { get; init; }

    /// <summary>Classifier head; by default NumLabels is the folder's <c>id2label</c> count (or 2) and Pooling the folder's <c>classifier_pooling</c> (first token unless <c>mean</c>).</summary>
    public SequenceClassificationOptions? Classification { get; init; }

    /// <summary>Changes to the folder's configuration before the model is built (e.g. dropout); null for none.</summary>
    public Func<TransformerConfig, TransformerConfig>? Configure { get; init; }

    /// <summary>
    /// Refuse tensors the model does not know (other than tied duplicates, old buffers and other BERT task heads) and
    /// missing tensors other than a new task head (true, default); false loads whatever matches and logs the rest.
    /// </summary>
    public bool Strict { get; init; } = true;
}

/// <summary>What loading a weight file did: Hugging Face tensor names loaded, missing (left as initialised) and unexpected (ignored).</summary>
/// <param name="File">The file read.</param>
/// <param name="Loaded">Names copied into the model.</param>
/// <param name="Missing">Names the model has but the file lacks; those weights keep their fresh initialisation.</param>
/// <param name="Unexpected">Names in the file the model does not use; ignored.</param>
public sealed record WeightLoadReport(string File, IReadOnlyList<string> Loaded, IReadOnlyList<string> Missing, IReadOnlyList<string> Unexpected)
{
    /// <summary>
    /// Logs, at Information, the weights <paramref name="file"/> lacked (<c>Missing from … (initialised fresh)</c>)
    /// and those it held that the model does not use (<c>Unexpected in … (ignored)</c>), each only when there are
    /// some, as Hugging Face's <c>from_pretrained</c> reports them. Used for Hugging Face folders and checkpoints alike.
    /// </summary>
    /// <param name="logger">Where to log.</param>
    /// <param name="file">The file read.</param>
    /// <param name="missing">Names the model has and the file lacks.</param>
    /// <param name="unexpected">Names the file has and the model does not use (or the load was told to ignore).</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static void LogDifferences(ILogger logger, string file, IReadOnlyCollection<string> missing, IReadOnlyCollection<string> unexpected)
    {
        ArgumentNullException.ThrowIfNull(logger);
        ArgumentNullException.ThrowIfNull(missing);
        ArgumentNullException.ThrowIfNull(unexpected);
        if (missing.Count > 0)
        {
            logger.LogInformation("Missing from {File} (initialised fresh): {Count} [{Keys}]", file, missing.Count, string.Join(", ", missing));
        }

        if (unexpected.Count > 0)
        {
            logger.LogInformation("Unexpected in {File} (ignored): {Count} [{Keys}]", file, unexpected.Count, string.Join(", ", unexpected));
        }
    }
}

/// <summary>A model read from a Hugging Face folder, with the folder's label names.</summary>
/// <param name="Model">The model, in train mode, weights loaded.</param>
/// <param name="Source">The folder's config.</param>
/// <param name="Labels">Class names in id order for a classifier (from <c>id2label</c>), else null.</param>
/// <param name="Report">What was loaded.</param>
public sealed record PretrainedModel(TransformerModel Model, HuggingFaceModelConfig Source, IReadOnlyList<string>? Labels, WeightLoadReport Report);

/// <summary>
/// The Hugging Face model-folder format, both ways: <c>model.safetensors</c> (tensor names, shapes and dtypes of
/// <c>transformers</c>' <c>BertForMaskedLM</c>, <c>BertForSequenceClassification</c> and <c>GPT2LMHeadModel</c>) and
/// <c>config.json</c> (<see cref="HuggingFaceConfig"/>). Reading also accepts <c>pytorch_model.bin</c> (a PyTorch
/// pickle, via TorchSharp.PyBridge). Export and import are exact: the same bits come back.
/// </summary>
public static class HuggingFaceFormat
{
    /// <summary>The weight file name Hugging Face writes.</summary>
    public const string WeightsFileName = "model.safetensors";

    /// <summary>The legacy pickle weight file name.</summary>
    public const string PickleWeightsFileName = "pytorch_model.bin";

    /// <summary>Writes <paramref name="model"/> to <paramref name="folder"/> (created if needed) as <c>model.safetensors</c> and <c>config.json</c>.</summary>
    /// <param name="model">The model; its weights are copied to CPU as stored (Float32 unless changed).</param>
    /// <param name="folder">Destination folder; existing files of the same names are replaced.</param>
    /// <param name="labels">Class names of a classifier in id order; null for LABEL_i.</param>
    /// <returns>The paths written.</returns>
    /// <exception cref="NotSupportedException">The model has no Hugging Face equivalent (see <see cref="HuggingFaceConfig.ToJson"/>).</exception>
    /// <exception cref="InvalidOperationException">The model's state dict has a tensor the map does not cover (a module surgery that renamed weights).</exception>
    public static IReadOnlyList<string> Save(TransformerModel model, string folder, IReadOnlyList<string>? labels = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(folder);
        System.Text.Json.Nodes.JsonObject config = HuggingFaceConfig.ToJson(model, labels);
        (HuggingFaceArchitecture architecture, IReadOnlyList<WeightEntry> map) = MapOf(model);
        Directory.CreateDirectory(folder);
        using var scope = torch.NewDisposeScope();
        Dictionary<string, Tensor> ours = model.state_dict();
        IEnumerable<string> unmapped = ours.Keys.Except(map.Select(e => e.Ours));
        if (unmapped.Any())
        {
            throw new InvalidOperationException($"{model.GetType().Name} has weights with no {architecture} name: [{string.Join(", ", unmapped)}].");
        }

        var tensors = new List<KeyValuePair<string, Tensor>>(map.Count);
        foreach (WeightEntry e in map)
        {
            Tensor t = ours[e.Ours].detach();
            Tensor hf = e.Transform switch
            {
                WeightTransform.Copy => t,
                WeightTransform.Transpose => t.t(),
                _ => t.narrow(0, e.Part * (t.shape[0] / e.Parts), t.shape[0] / e.Parts),
            };
            tensors.Add(new(e.HuggingFace, hf.contiguous()));
        }

        string weights = Path.Combine(folder, WeightsFileName);
        string configPath = Path.Combine(folder, HuggingFaceConfig.FileName);
        SafetensorsWriter.Write(weights, tensors);
        File.WriteAllText(configPath, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        return new[] { weights, configPath };
    }

    /// <summary>
    /// Builds a model from a Hugging Face folder (<c>config.json</c> plus <c>model.safetensors</c> or
    /// <c>pytorch_model.bin</c>) and loads its weights, as <c>transformers</c>' <c>from_pretrained</c>. Logs the counts
    /// of tensors loaded, missing (initialised fresh) and unexpected (ignored), the names of the missing and unexpected
    /// ones, and the loaded names only at Debug.
    /// </summary>
    /// <exception cref="FileNotFoundException">No config.json, or no weight file; the message names the folder.</exception>
    /// <exception cref="InvalidDataException">A config field or a tensor is wrong (name, shape or dtype); the message names the file and key.</exception>
    public static PretrainedModel FromPretrained(string folder, PretrainedOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(folder);
        options ??= new PretrainedOptions();
        HuggingFaceModelConfig source = HuggingFaceConfig.Read(folder);
        HuggingFaceArchitecture target = options.Architecture ?? source.Architecture switch
        {
            HuggingFaceArchitecture.BertModel or HuggingFaceArchitecture.BertForPreTraining => HuggingFaceArchitecture.BertForMaskedLM,
            HuggingFaceArchitecture a => a,
        };
        bool sourceIsGpt = source.Architecture == HuggingFaceArchitecture.Gpt2LMHeadModel;
        if (sourceIsGpt != (target == HuggingFaceArchitecture.Gpt2LMHeadModel) || target is HuggingFaceArchitecture.BertModel or HuggingFaceArchitecture.BertForPreTraining)
        {
            throw new InvalidDataException($"'{Path.Combine(folder, HuggingFaceConfig.FileName)}' holds a {source.Architecture}, which cannot be loaded as a {target}.");
        }

        TransformerConfig config = options.Configure?.Invoke(source.Config) ?? source.Config;
        IReadOnlyList<string>? labels = null;
        TransformerModel model;
        switch (target)
        {
            case HuggingFaceArchitecture.Gpt2LMHeadModel:
                model = new GptForCausalLM(config);
                break;
            case HuggingFaceArchitecture.BertForMaskedLM:
                model = new BertForMaskedLM(config);
                break;
            default:
                IReadOnlyList<string>? folderLabels = source.IsClassifier ? source.Labels : null;
                var head = options.Classification ?? new SequenceClassificationOptions { NumLabels = folderLabels?.Count ?? 2, Pooling = target == HuggingFaceArchitecture.BertForMeanPooledSequenceClassification ? SequencePooling.Mean : source.Pooling };
                model = new BertForSequenceClassification(config, head);
                labels = folderLabels is not null && folderLabels.Count == head.NumLabels ? folderLabels : null;
                break;
        }

        WeightLoadReport report = LoadWeights(model, folder, source.Architecture, options.Strict, logger, ShapeSource(source.Config, config));
        return new PretrainedModel(model, source, labels, report);
    }

    /// <summary>
    /// Loads the weights of a Hugging Face folder (or a single <c>.safetensors</c>/<c>.bin</c> file) into
    /// <paramref name="model"/>, whose architecture must match. See <see cref="FromPretrained"/>.
    /// </summary>
    /// <param name="model">The model to fill.</param>
    /// <param name="path">A folder with model.safetensors or pytorch_model.bin, or such a file.</param>
    /// <param name="source">The class the file was saved from (decides which missing head tensors may start fresh).</param>
    /// <param name="strict">See <see cref="PretrainedOptions.Strict"/>.</param>
    /// <param name="logger">
    /// Receives, at Information, the counts of loaded, missing and unexpected tensors and the names of the missing and
    /// unexpected ones (see <see cref="WeightLoadReport.LogDifferences"/>); the loaded names only at Debug.
    /// </param>
    /// <exception cref="FileNotFoundException">No weight file.</exception>
    /// <exception cref="InvalidDataException">A tensor of the wrong shape or a non-floating dtype, an unknown name (strict), or missing weights (strict); the message names the file and key.</exception>
    public static WeightLoadReport LoadWeights(TransformerModel model, string path, HuggingFaceArchitecture source, bool strict = true, ILogger? logger = null) =>
        LoadWeights(model, path, source, strict, logger, "from the model's configuration");

    /// <summary>
    /// Where the sizes of a model built from <paramref name="folderConfig"/> came from, for shape errors:
    /// config.json, or config.json with the fields <c>PretrainedOptions.Configure</c> changed, each with both values.
    /// </summary>
    private static string ShapeSource(TransformerConfig folderConfig, TransformerConfig used)
    {
        string[] changed = typeof(TransformerConfig).GetProperties()
            .Where(p => p.CanRead && !Equals(p.GetValue(folderConfig), p.GetValue(used)))
            .Select(p => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{p.Name} {p.GetValue(used)} instead of config.json's {p.GetValue(folderConfig)}"))
            .ToArray();
        return changed.Length == 0
            ? "from config.json"
            : $"from config.json with changes made when the model was configured: {string.Join(", ", changed)}";
    }

    private static WeightLoadReport LoadWeights(TransformerModel model, string path, HuggingFaceArchitecture source, bool strict, ILogger? logger, string shapeSource)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(path);
        logger ??= NullLogger.Instance;
        (HuggingFaceArchitecture target, IReadOnlyList<WeightEntry> map) = MapOf(model);
        bool gpt2 = target == HuggingFaceArchitecture.Gpt2LMHeadModel;
        string file = WeightFile(path);
        using var scope = torch.NewDisposeScope();
        Dictionary<string, Tensor> raw = ReadTensors(file);
        var tensors = new Dictionary<string, (string Original, Tensor Tensor)>();
        foreach ((string name, Tensor t) in raw)
        {
            tensors[WeightMap.Canonical(name, gpt2)] = (name, t);
        }

        // Older BERT files hold the MLM output bias as the (tied) decoder bias only.
        if (!tensors.ContainsKey("cls.predictions.bias") && tensors.Remove("cls.predictions.decoder.bias", out var decoderBias))
        {
            tensors["cls.predictions.bias"] = decoderBias;
        }

        Dictionary<string, Tensor> ours = model.state_dict();
        var loaded = new List<string>();
        var missing = new List<string>();
        var plan = new List<(WeightEntry Entry, Tensor Source)>();
        foreach (WeightEntry e in map)
        {
            Tensor target_ = ours[e.Ours];
            if (!tensors.TryGetValue(e.HuggingFace, out var found))
            {
                missing.Add(e.HuggingFace);
                continue;
            }

            long[] expected = e.Transform switch
            {
                WeightTransform.Copy => target_.shape,
                WeightTransform.Transpose => target_.shape.Reverse().ToArray(),
                _ => target_.shape.Select((d, i) => i == 0 ? d / e.Parts : d).ToArray(),
            };
            Tensor t = found.Tensor;
            if (!t.is_floating_point())
            {
                throw new InvalidDataException($"'{file}': tensor '{found.Original}' is {t.dtype}; expected a floating-point dtype (F32, F16, BF16 or F64) for {target_.dtype} weights.");
            }

            if (!t.shape.SequenceEqual(expected))
            {
                throw new InvalidDataException($"'{file}': tensor '{found.Original}' has shape [{string.Join(", ", t.shape)}]; the model expects [{string.Join(", ", expected)}] ({shapeSource}).");
            }

            plan.Add((e, t));
        }

        var mapped = new HashSet<string>(map.Select(e => e.HuggingFace));
        List<string> unexpected = tensors.Keys.Where(k => !mapped.Contains(k)).Select(k => tensors[k].Original).ToList();
        if (strict)
        {
            List<string> unknown = tensors.Keys.Where(k => !mapped.Contains(k) && !WeightMap.IsKnownExtra(k, target)).Select(k => tensors[k].Original).ToList();
            if (unknown.Count > 0)
            {
                throw new InvalidDataException($"'{file}' holds tensors a {target} does not have: [{string.Join(", ", unknown)}]. Load non-strictly to ignore them.");
            }

            List<string> absent = missing.Where(n => !WeightMap.MayStartFresh(n, source, target)).ToList();
            if (absent.Count > 0)
            {
                throw new InvalidDataException($"'{file}' lacks tensors of a {target}: [{string.Join(", ", absent)}]. Load non-strictly to keep them freshly initialised.");
            }
        }

        using (torch.no_grad())
        {
            foreach ((WeightEntry e, Tensor t) in plan)
            {
                Tensor dest = ours[e.Ours];
                Tensor value = t.to(dest.dtype, dest.device);
                switch (e.Transform)
                {
                    case WeightTransform.Copy:
                        dest.copy_(value);
                        break;
                    case WeightTransform.Transpose:
                        dest.copy_(value.t());
                        break;
                    default:
                        long rows = dest.shape[0] / e.Parts;
                        dest.narrow(0, e.Part * rows, rows).copy_(value);
                        break;
                }

                loaded.Add(e.HuggingFace);
            }
        }

        // The names of a complete load (about a hundred for a small BERT) only at Debug; the missing and unexpected
        // names, which a user must see, follow at Information.
        logger.LogInformation("Loaded {Count} tensors from {File} ({Missing} missing, {Unexpected} unexpected)", loaded.Count, file, missing.Count, unexpected.Count);
        logger.LogDebug("Tensors loaded from {File}: [{Keys}]", file, string.Join(", ", loaded));
        WeightLoadReport.LogDifferences(logger, file, missing, unexpected);
        return new WeightLoadReport(file, loaded, missing, unexpected);
    }

    /// <summary>The architecture of <paramref name="model"/> and its weight map.</summary>
    private static (HuggingFaceArchitecture, IReadOnlyList<WeightEntry>) MapOf(TransformerModel model)
    {
        int layers = model.Config.NumLayers;
        bool types = model.Backbone.TypeVocabSize > 0;
        return model switch
        {
            GptForCausalLM => (HuggingFaceArchitecture.Gpt2LMHeadModel, WeightMap.Gpt2(layers)),
            BertForMaskedLM => (HuggingFaceArchitecture.BertForMaskedLM, WeightMap.Bert(layers, types, HuggingFaceArchitecture.BertForMaskedLM)),
            BertForSequenceClassification { Options.Pooling: SequencePooling.Mean } => (HuggingFaceArchitecture.BertForMeanPooledSequenceClassification, WeightMap.Bert(layers, types, HuggingFaceArchitecture.BertForMeanPooledSequenceClassification)),
            BertForSequenceClassification => (HuggingFaceArchitecture.BertForSequenceClassification, WeightMap.Bert(layers, types, HuggingFaceArchitecture.BertForSequenceClassification)),
            _ => throw new NotSupportedException($"{model.GetType().Name} has no Hugging Face counterpart; expected BertForMaskedLM, BertForSequenceClassification or GptForCausalLM."),
        };
    }

    private static string WeightFile(string path)
    {
        if (File.Exists(path))
        {
            return path;
        }

        foreach (string name in new[] { WeightsFileName, PickleWeightsFileName })
        {
            string candidate = Path.Combine(path, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new FileNotFoundException($"'{Path.GetFullPath(path)}' has neither {WeightsFileName} nor {PickleWeightsFileName} (sharded checkpoints are not supported).", Path.Combine(path, WeightsFileName));
    }

    private static Dictionary<string, Tensor> ReadTensors(string file)
    {
        try
        {
            if (file.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) || file.EndsWith(".pt", StringComparison.OrdinalIgnoreCase))
            {
                var pickled = PyTorchUnpickler.UnpickleStateDict(file);
                return pickled.Keys.Cast<object>().ToDictionary(k => (string)k, k => (Tensor)pickled[k]!);
            }

            return Safetensors.LoadStateDict(file);
        }
        catch (Exception ex) when (ex is not FileNotFoundException and not OutOfMemoryException)
        {
            throw new InvalidDataException($"'{file}' is not a readable {(file.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) ? "PyTorch state dict" : "safetensors file")}: {ex.Message}", ex);
        }
    }
}
