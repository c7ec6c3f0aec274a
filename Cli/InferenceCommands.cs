using System.CommandLine;
using System.Globalization;
using System.Numerics;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Core;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Onnx;

namespace ComposerSharp.Cli;

/// <summary>
/// The commands that use a trained model from its (self-describing) checkpoint alone: <c>predict</c>
/// (classification labels and probabilities, or MLM fills), <c>generate</c> (GPT text) and <c>export</c> (Hugging Face folder).
/// </summary>
internal static class InferenceCommands
{
    /// <summary>Inputs per progress line on stderr.</summary>
    private const int ProgressEvery = 256;

    /// <summary>
    /// JSON lines as people read them: <c>'</c>, <c>+</c>, <c>&lt;</c>, <c>&gt;</c>, <c>&amp;</c> and non-ASCII text stay
    /// as they are (System.Text.Json's default escapes them for HTML); quotes, backslashes and control characters are
    /// still escaped, so every line stays valid JSON. The output is a data file, never embedded in HTML.
    /// </summary>
    private static readonly JsonSerializerOptions JsonLines = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Hugging Face model and tokenizer files that <c>export</c> writes or that would go stale beside its files; <c>--overwrite true</c> replaces these and keeps every other file.</summary>
    private static readonly string[] ExportFileNames =
    {
        HuggingFaceFormat.WeightsFileName, HuggingFaceFormat.PickleWeightsFileName, HuggingFaceConfig.FileName, OnnxExport.ModelFileName,
        "vocab.json", "merges.txt", BertWordPieceTokenizer.VocabFileName, BertWordPieceTokenizer.ConfigFileName,
        BertWordPieceTokenizer.SpecialTokensFileName, "tokenizer.json", "added_tokens.json",
    };

