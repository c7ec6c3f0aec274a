using System.Globalization;
using System.Text.Json;
using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Inference;

/// <summary>
/// <c>predict</c> computes as <c>eval</c> did by default: under the checkpoint's precision with its algorithms' surgery,
/// and reading text with the data's <c>max_length</c>. Each comparison is of the mean cross-entropy of the true labels,
/// which follows every logit continuously (a change of precision or truncation moves it far beyond the tolerance),
/// and of the accuracy, exactly; a control run with the other setting shows the comparison can tell them apart.
/// </summary>
[TestFixture]
public class PredictReproducesEvalTests
{
    private const string Tiny = "hidden_size: 32, num_heads: 4, intermediate_size: 64, num_layers: 2";

    /// <summary>
    /// Relative agreement of predict's cross-entropy (from its printed probabilities, in double) with eval's (from the
    /// same logits, in float): rounding alone, about 1e-7 here, where another precision or cut moves it by 1e-4 or more.
    /// </summary>
    private const double Agreement = 1e-6;

    private string _dir = null!;

    [OneTimeSetUp]
    public void WriteData()
    {
        _dir = Path.Combine(Path.GetTempPath(), "composersharp-predict-eval-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_dir);
        var random = new Random(5);
        string[] spam = { "win money now", "free prize claim today", "cheap pills offer", "click here to win" };
        string[] ham = { "meeting moved to tuesday", "see you at lunch", "the report is attached", "thanks for the review" };
        string[] filler = { "and", "also", "then", "about", "the", "weather", "was", "fine", "yesterday", "evening" };

        // Long texts (about 45 to 55 tokens): a few filler words, the words that carry the label, then 30 more filler
        // words, so a 32-token cut keeps the label's words but drops most of the tail.
        string Filler(int count) => string.Join(" ", Enumerable.Range(0, count).Select(_ => filler[random.Next(filler.Length)]));
        File.WriteAllLines(Path.Combine(_dir, "long.jsonl"), Enumerable.Range(0, 48).Select(i =>
        {
            bool isSpam = i % 2 == 0;
            string text = Filler(3 + random.Next(6)) + " " + (isSpam ? spam : ham)[random.Next(4)] + " " + (isSpam ? spam : ham)[random.Next(4)] + " " + Filler(30);
            return $"{{\"text\": \"{text}\", \"label\": \"{(isSpam ? "spam" : "ham")}\"}}";
        }));
        File.WriteAllLines(Path.Combine(_dir, "short.jsonl"), Enumerable.Range(0, 48).Select(i =>
        {
            bool isSpam = i % 2 == 0;
            string text = (isSpam ? spam : ham)[random.Next(4)] + " " + filler[random.Next(filler.Length)] + " " + (isSpam ? spam : ham)[random.Next(4)];
            return $"{{\"text\": \"{text}\", \"label\": \"{(isSpam ? "spam" : "ham")}\"}}";
        }));
    }

    [OneTimeTearDown]
    public void Delete() => Directory.Delete(_dir, recursive: true);

    [Test]
    [Category(TestCategories.Slow)]
    public void ABf16CheckpointWithLowPrecisionLayerNormPredictsAsEvalComputes()
    {
        string data = Path.Combine(_dir, "short.jsonl");
        string dataset = $"{{name: jsonl_classification, path: {data}, max_length: 64, labels: [ham, spam]}}";
        string ckpt = Train("bf16", dataset, maxSequenceLength: 64, extra: "precision: amp_bf16\nalgorithms: {low_precision_layernorm: {}}");

        // eval as trained: the training config's precision and algorithms, the checkpoint as load_path.
        (double evalCe, double evalAccuracy) = Evaluate("bf16-eval", ckpt, dataset, "precision: amp_bf16\nalgorithms: {low_precision_layernorm: {}}");

        (double ce, double accuracy, string error) = Predict(ckpt, data);
        Assert.That(error, Does.Contain("precision amp_bf16 (as recorded)").And.Contain("low_precision_layernorm"), "predict says how it computes");
        Assert.That(accuracy, Is.EqualTo(evalAccuracy), "predict's accuracy is eval's");
        Assert.That(ce, Is.EqualTo(evalCe).Within(Agreement * evalCe), "predict's probabilities are those of eval's logits");

        // The control: fp32 without the surgery's effect is what predict computed before, and is measurably different.
        (double fp32Ce, _, string fp32Error) = Predict(ckpt, data, "--precision", "fp32");
        Assert.That(fp32Error, Does.Contain("precision fp32 (--precision)"));
        Assert.That(Math.Abs(fp32Ce - evalCe), Is.GreaterThan(10 * Agreement * evalCe), "fp32 logits differ from bf16 ones beyond the tolerance, so the comparison above can fail");

        using TextClassifier classifier = TextClassifier.Load(ckpt);
        Assert.That(classifier.Precision, Is.EqualTo(ComposerSharp.Core.Precision.AmpBf16), "the library type takes the checkpoint's precision too");
        Assert.That(classifier.Loaded.Algorithms, Has.Some.StartsWith("low_precision_layernorm"));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void AModelLongerThanItsDataPredictsAsEvalTruncates()
    {
        string data = Path.Combine(_dir, "long.jsonl");
        string dataset = $"{{name: jsonl_classification, path: {data}, max_length: 32, labels: [ham, spam]}}";
        string ckpt = Train("long", dataset, maxSequenceLength: 128, extra: string.Empty);
        ModelDescription described = CheckpointModel.ReadDescription(ckpt);
        Assert.That(described.Input, Is.EqualTo(new TextInputDescription { MaxLength = 32, PrependCls = true }), "the checkpoint records the data's max_length");

        (double evalCe, double evalAccuracy) = Evaluate("long-eval", ckpt, dataset, string.Empty);
        (double ce, double accuracy, string error) = Predict(ckpt, data);
        Assert.That(error, Does.Contain("max length 32 (the data's max_length, as recorded)"));
        Assert.That(accuracy, Is.EqualTo(evalAccuracy));
        Assert.That(ce, Is.EqualTo(evalCe).Within(Agreement * evalCe));

        // The control: the model's 128 positions (what predict used before) read more of each text and score differently.
        (double wholeCe, _, _) = Predict(ckpt, data, "--max-length", "128");
        Assert.That(Math.Abs(wholeCe - evalCe), Is.GreaterThan(10 * Agreement * evalCe), "texts longer than 32 tokens give other logits uncut, so the comparison above can fail");

        using (TextClassifier classifier = TextClassifier.Load(ckpt))
        {
            Assert.That(classifier.MaxLength, Is.EqualTo(32));
        }

        // A checkpoint written before the data's settings were recorded: the model's whole context, with cls, as before.
        using (TextClassifier old = TextClassifier.Load(ckpt, described with { Input = null }))
        {
            Assert.That(old.MaxLength, Is.EqualTo(128));
        }

        Assert.That(
            () => TextClassifier.Load(ckpt, options: new InferenceOptions { MaxLength = 129 }),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("129").And.Message.Contains("max_sequence_length 128"));
    }

    [TestCase("--max-length", "0", "--max-length is '0'; expected a whole number of at least 1")]
    [TestCase("--max-length", "500", "--max-length is 500; expected at most the model's max_sequence_length 128")]
    [TestCase("--precision", "bf16", "--precision is 'bf16'; expected fp32, amp_bf16 or amp_fp16")]
    public void BadPredictOptionsAreNamedWithExitCode2(string option, string value, string expected)
    {
        string data = Path.Combine(_dir, "long.jsonl");
        string ckpt = Train("long", $"{{name: jsonl_classification, path: {data}, max_length: 32, labels: [ham, spam]}}", maxSequenceLength: 128, extra: string.Empty);
        var error = new StringWriter();
        TextWriter original = Console.Error;
        Console.SetError(error);
        try
        {
            Assert.That(CliApp.Run(new[] { "predict", "--load-path", ckpt, "--input", data, option, value }, new StringWriter()), Is.EqualTo(CliApp.ConfigErrorExitCode));
        }
        finally
        {
            Console.SetError(original);
        }

        Assert.That(error.ToString(), Does.Contain(expected));
    }

    private readonly Dictionary<string, string> _trained = new();

    /// <summary>Trains a tiny classifier for a few batches (once per name) and returns its last checkpoint.</summary>
    private string Train(string name, string dataset, int maxSequenceLength, string extra)
    {
        if (_trained.TryGetValue(name, out string? done))
        {
            return done;
        }

        string folder = Path.Combine(_dir, name);
        string yaml = $$"""
            run_folder: {{folder}}
            max_duration: 18ba
            progress_bar: false
            model: {name: bert_classification, {{Tiny}}, max_sequence_length: {{maxSequenceLength}}}
            train_loader: {batch_size: 8, shuffle: true, dataset: {{dataset}}}
            optimizer: {name: adamw, lr: 0.01}
            {{extra}}
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        new TrainJob(ConfigSection.Parse(yaml), services).Train();
        return _trained[name] = Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*-ba18-rank0.ckpt").Single();
    }

    /// <summary>Evaluates <paramref name="ckpt"/> on <paramref name="dataset"/> in batches of 16; returns eval's CrossEntropy and Accuracy.</summary>
    private (double CrossEntropy, double Accuracy) Evaluate(string name, string ckpt, string dataset, string extra)
    {
        string yaml = $$"""
            run_folder: {{_dir}}/{{name}}
            progress_bar: false
            load_path: {{ckpt}}
            eval_loader: {batch_size: 16, dataset: {{dataset}}}
            {{extra}}
            """;
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        IReadOnlyDictionary<string, double> metrics = new TrainJob(ConfigSection.Parse(yaml), services).Evaluate().FinalMetrics;
        return (metrics["metrics/eval/CrossEntropy"], metrics["metrics/eval/Accuracy"]);
    }

    /// <summary>Runs <c>predict</c> in batches of 16 (eval's); returns the mean −ln p(true label), the accuracy and what it wrote to stderr.</summary>
    private (double CrossEntropy, double Accuracy, string Error) Predict(string ckpt, string input, params string[] options)
    {
        string output = Path.Combine(_dir, "predictions-" + Guid.NewGuid().ToString("N") + ".jsonl");
        var error = new StringWriter();
        TextWriter original = Console.Error;
        Console.SetError(error);
        try
        {
            string[] args = new[] { "predict", "--load-path", ckpt, "--input", input, "--output", output, "--batch-size", "16" }.Concat(options).ToArray();
            Assert.That(CliApp.Run(args, new StringWriter()), Is.Zero, () => error.ToString());
        }
        finally
        {
            Console.SetError(original);
        }

        double sum = 0;
        int correct = 0;
        string[] lines = File.ReadAllLines(output);
        foreach (string line in lines)
        {
            JsonElement row = JsonDocument.Parse(line).RootElement;
            string truth = row.GetProperty("true_label").GetString()!;
            sum -= Math.Log(row.GetProperty("probabilities").GetProperty(truth).GetDouble());
            correct += row.GetProperty("label").GetString() == truth ? 1 : 0;
        }

        return (sum / lines.Length, correct / (double)lines.Length, error.ToString());
    }
}
