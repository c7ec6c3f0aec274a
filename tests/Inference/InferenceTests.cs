using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Tests.Inference;

/// <summary>Self-describing checkpoints and what uses them: eval, predict, generate and export from the checkpoint alone.</summary>
[TestFixture]
public class InferenceTests
{
    private const string Tiny = "hidden_size: 32, num_heads: 4, intermediate_size: 64, num_layers: 2";
    private string _dir = null!;

    [OneTimeSetUp]
    public void WriteData()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-inference-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(_dir, "text"));
        var random = new Random(3);
        string[] spam = { "win money now", "free prize claim today", "cheap pills offer", "click here to win" };
        string[] ham = { "meeting moved to tuesday", "see you at lunch", "the report is attached", "thanks for the review" };
        File.WriteAllLines(Path.Combine(_dir, "data.jsonl"), Enumerable.Range(0, 48).Select(i =>
        {
            bool isSpam = i % 2 == 0;
            string text = (isSpam ? spam : ham)[random.Next(4)] + " " + (isSpam ? spam : ham)[random.Next(4)];
            return $"{{\"text\": \"{text}\", \"label\": \"{(isSpam ? "spam" : "ham")}\"}}";
        }));
        File.WriteAllText(Path.Combine(_dir, "text", "a.txt"), string.Join(" ", Enumerable.Range(0, 300).Select(i => ham[i % 4] + ".")));
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private string Train(string name, string model, string dataset, int batches = 3)
    {
        string folder = Path.Combine(_dir, name);
        string yaml = $$"""
            run_folder: {{folder}}
            max_duration: {{batches}}ba
            progress_bar: false
            model: {name: {{model}}, {{Tiny}}, max_sequence_length: 64}
            train_loader: {batch_size: 8, shuffle: true, dataset: {{dataset}}}
            optimizer: {name: adamw, lr: 0.01}
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        new TrainJob(ConfigSection.Parse(yaml), services).Train();
        return Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*.ckpt").Single(f => f.EndsWith($"-ba{batches}-rank0.ckpt", StringComparison.Ordinal));
    }

    private string? _classifier;

    /// <summary>The classifier checkpoint, trained once per fixture.</summary>
    private string Classifier() => _classifier ??= Train("cls", "bert_classification", $"{{name: jsonl_classification, path: {_dir}/data.jsonl, max_length: 64, labels: [ham, spam]}}", batches: 18);

    [Test]
    [Category(TestCategories.Slow)]
    public void ACheckpointDescribesItsModelLabelsAndTokenizer()
    {
        string ckpt = Classifier();
        ModelDescription d = ModelDescription.FromJson(ComposerSharp.Core.Checkpoints.CheckpointFile.ReadMetadata(ckpt)[ModelDescription.MetadataKey], ckpt);
        Assert.That(d.Kind, Is.EqualTo(ModelDescription.BertClassification));
        Assert.That(d.Config.HiddenSize, Is.EqualTo(32));
        Assert.That(d.Config.MaxSequenceLength, Is.EqualTo(64));
        Assert.That(d.Labels, Is.EqualTo(new[] { "ham", "spam" }));
        Assert.That(d.Tokenizer, Is.EqualTo("gpt2"));
        Assert.That(d.TokenizerRegularCount, Is.EqualTo(50256));
        Assert.That(d.FrameworkVersion, Is.Not.Null);
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void PredictReproducesTheAccuracyEvalReportsFromTheCheckpointAlone()
    {
        string ckpt = Classifier();
        string yaml = $$"""
            run_folder: {{_dir}}/eval
            progress_bar: false
            load_path: {{ckpt}}
            eval_loader:
              batch_size: 16
              dataset: {name: jsonl_classification, path: {{_dir}}/data.jsonl, max_length: 64}
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        double evalAccuracy = new TrainJob(ConfigSection.Parse(yaml), services).Evaluate().FinalMetrics["metrics/eval/Accuracy"];

        string[] lines = File.ReadAllLines(Path.Combine(_dir, "data.jsonl"));
        using TextClassifier classifier = TextClassifier.Load(ckpt);
        Assert.That(classifier.Labels, Is.EqualTo(new[] { "ham", "spam" }));
        var rows = lines.Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).Select(e => (Text: e.GetProperty("text").GetString()!, Label: e.GetProperty("label").GetString()!)).ToArray();
        IReadOnlyList<ClassPrediction> predictions = classifier.Predict(rows.Select(r => r.Text), batchSize: 16);
        double accuracy = rows.Zip(predictions).Count(p => p.First.Label == p.Second.Label) / (double)rows.Length;
        Assert.That(accuracy, Is.EqualTo(evalAccuracy).Within(1e-12));
        Assert.That(accuracy, Is.GreaterThan(0.75), "the classifier should have learned the keywords, so that the comparison is not between two constant predictions");
        Assert.That(predictions[0].Probabilities.Values.Sum(), Is.EqualTo(1.0).Within(1e-5));

        var output = new StringWriter();
        string outFile = Path.Combine(_dir, "predictions.jsonl");
        Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", Path.Combine(_dir, "data.jsonl"), "--output", outFile }, output), Is.Zero);
        string[] written = File.ReadAllLines(outFile);
        Assert.That(written, Has.Length.EqualTo(rows.Length));
        Assert.That(written[0], Does.Contain("\"label\":\"" + predictions[0].Label + "\"").And.Contain("\"probabilities\""));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void GenerateWithAndWithoutTheCacheGivesTheSameTokens()
    {
        string ckpt = Train("gpt", "gpt", $"{{name: text_lm, path: {_dir}/text, block_size: 32}}");
        using TextGenerator generator = TextGenerator.Load(ckpt);
        var greedy = new GenerationOptions { MaxNewTokens = 12, Temperature = 0, StopAtEndOfText = false };
        GenerationResult cached = generator.Generate("see you at", greedy);
        GenerationResult uncached = generator.Generate("see you at", greedy with { UseCache = false });
        Assert.That(cached.TokenIds, Has.Count.EqualTo(12));
        Assert.That(cached.TokenIds, Is.EqualTo(uncached.TokenIds));
        GenerationResult sampled = generator.Generate("see you at", new GenerationOptions { MaxNewTokens = 8, TopK = 20, TopP = 0.9, Seed = 4, StopAtEndOfText = false });
        Assert.That(generator.Generate("see you at", new GenerationOptions { MaxNewTokens = 8, TopK = 20, TopP = 0.9, Seed = 4, StopAtEndOfText = false }).TokenIds, Is.EqualTo(sampled.TokenIds), "same seed, same text");

        var ex = Assert.Throws<ArgumentException>(() => generator.Generate(string.Join(" ", Enumerable.Repeat("word", 80))));
        Assert.That(ex!.Message, Does.Contain("80 tokens").And.Contain("64"));

        var output = new StringWriter();
        Assert.That(CliApp.Run(new[] { "generate", "--load-path", ckpt, "--prompt", "see you", "--max-new-tokens", "5", "--seed", "1" }, output), Is.Zero);
        Assert.That(output.ToString(), Does.StartWith("see you"));
        Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", Path.Combine(_dir, "data.jsonl") }, output), Is.EqualTo(1), "a GPT checkpoint cannot predict");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ExportFromTheCheckpointIsReadBackBitwise()
    {
        string ckpt = Classifier();
        string folder = Path.Combine(_dir, "hf");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", folder }, new StringWriter()), Is.Zero);
        PretrainedModel back = HuggingFaceFormat.FromPretrained(folder);
        Assert.That(back.Labels, Is.EqualTo(new[] { "ham", "spam" }));
        Assert.That(new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json" }.All(f => File.Exists(Path.Combine(folder, f))), Is.True, "the GPT-2 tokenizer files");
        Dictionary<string, Tensor> saved = ComposerSharp.Core.Checkpoints.CheckpointFile.ReadModelState(ckpt);
        foreach ((string key, Tensor t) in back.Model.state_dict())
        {
            Assert.That(t.bytes.ToArray(), Is.EqualTo(saved[key].bytes.ToArray()), key);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void OnnxExportFromTheCheckpointIsVerifiedAndRefusesBadInput()
    {
        string ckpt = Classifier();
        string folder = Path.Combine(_dir, "onnx");
        var output = new StringWriter();
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", folder, "--format", "onnx" }, output), Is.Zero);
        Assert.That(new[] { "model.onnx", "config.json", "vocab.json", "merges.txt" }.All(f => File.Exists(Path.Combine(folder, f))), Is.True, output.ToString());
        Assert.That(File.Exists(Path.Combine(folder, "model.safetensors")), Is.False, "ONNX in place of the safetensors");
        string config = File.ReadAllText(Path.Combine(folder, "config.json"));
        Assert.That(config, Does.Contain("\"text-classification\"").And.Contain("\"spam\""));

        string half = Path.Combine(_dir, "onnx-fp16");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", half, "--format", "onnx", "--dtype", "fp16" }, new StringWriter()), Is.Zero);
        Assert.That(new FileInfo(Path.Combine(half, "model.onnx")).Length, Is.LessThan(new FileInfo(Path.Combine(folder, "model.onnx")).Length * 0.7));

        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", Path.Combine(_dir, "x"), "--format", "tflite" }, new StringWriter()), Is.EqualTo(2), "an unknown format");
        string blocked = Path.Combine(_dir, "not-a-folder");
        File.WriteAllText(blocked, "a file");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", blocked, "--format", "onnx" }, new StringWriter()), Is.EqualTo(2), "the output is a file");
        Assert.That(File.ReadAllText(blocked), Is.EqualTo("a file"));
        Assert.That(Directory.GetDirectories(_dir, "*onnx-staging*", SearchOption.TopDirectoryOnly), Is.Empty, "no staging folder is left");
    }

    [Test]
    public void AModelTrainedOnTokenIdsOnlySaysItCannotReadTextButExports()
    {
        string ckpt = Train("synthetic", "bert_classification", "{name: synthetic_classification, num_samples: 32, regular_vocab_size: 1024, max_length: 32}", batches: 1);
        using (TextClassifier classifier = TextClassifier.Load(ckpt))
        {
            Assert.That(classifier.Labels, Is.EqualTo(new[] { "class_0", "class_1" }));
            var ex = Assert.Throws<InvalidDataException>(() => classifier.Predict("hello"));
            Assert.That(ex!.Message, Does.Contain("without a text tokenizer"));
        }

        string folder = Path.Combine(_dir, "hf-synthetic");
        Assert.That(CliApp.Run(new[] { "export", "--load-path", ckpt, "--output", folder }, new StringWriter()), Is.Zero);
        Assert.That(File.Exists(Path.Combine(folder, "model.safetensors")), Is.True);
        Assert.That(File.Exists(Path.Combine(folder, "vocab.json")), Is.False, "no text tokenizer, no tokenizer files");
    }

    [Test]
    public void AnOldCheckpointWithoutADescriptionSaysWhatToSupply()
    {
        string ckpt = Path.Combine(_dir, "old.ckpt");
        var model = new BertForSequenceClassification(TransformerConfig.Preset("bert-tiny") with { HiddenSize = 32, NumHeads = 4, IntermediateSize = 64, VocabSize = 128 });
        using (var trainer = new ComposerSharp.Training.Trainer(model, new ComposerSharp.Training.TrainerOptions { Device = "cpu", ProgressBar = false }))
        {
            trainer.SaveCheckpoint(ckpt, weightsOnly: true);
        }

        var ex = Assert.Throws<InvalidDataException>(() => TextClassifier.Load(ckpt));
        Assert.That(ex!.Message, Does.Contain(ckpt).And.Contain("does not record its model").And.Contain("model section"));
        var description = ModelDescription.Of(model, new[] { "a", "b" }, "gpt2");
        using TextClassifier supplied = TextClassifier.Load(ckpt, description);
        Assert.That(supplied.Labels, Is.EqualTo(new[] { "a", "b" }));
    }
}

[TestFixture]
[Category(TestCategories.Slow)]
public class MaskFillerTests
{
    [Test]
    public void PredictFillsEachMaskWithTheTopKTokens()
    {
        string dir = Path.Combine(Path.GetTempPath(), "composersharp-mlm-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(dir, "text"));
        try
        {
            File.WriteAllText(Path.Combine(dir, "text", "a.txt"), string.Join(" ", Enumerable.Repeat("the whale was white and the sea was grey.", 60)));
            string yaml = $$"""
                run_folder: {{dir}}/run
                max_duration: 2ba
                progress_bar: false
                model: {name: bert_mlm, hidden_size: 32, num_heads: 4, intermediate_size: 64, num_layers: 2, max_sequence_length: 64}
                train_loader:
                  batch_size: 8
                  dataset: {name: text_mlm, path: {{dir}}/text, block_size: 32}
                """;
            using (var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider())
            {
                new TrainJob(ConfigSection.Parse(yaml), services).Train();
            }

            string ckpt = Directory.GetFiles(Path.Combine(dir, "run", "checkpoints"), "ep*.ckpt").Single();
            using (MaskFiller filler = MaskFiller.Load(ckpt))
            {
                IReadOnlyList<IReadOnlyList<MaskFill>> fills = filler.Fill("the [MASK] was white and the <|mask|> was grey.", topK: 3);
                Assert.That(fills, Has.Count.EqualTo(2));
                Assert.That(fills[0], Has.Count.EqualTo(3));
                Assert.That(fills[0].Select(f => f.Probability), Is.Ordered.Descending);
                Assert.That(fills[0].All(f => f.TokenId < 50256), Is.True, "only regular tokens are candidates");
                Assert.Throws<ArgumentException>(() => filler.Fill("no mask here"));
            }

            File.WriteAllLines(Path.Combine(dir, "masked.txt"), new[] { "the [MASK] was white." });
            var output = new StringWriter();
            Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", Path.Combine(dir, "masked.txt"), "--top-k", "2" }, output), Is.Zero);
            Assert.That(output.ToString(), Does.Contain("\"fills\":[[{\"token\""));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}

/// <summary>The command-line edges of predict, generate and export: argument errors, overwriting, JSON escaping, a tokenizer for token-id checkpoints.</summary>
[TestFixture]
public class InferenceCommandLineTests
{
    private string _dir = null!;
    private string? _gpt;
    private string? _classifier;

    [OneTimeSetUp]
    public void CreateFolder()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-inference-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(_dir, "text"));
        File.WriteAllText(Path.Combine(_dir, "text", "a.txt"), string.Join(" ", Enumerable.Repeat("see you at lunch, it's free + cheap.", 80)));
        File.WriteAllLines(Path.Combine(_dir, "data.jsonl"), Enumerable.Range(0, 16).Select(i => i % 2 == 0
            ? """{"text": "it's 100% free + \"cheap\" <b>café</b>", "label": "spam"}"""
            : """{"text": "see you at lunch", "label": "ham"}"""));
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    private string Train(string name, string model, string dataset)
    {
        string folder = Path.Combine(_dir, name);
        string yaml = $$"""
            run_folder: {{folder}}
            max_duration: 1ba
            progress_bar: false
            model: {name: {{model}}, hidden_size: 32, num_heads: 4, intermediate_size: 64, num_layers: 1, max_sequence_length: 32}
            train_loader: {batch_size: 8, dataset: {{dataset}} }
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        new TrainJob(ConfigSection.Parse(yaml), services).Train();
        return Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*.ckpt").Single();
    }

    private string Gpt() => _gpt ??= Train("gpt", "gpt", $"{{name: text_lm, path: {_dir}/text, block_size: 16}}");

    private string Classifier() => _classifier ??= Train("cls", "bert_classification", $"{{name: jsonl_classification, path: {_dir}/data.jsonl, max_length: 32}}");

    private static (int Code, string Error) Run(params string[] args)
    {
        var error = new StringWriter();
        TextWriter original = Console.Error;
        Console.SetError(error);
        try
        {
            return (CliApp.Run(args, new StringWriter()), error.ToString());
        }
        finally
        {
            Console.SetError(original);
        }
    }

    [TestCase("--temperature", "-1", "--temperature is -1; expected a finite number ≥ 0")]
    [TestCase("--top-p", "1.5", "--top-p is 1.5; expected a number in (0, 1]")]
    [TestCase("--max-new-tokens", "0", "--max-new-tokens is 0; expected a whole number of at least 1")]
    [TestCase("--max-new-tokens", "abc", "--max-new-tokens is 'abc'; expected a whole number of at least 1")]
    [TestCase("--temperature", "1,5", "--temperature is '1,5'; expected a number ≥ 0")]
    [TestCase("--seed", "x", "--seed is 'x'; expected a whole number")]
    public void GenerateArgumentErrorsAreOurMessageWithExitCode2(string option, string value, string expected)
    {
        (int code, string error) = Run("generate", "--load-path", Gpt(), "--prompt", "see you", option, value);
        Assert.That(code, Is.EqualTo(2), error);
        Assert.That(error, Does.Contain(expected));
        Assert.That(error, Does.Not.Contain("Parameter").And.Not.Contain("System.").And.Not.Contain("Actual value"));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void APromptLongerThanTheContextIsAnArgumentError()
    {
        (int code, string error) = Run("generate", "--load-path", Gpt(), "--prompt", string.Join(" ", Enumerable.Repeat("lunch", 40)));
        Assert.That(code, Is.EqualTo(2), error);
        Assert.That(error, Does.Contain("--prompt: The prompt has 41 tokens but the model's context (max_sequence_length) is 32").And.Not.Contain("Parameter"), "GPT-2 BPE: 'lunch' at the start is 2 tokens, ' lunch' 1");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ExportRefusesANonEmptyFolderAndOverwriteKeepsOtherFiles()
    {
        string folder = Path.Combine(_dir, "export");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "notes.md"), "mine");
        File.WriteAllText(Path.Combine(folder, "vocab.txt"), "stale");
        (int code, string error) = Run("export", "--load-path", Classifier(), "--output", folder);
        Assert.That(code, Is.EqualTo(2), error);
        Assert.That(error, Does.Contain($"--output '{folder}' is not empty (2 entries: notes.md, vocab.txt)").And.Contain("--overwrite true"));
        Assert.That(Directory.GetFiles(folder).Select(Path.GetFileName), Is.EquivalentTo(new[] { "notes.md", "vocab.txt" }), "nothing written");

        (code, error) = Run("export", "--load-path", Classifier(), "--output", folder, "--overwrite", "true");
        Assert.That(code, Is.Zero, error);
        Assert.That(File.ReadAllText(Path.Combine(folder, "notes.md")), Is.EqualTo("mine"), "files that are not export's are kept");
        Assert.That(File.Exists(Path.Combine(folder, "model.safetensors")) && File.Exists(Path.Combine(folder, "vocab.json")), Is.True);
        Assert.That(File.Exists(Path.Combine(folder, "vocab.txt")), Is.False, "a stale tokenizer file of another kind is removed, not left beside the new ones");

        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "x");
        (code, error) = Run("export", "--load-path", Classifier(), "--output", file);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("is a file"));
    }

    [Test]
    public void PredictionsKeepApostrophesAndPlusSignsAndStayValidJson()
    {
        string output = Path.Combine(_dir, "predictions.jsonl");
        (int code, string error) = Run("predict", "--load-path", Classifier(), "--input", Path.Combine(_dir, "data.jsonl"), "--output", output);
        Assert.That(code, Is.Zero, error);
        string first = File.ReadLines(output).First();
        Assert.That(first, Does.Contain("it's 100% free + \\\"cheap\\\" <b>café</b>"), "only the quotes are escaped");
        Assert.That(first, Does.Not.Contain("\\u0027").And.Not.Contain("\\u002B"));
        foreach (string line in File.ReadLines(output))
        {
            var parsed = System.Text.Json.Nodes.JsonNode.Parse(line)!;
            Assert.That(parsed["text"]!.GetValue<string>(), Is.AnyOf("it's 100% free + \"cheap\" <b>café</b>", "see you at lunch"));
        }
    }

    [Test]
    public void PredictReadsATokenIdCheckpointWithTheTokenizerGiven()
    {
        string ckpt = Train("synthetic-mlm", "bert_mlm", "{name: synthetic_mlm, num_samples: 16, sequence_length: 16, regular_vocab_size: 60}");
        string vocab = ComposerSharp.Tests.Data.SmallBertVocabulary.WriteFolder(_dir);
        string input = Path.Combine(_dir, "masked.txt");
        File.WriteAllLines(input, new[] { "see you at [MASK]." });

        (int code, string error) = Run("predict", "--load-path", ckpt, "--input", input);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(error, Does.Contain("without a text tokenizer").And.Contain("--tokenizer"));

        var output = new StringWriter();
        Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", input, "--tokenizer", vocab, "--top-k", "2" }, output), Is.Zero);
        Assert.That(output.ToString(), Does.Contain("\"fills\":[[{\"token\""));

        (code, error) = Run("predict", "--load-path", ckpt, "--input", input, "--tokenizer", "gpt2");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("--tokenizer 'gpt2': Tokenizer 'gpt2' has 50260 ids, more than the model's vocab_size 64"));

        (code, error) = Run("predict", "--load-path", ckpt, "--input", input, "--tokenizer", Path.Combine(_dir, "nowhere"));
        Assert.That(code, Is.EqualTo(2));
        Assert.That(error, Does.Contain("nowhere").And.Contain("neither 'gpt2' nor a WordPiece vocab.txt"));
    }
}
