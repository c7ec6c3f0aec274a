using ComposerSharp.Cli;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

[TestFixture]
public class TrainCommandTests
{
    [Test]
    public void DefaultConfigTrainsAndWritesRunFolder()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-cli-" + Guid.NewGuid().ToString("N"));
        var output = new StringWriter();
        try
        {
            int code = CliApp.Run(
                new[]
                {
                    "train", "--max-duration", "3ba", "--run-folder", folder, "--progress-bar", "false",
                    "--set", "train_loader.dataset.num_samples=256", "--set", "eval_loader.dataset.num_samples=64",
                    "--set", "train_loader.batch_size=8",
                },
                output);
            Assert.That(code, Is.EqualTo(0), output.ToString());
            string summary = output.ToString();
            Assert.That(summary, Does.Contain("Run summary").And.Contain("low_precision_layernorm: modules replaced").And.Contain("metrics/eval/CrossEntropy"));
            Assert.That(File.Exists(Path.Combine(folder, "metrics.jsonl")), Is.True);
            Assert.That(Directory.GetFiles(Path.Combine(folder, "tensorboard"), "events.out.tfevents*", SearchOption.AllDirectories), Is.Not.Empty);
            Assert.That(new FileInfo(Path.Combine(folder, "loss.png")).Length, Is.GreaterThan(1000));
            // The default run saves a checkpoint at the end of training (the "1ep" save interval is crossed by the end of fit).
            Assert.That(Directory.Exists(Path.Combine(folder, "checkpoints")), Is.True);
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }

    [Test]
    public void DeterministicModeKeyReachesTheTrainerAndIsRecordedWithTheHyperparameters()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-cli-" + Guid.NewGuid().ToString("N"));
        var output = new StringWriter();
        try
        {
            int code = CliApp.Run(
                new[]
                {
                    "train", "--max-duration", "2ba", "--run-folder", folder, "--progress-bar", "false", "--deterministic-mode", "true",
                    "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8",
                },
                output);
            Assert.That(code, Is.EqualTo(0), output.ToString());
            string metrics = File.ReadAllText(Path.Combine(folder, "metrics.jsonl"));
            Assert.That(metrics, Does.Contain("\"deterministic_mode\":true"), metrics.Length > 2000 ? metrics[..2000] : metrics);
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }
}

[TestFixture]
public class TrainJobModelsTests
{
    [TestCase("bert_classification", "synthetic_classification", "pooling: mean\n  num_labels: 3", "num_classes: 3\n    num_samples: 64\n    pad_to_length: 64", "metrics/eval/Accuracy")]
    [TestCase("gpt", "synthetic_mlm", "preset: gpt-tiny", "num_samples: 64\n    sequence_length: 32", "metrics/eval/Perplexity")]
    public void EachModelKindTrainsFromConfig(string model, string dataset, string modelArgs, string datasetArgs, string expectedMetric)
    {
        // gpt reads causal-LM batches; the synthetic MLM data also carries input_ids/labels of the right shape.
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-job-" + Guid.NewGuid().ToString("N"));
        string yaml = $"""
            run_folder: {folder}
            max_duration: 2ba
            progress_bar: false
            model:
              name: {model}
              {modelArgs}
            train_loader:
              batch_size: 8
              dataset:
                name: {dataset}
                {datasetArgs}
            eval_loader:
              batch_size: 16
              dataset:
                name: {dataset}
                {datasetArgs}
            """;
        try
        {
            using var services = ComposerSharp.Cli.CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
            var job = new TrainJob(ComposerSharp.Cli.Configuration.ConfigSection.Parse(yaml), services);
            JobResult result = job.Train();
            Assert.That(result.Timestamp.Batch, Is.EqualTo(2));
            Assert.That(result.FinalMetrics.Keys, Does.Contain(expectedMetric));
            Assert.That(double.IsFinite(result.FinalMetrics[expectedMetric]), Is.True);
        }
        finally
        {
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }
}
