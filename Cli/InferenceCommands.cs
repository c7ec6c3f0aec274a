using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;

namespace ComposerSharp.Cli;

/// <summary>
/// The commands that use a trained model from its (self-describing) checkpoint alone: <c>predict</c>
/// (classification labels and probabilities, or MLM fills), <c>generate</c> (GPT text) and <c>export</c> (Hugging Face folder).
/// </summary>
internal static class InferenceCommands
{
    /// <summary>Inputs per progress line on stderr.</summary>
    private const int ProgressEvery = 256;

    public static Command Predict(TextWriter? output)
    {
        var load = LoadPath();
        var input = new Option<string>("--input") { Description = "Inputs: a .jsonl file (objects with a \"text\" field; a \"label\" field is scored) or a .txt file (one text per line).", Required = true };
        var outputFile = new Option<string?>("--output") { Description = "Write one JSON line per input here (default: stdout)." };
        var batchSize = new Option<int>("--batch-size") { Description = "Inputs per forward pass.", DefaultValueFactory = _ => 32 };
        var topK = new Option<int>("--top-k") { Description = "MLM: candidates per [MASK] position.", DefaultValueFactory = _ => 5 };
        var command = new Command("predict", "Classify texts (bert_classification) or fill [MASK] positions (bert_mlm) with a checkpoint.") { load, input, outputFile, batchSize, topK };
        command.SetAction(parse => Guard("predict", () =>
        {
            string path = parse.GetValue(load)!;
            List<(string Text, string? Label)> rows = ReadInputs(parse.GetValue(input)!);
            using StreamWriter? fileWriter = parse.GetValue(outputFile) is { } file ? new StreamWriter(file) : null;
            TextWriter writer = fileWriter ?? output ?? Console.Out;
            ModelDescription description = CheckpointModel.ReadDescription(path);
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
                using TextClassifier classifier = TextClassifier.Load(path);
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

                    writer.WriteLine(line.ToJsonString());
                }

                if (scored > 0)
                {
                    Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"predict: accuracy {(double)correct / scored:G6} ({correct}/{scored} labelled inputs)"));
                }
            }
            else if (description.Kind == ModelDescription.BertMlm)
            {
                using MaskFiller filler = MaskFiller.Load(path);
                int done = 0;
                foreach ((string text, _) in rows)
                {
                    ((IProgress<int>)progress).Report(++done);
                    IReadOnlyList<IReadOnlyList<MaskFill>> fills = filler.Fill(text, parse.GetValue(topK));
                    var positions = new JsonArray(fills.Select(f => (JsonNode)new JsonArray(f.Select(c => (JsonNode)new JsonObject { ["token"] = c.Token, ["token_id"] = c.TokenId, ["probability"] = c.Probability }).ToArray())).ToArray());
                    writer.WriteLine(new JsonObject { ["text"] = text, ["fills"] = positions }.ToJsonString());
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
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate.", DefaultValueFactory = _ => defaults.MaxNewTokens };
        var temperature = new Option<double>("--temperature") { Description = "Sampling temperature (0 = greedy).", DefaultValueFactory = _ => defaults.Temperature };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most probable tokens (0 = all).", DefaultValueFactory = _ => defaults.TopK };
        var topP = new Option<double>("--top-p") { Description = "Nucleus sampling probability mass (1 = all).", DefaultValueFactory = _ => defaults.TopP };
        var seed = new Option<long>("--seed") { Description = "Sampling seed.", DefaultValueFactory = _ => defaults.Seed };
        var noCache = new Option<bool>("--no-cache") { Description = "Re-run the whole prefix for every token instead of using the key/value cache (slower; for comparison)." };
        var command = new Command("generate", "Generate text with a GPT checkpoint (key/value cache: each new token costs one position).") { load, prompt, maxNew, temperature, topK, topP, seed, noCache };
        command.SetAction(parse => Guard("generate", () =>
        {
            using TextGenerator generator = TextGenerator.Load(parse.GetValue(load)!);
            GenerationResult result = generator.Generate(parse.GetValue(prompt)!, new GenerationOptions
            {
                MaxNewTokens = parse.GetValue(maxNew),
                Temperature = parse.GetValue(temperature),
                TopK = parse.GetValue(topK),
                TopP = parse.GetValue(topP),
                Seed = parse.GetValue(seed),
                UseCache = !parse.GetValue(noCache),
            });
            TextWriter w = output ?? Console.Out;
            w.WriteLine(parse.GetValue(prompt) + result.Text);
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"generate: {result.TokenIds.Count} tokens in {result.Elapsed.TotalSeconds:F2} s ({result.TokensPerSecond:F1} tokens/s, {(parse.GetValue(noCache) ? "no cache" : "key/value cache")})"));
        }));
        return command;
    }

    public static Command Export(TextWriter? output)
    {
        var load = LoadPath();
        var folder = new Option<string>("--output") { Description = "The Hugging Face model folder to write (model.safetensors, config.json and, for the GPT-2 tokenizer, vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json).", Required = true };
        var command = new Command("export", "Export a checkpoint's model as a Hugging Face folder (BertForMaskedLM, BertForSequenceClassification, GPT2LMHeadModel).") { load, folder };
        command.SetAction(parse => Guard("export", () =>
        {
            using CheckpointModel loaded = CheckpointModel.Load(parse.GetValue(load)!);
            IEnumerable<string> files = HuggingFaceFormat.Save(loaded.Model, parse.GetValue(folder)!, loaded.Description.Labels);
            if (loaded.Description.Tokenizer == Tokenizers.Gpt2)
            {
                files = files.Concat(Gpt2TokenizerFiles.Write(parse.GetValue(folder)!, loaded.Model.Config.MaxSequenceLength));
            }

            foreach (string written in files)
            {
                (output ?? Console.Out).WriteLine($"export: wrote {written}");
            }
        }));
        return command;
    }

    private static Option<string> LoadPath() => new("--load-path") { Description = "The checkpoint (or latest pointer) to use; it describes its own model.", Required = true };

    private static int Guard(string name, Action action)
    {
        try
        {
            action();
            return 0;
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