    public static Command Predict(TextWriter? output)
    {
        var load = LoadPath();
        var input = new Option<string>("--input") { Description = "Inputs: a .jsonl file (objects with a \"text\" field; a \"label\" field is scored) or a .txt file (one text per line).", Required = true };
        var outputFile = new Option<string?>("--output") { Description = "Write one JSON line per input here (default: stdout)." };
        var batchSize = Number("--batch-size", "Inputs per forward pass.", 32, NumberStyles.Integer, "a whole number of at least 1, e.g. 32");
        var topK = Number("--top-k", "MLM: candidates per [MASK] position.", 5, NumberStyles.Integer, "a whole number of at least 1, e.g. 5");
        var tokenizerOption = new Option<string?>("--tokenizer") { Description = "Read the text with this tokenizer instead of the checkpoint's: gpt2, or a BERT folder (vocab.txt, tokenizer_config.json) or vocab.txt; needed for a checkpoint trained on token ids alone (synthetic data)." };
        var precision = PrecisionOption();
        var maxLength = new Option<int?>("--max-length")
        {
            Description = "Maximum tokens per input, special ids included (default: the max_length of the data the checkpoint was trained and evaluated with, else the model's max_sequence_length). Classification keeps each text's first tokens; MLM refuses longer texts.",
            CustomParser = result =>
            {
                string text = result.Tokens.Count == 0 ? string.Empty : result.Tokens[^1].Value;
                if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= 1)
                {
                    return value;
                }

                result.AddError($"--max-length is '{text}'; expected a whole number of at least 1, e.g. 256.");
                return null;
            },
        };
        var command = new Command("predict", "Classify texts (bert_classification) or fill [MASK] positions (bert_mlm) with a checkpoint, computing as its evaluation did (its precision, algorithms and data max_length).") { load, input, outputFile, batchSize, topK, tokenizerOption, precision, maxLength };
        command.SetAction(parse => Guard("predict", () =>
        {
            string path = parse.GetValue(load)!;
            foreach ((Option<int> option, int value) in new[] { (batchSize, parse.GetValue(batchSize)), (topK, parse.GetValue(topK)) })
            {
                if (value < 1)
                {
                    // Checked before anything is read, as generate does, and named as the command line spells it.
                    throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"{option.Name} is {value}; expected a whole number of at least 1."));
                }
            }

            List<(string Text, string? Label)> rows = ReadInputs(parse.GetValue(input)!);
            StreamWriter? fileWriter = null;
            using var closeOutput = new DisposeLater(() => fileWriter?.Dispose());

            // The --output file is created at the first prediction, so a checkpoint or tokenizer that cannot be used
            // leaves no empty file behind (and an earlier predictions file is not truncated for nothing).
            TextWriter Writer()
            {
                if (fileWriter is null && parse.GetValue(outputFile) is { } file)
                {
                    fileWriter = new StreamWriter(file);
                }

                return fileWriter ?? output ?? Console.Out;
            }

            ModelDescription description = CheckpointModel.ReadDescription(path);
            var inference = new InferenceOptions { Precision = parse.GetValue(precision), MaxLength = parse.GetValue(maxLength) };
            if (inference.MaxLength is { } chosen && chosen > description.Config.MaxSequenceLength)
            {
                throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"--max-length is {chosen}; expected at most the model's max_sequence_length {description.Config.MaxSequenceLength}."));
            }

            ITextTokenizer? tokenizer = null;
            if (parse.GetValue(tokenizerOption) is { } spec)
            {
                try
                {
                    tokenizer = Tokenizers.FromSpec(spec);
                    Tokenizers.Check(description, tokenizer);
                }
                catch (Exception ex) when (ex is IOException or InvalidDataException)
                {
                    throw new UsageException($"--tokenizer '{spec}': {ex.Message}", ex);
                }
            }

            int reported = 0;
            var progress = new Progress<int>(done =>
            {
                if (done - reported >= ProgressEvery || done == rows.Count)
                {
                    reported = done;
                    Console.Error.WriteLine($"predict: {done}/{rows.Count} inputs");
                }
            });
            if (description.Kind == ModelDescription.BertClassification)
            {
                using TextClassifier classifier = TextClassifier.Load(path, tokenizer: tokenizer, options: inference);
                ReportSettings("predict", classifier.Loaded, inference);
                int correct = 0, scored = 0;
                var reporter = rows.Count > ProgressEvery ? progress : null;
                IReadOnlyList<ClassPrediction> predictions = classifier.Predict(rows.Select(r => r.Text), parse.GetValue(batchSize), reporter);
                for (int i = 0; i < rows.Count; i++)
                {
                    ClassPrediction p = predictions[i];
                    var line = new JsonObject { ["text"] = rows[i].Text, ["label"] = p.Label, ["probabilities"] = new JsonObject(p.Probabilities.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))) };
                    if (rows[i].Label is { } truth)
                    {
                        line["true_label"] = truth;
                        scored++;
                        correct += truth == p.Label ? 1 : 0;
                    }

                    Writer().WriteLine(line.ToJsonString(JsonLines));
                }

                if (scored > 0)
                {
                    Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"predict: accuracy {(double)correct / scored:G6} ({correct}/{scored} labelled inputs)"));
                }
            }
            else if (description.Kind == ModelDescription.BertMlm)
            {
                using MaskFiller filler = MaskFiller.Load(path, tokenizer: tokenizer, options: inference);
                ReportSettings("predict", filler.Loaded, inference);
                int done = 0;
                foreach ((string text, _) in rows)
                {
                    IReadOnlyList<IReadOnlyList<MaskFill>> fills = filler.Fill(text, parse.GetValue(topK));
                    var positions = new JsonArray(fills.Select(f => (JsonNode)new JsonArray(f.Select(c => (JsonNode)new JsonObject { ["token"] = c.Token, ["token_id"] = c.TokenId, ["probability"] = c.Probability }).ToArray())).ToArray());
                    Writer().WriteLine(new JsonObject { ["text"] = text, ["fills"] = positions }.ToJsonString(JsonLines));
                    ((IProgress<int>)progress).Report(++done); // after the input is done, not before its first failure
                }
            }
            else
            {
                throw new InvalidDataException($"Checkpoint '{path}' holds a {description.Kind} model; predict needs a {ModelDescription.BertClassification} or {ModelDescription.BertMlm} model (use generate for {ModelDescription.Gpt}).");
            }
        }));
        return command;
    }

    public static Command Generate(TextWriter? output)
    {
        var load = LoadPath();
        var prompt = new Option<string>("--prompt") { Description = "The text to continue.", Required = true };
        var defaults = new GenerationOptions();
        var maxNew = Number("--max-new-tokens", "Tokens to generate.", defaults.MaxNewTokens, NumberStyles.Integer, "a whole number of at least 1, e.g. 50");
        var temperature = Number("--temperature", "Sampling temperature (0 = greedy).", defaults.Temperature, NumberStyles.Float, "a number ≥ 0, e.g. 0.8 (0 = greedy)");
        var topK = Number("--top-k", "Sample among the k most probable tokens (0 = all).", defaults.TopK, NumberStyles.Integer, "a whole number ≥ 0, e.g. 50 (0 = no limit)");
        var topP = Number("--top-p", "Nucleus sampling probability mass (1 = all).", defaults.TopP, NumberStyles.Float, "a number in (0, 1], e.g. 0.95");
        var seed = Number("--seed", "Sampling seed.", defaults.Seed, NumberStyles.Integer, "a whole number, e.g. 17");
        var noCache = new Option<bool>("--no-cache") { Description = "Re-run the whole prefix for every token instead of using the key/value cache (slower; for comparison)." };
        var precision = PrecisionOption();
        var command = new Command("generate", "Generate text with a GPT checkpoint (key/value cache: each new token costs one position), computing as its evaluation did (its precision and algorithms).") { load, prompt, maxNew, temperature, topK, topP, seed, noCache, precision };
        command.SetAction(parse => Guard("generate", () =>
        {
            var options = new GenerationOptions
            {
                MaxNewTokens = parse.GetValue(maxNew),
                Temperature = parse.GetValue(temperature),
                TopK = parse.GetValue(topK),
                TopP = parse.GetValue(topP),
                Seed = parse.GetValue(seed),
                UseCache = !parse.GetValue(noCache),
            };
            if (options.FirstProblem() is { } problem)
            {
                // Checked before the checkpoint is read, and named as the command line spells it.
                throw new UsageException(string.Create(CultureInfo.InvariantCulture, $"--{problem.Setting.Replace('_', '-')} is {problem.Value}; expected {problem.Expected}."));
            }

            var inference = new InferenceOptions { Precision = parse.GetValue(precision) };
            using TextGenerator generator = TextGenerator.Load(parse.GetValue(load)!, options: inference);
            ReportSettings("generate", generator.Loaded!, inference);
            GenerationResult result;
            try
            {
                result = generator.Generate(parse.GetValue(prompt)!, options);
            }
            catch (ArgumentException ex)
            {
                throw new UsageException($"--prompt: {ex.Message}", ex); // a prompt that fills the model's context
            }

            TextWriter w = output ?? Console.Out;
            w.WriteLine(parse.GetValue(prompt) + result.Text);
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"generate: {result.TokenIds.Count} tokens in {result.Elapsed.TotalSeconds:F2} s ({result.TokensPerSecond:F1} tokens/s, {(parse.GetValue(noCache) ? "no cache" : "key/value cache")})"));
        }));
        return command;
    }

    public static Command Export(TextWriter? output)
    {
        var load = LoadPath();
        var folder = new Option<string>("--output") { Description = "The folder to write: for --format huggingface a Hugging Face model folder (model.safetensors, config.json and the tokenizer's files: vocab.json and merges.txt for GPT-2, vocab.txt for BERT WordPiece, with tokenizer_config.json and special_tokens_map.json); for --format onnx the same with model.onnx in place of model.safetensors.", Required = true };
        var overwrite = new Option<bool>("--overwrite") { Description = "Write into a folder that is not empty: its model and tokenizer files are replaced, every other file is kept. Without it a non-empty folder is refused." };
        var format = new Option<string>("--format")
        {
            Description = "huggingface (default): a folder transformers loads; onnx: model.onnx (opset 17, Optimum's input and output names) for ONNX Runtime, checked by ONNX Runtime before it is kept.",
            DefaultValueFactory = _ => "huggingface",
        };
        format.AcceptOnlyFromAmong("huggingface", "onnx");
        var dtype = new Option<string>("--dtype") { Description = "ONNX weights: fp32 (default) or fp16 (half the file; the graph casts them back and computes in fp32).", DefaultValueFactory = _ => "fp32" };
        dtype.AcceptOnlyFromAmong("fp32", "fp16");
        var verify = new Option<bool>("--verify") { Description = "ONNX: run random padded inputs through ONNX Runtime and the model and refuse the file when max |Δ| exceeds 1e-4 (fp32) or 1e-2 × max |logit| (fp16). Default true; --verify false skips it.", DefaultValueFactory = _ => true };
        var command = new Command("export", "Export a checkpoint's model as a Hugging Face folder (BertForMaskedLM, BertForSequenceClassification, BertForMeanPooledSequenceClassification, GPT2LMHeadModel) or as ONNX (--format onnx; the same models, and algorithm-changed ones).") { load, folder, overwrite, format, dtype, verify };
        command.SetAction(parse => Guard("export", () =>
        {
            string target = parse.GetValue(folder)!;
            bool onnx = parse.GetValue(format) == "onnx";
            if (File.Exists(target))
            {
                throw new UsageException($"--output '{target}' is a file; expected a folder (new, empty, or an earlier export with --overwrite true).");
            }

            string[] present = Directory.Exists(target) ? Directory.EnumerateFileSystemEntries(target).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToArray() : Array.Empty<string>();
            if (present.Length > 0 && !parse.GetValue(overwrite))
            {
                throw new UsageException(
                    $"--output '{target}' is not empty ({present.Length} entries: {string.Join(", ", present.Take(5))}{(present.Length > 5 ? ", …" : string.Empty)}); nothing was written. "
                    + "Choose a new folder, or pass --overwrite true to replace its model and tokenizer files (other files are kept).");
            }

            using CheckpointModel loaded = CheckpointModel.Load(parse.GetValue(load)!);
            var files = new List<string>();
            if (onnx)
            {
                // The ONNX file first, into a staging folder beside the target: an export that cannot be made or fails
                // verification leaves the target as it was.
                string staging = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(target)) ?? ".", $".{Path.GetFileName(Path.GetFullPath(target))}.onnx-staging-{Environment.ProcessId}");
                try
                {
                    Directory.CreateDirectory(staging);
                    OnnxExportResult result = OnnxExport.Export(loaded.Model, Path.Combine(staging, OnnxExport.ModelFileName), new OnnxExportOptions { Float16Weights = parse.GetValue(dtype) == "fp16", Verify = parse.GetValue(verify) });
                    Directory.CreateDirectory(target);
                    RemoveStaleExportFiles(target);
                    string model = Path.Combine(target, OnnxExport.ModelFileName);
                    File.Move(result.Path, model, overwrite: true);
                    files.Add(model);
                    files.Add(OnnxFolder.WriteConfig(loaded.Model, target, loaded.Description.Labels, result));
                    if (result.Verification is { } v)
                    {
                        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"export: ONNX Runtime agrees with the model to max |Δ| {v.MaxAbsDifference:G3} (max |logit| {v.MaxAbsReference:G3}; {string.Join("; ", v.Cases)})"));
                    }
                }
                catch (Exception ex) when (ex is NotSupportedException or OnnxVerificationException or UnauthorizedAccessException)
                {
                    throw new UsageException(ex.Message, ex);
                }
                finally
                {
                    if (Directory.Exists(staging))
                    {
                        Directory.Delete(staging, recursive: true);
                    }
                }
            }
            else
            {
                RemoveStaleExportFiles(target);
                files.AddRange(HuggingFaceFormat.Save(loaded.Model, target, loaded.Description.Labels));
            }

            if (loaded.Description.Tokenizer == Tokenizers.Gpt2)
            {
                files.AddRange(Gpt2TokenizerFiles.Write(target, loaded.Model.Config.MaxSequenceLength));
            }
            else if (loaded.Description.Tokenizer == Tokenizers.BertWordPiece && loaded.Tokenizer is BertWordPieceTokenizer wordPiece)
            {
                files.AddRange(wordPiece.WriteHuggingFaceFiles(target, loaded.Model.Config.MaxSequenceLength));
            }

            foreach (string written in files)
            {
                (output ?? Console.Out).WriteLine($"export: wrote {written}");
            }
        }));
        return command;
    }

    /// <summary>--overwrite: no file of an earlier export survives beside the new one (e.g. GPT-2's vocab.json beside a BERT vocab.txt).</summary>
    private static void RemoveStaleExportFiles(string target)
    {
        foreach (string stale in ExportFileNames.Select(n => Path.Combine(target, n)).Where(File.Exists))
        {
            File.Delete(stale);
        }
    }

    /// <summary>A numeric option parsed with the invariant culture; a bad value is a parse error (exit 2) that names the option, the value and what is expected.</summary>
    private static Option<T> Number<T>(string name, string description, T defaultValue, NumberStyles style, string expected)
        where T : struct, INumberBase<T> => new(name)
        {
            Description = description,
            DefaultValueFactory = _ => defaultValue,
            CustomParser = result =>
            {
                if (result.Tokens.Count == 0)
                {
                    return defaultValue;
                }

                string text = result.Tokens[^1].Value;
                if (T.TryParse(text, style, CultureInfo.InvariantCulture, out T value))
                {
                    return value;
                }

                result.AddError($"{name} is '{text}'; expected {expected}.");
                return defaultValue;
            },
        };

    /// <summary>
    /// <c>--precision</c> of predict and generate: fp32, amp_bf16 or amp_fp16 (train's and eval's names); absent, the
    /// checkpoint's precision. A bad value is a parse error (exit 2) that names it and the accepted names.
    /// </summary>
    private static Option<Precision?> PrecisionOption() => new("--precision")
    {
        Description = "Compute in fp32, amp_bf16 or amp_fp16 (default: the precision the checkpoint was trained and evaluated with).",
        CustomParser = result =>
        {
            string text = result.Tokens.Count == 0 ? string.Empty : result.Tokens[^1].Value;
            try
            {
                return PrecisionExtensions.Parse(text);
            }
            catch (FormatException)
            {
                result.AddError($"--precision is '{text}'; expected fp32, amp_bf16 or amp_fp16.");
                return null;
            }
        },
    };

    /// <summary>
    /// One stderr line saying how the model computes: precision, maximum input length, cls prefix and the algorithms
    /// applied, each marked as recorded in the checkpoint or chosen on the command line.
    /// </summary>
    private static void ReportSettings(string command, CheckpointModel loaded, InferenceOptions chosen)
    {
        string precisionSource = chosen.Precision is null ? "as recorded" : "--precision";
        string lengthSource = chosen.MaxLength is not null ? "--max-length" : loaded.Description.Input is not null ? "the data's max_length, as recorded" : "the model's max_sequence_length; the checkpoint records no data max_length";
        string algorithms = loaded.Algorithms.Count == 0 ? "none" : string.Join(", ", loaded.Algorithms);
        string length = command == "generate"
            ? string.Empty
            : string.Create(CultureInfo.InvariantCulture, $", max length {loaded.Input.MaxLength} ({lengthSource}), cls prepended {(loaded.Input.PrependCls ? "yes" : "no")}");
        Console.Error.WriteLine($"{command}: precision {loaded.Precision.ToComposerName()} ({precisionSource}){length}, algorithms: {algorithms}");
    }

    private static Option<string> LoadPath() => new("--load-path") { Description = "The checkpoint (or latest pointer) to use; it describes its own model.", Required = true };

    private static int Guard(string name, Action action)
    {
        try
        {
            action();
            return 0;
        }
        catch (UsageException ex)
        {
            Console.Error.WriteLine($"composersharp {name}: {ex.Message}");
            return CliApp.ConfigErrorExitCode;
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or InvalidOperationException or NotSupportedException or ArgumentException or JsonException)
        {
            Console.Error.WriteLine($"composersharp {name}: {ex.Message}");
            return 1;
        }
    }

    /// <summary>Reads .jsonl (text and optional label fields) or .txt (one text per non-blank line).</summary>
    private static List<(string Text, string? Label)> ReadInputs(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"The input file '{path}' (full path '{Path.GetFullPath(path)}') does not exist.", path);
        }

        var rows = new List<(string, string?)>();
        bool jsonl = path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".json", StringComparison.OrdinalIgnoreCase);
        int number = 0;
        foreach (string line in File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            if (!jsonl)
            {
                rows.Add((line, null));
                continue;
            }

            JsonObject row = (JsonNode.Parse(line) as JsonObject) ?? throw new InvalidDataException($"{path}:{number}: not a JSON object.");
            string text = row["text"] is JsonValue t && t.TryGetValue(out string? s) ? s : throw new InvalidDataException($"{path}:{number}: no string field \"text\".");
            string? label = row["label"] switch
            {
                null => null,
                JsonValue v when v.TryGetValue(out string? l) => l,
                JsonNode other => other.ToJsonString(),
            };
            rows.Add((text, label));
        }

        return rows.Count > 0 ? rows : throw new InvalidDataException($"The input file '{path}' has no inputs.");
    }
}

/// <summary>Runs an action when disposed (closes predict's lazily created output file on every path).</summary>
internal sealed class DisposeLater(Action action) : IDisposable
{
    /// <summary>Runs the action.</summary>
    public void Dispose() => action();
}

/// <summary>A bad command-line value of predict, generate or export: printed as it is, exit code 2 (as a configuration error).</summary>
internal sealed class UsageException : Exception
{
    /// <summary>An error with <paramref name="message"/>, which names the option and value.</summary>
    public UsageException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
