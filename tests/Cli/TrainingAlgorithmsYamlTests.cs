using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Tests.Support;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// Each training-time algorithm trains from the CLI's YAML by its registered name with Composer's option names, and
/// the checkpoint records it with the values given.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class TrainingAlgorithmsYamlTests
{
    private const string Data = """
        model:
          name: bert_mlm
        train_loader:
          batch_size: 8
          dataset:
            name: synthetic_mlm
            num_samples: 32
            sequence_length: 16
        progress_bar: false
        max_duration: 2ba
        save_interval: 2ba
        """;

    [TestCase("ema", "half_life: 4ba\n    ema_start: 0.5dur", "half_life", "4ba")]
    [TestCase("label_smoothing", "smoothing: 0.15", "smoothing", "0.15")]
    [TestCase("layer_freezing", "freeze_start: 0.0\n    freeze_level: 0.5", "freeze_level", "0.5")]
    [TestCase("sam", "rho: 0.1\n    interval: 2", "interval", "2")]
    [TestCase("selective_backprop", "start: 0.0\n    end: 1.0\n    keep: 0.5\n    interrupt: 0", "keep", "0.5")]
    [TestCase("gradient_clipping", "clipping_type: adaptive\n    clipping_threshold: 0.05", "clipping_type", "adaptive")]
    public void TheAlgorithmTrainsFromYamlAndTheCheckpointRecordsIt(string name, string options, string key, string value)
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-yaml-" + Guid.NewGuid().ToString("N"));
        try
        {
            using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
            string yaml = Data + $"\nrun_folder: {folder}\nalgorithms:\n  {name}:\n    {options}\n";
            JobResult result = new TrainJob(ConfigSection.Parse(yaml), provider).Train();
            Assert.That(result.Timestamp.Batch, Is.EqualTo(2));
            using CheckpointReader reader = CheckpointFile.Open(Path.Combine(folder, "checkpoints", "latest-rank0.ckpt"));
            AlgorithmRecord record = reader.Header.Algorithms.Single(a => a.Name == name);
            Assert.That(record.Hyperparameters[key], Is.EqualTo(value));
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
