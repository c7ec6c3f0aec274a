using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// The transformer algorithms train from the CLI YAML by name with Composer's option names: two batches of a tiny
/// BERT MLM (or GPT) on synthetic data, a checkpoint, and an evaluation from it, which re-creates the required-on-load ones.
/// </summary>
[TestFixture]
[Category(TestCategories.Slow)]
public class TransformerAlgorithmYamlTests
{
    [TestCase("bert_mlm", "synthetic_mlm", "gated_linear_units:\n    act_fn: silu\n    gated_layer_bias: true", "gated_linear_units/modules_replaced", 2.0, true)]
    [TestCase("bert_mlm", "synthetic_mlm", "alibi:\n    max_sequence_length: 64\n    train_sequence_length_scaling: 0.5", "alibi/modules_replaced", 1.0, true)]
    [TestCase("bert_mlm", "synthetic_mlm", "seq_length_warmup:\n    duration: 0.5\n    min_seq_length: 8\n    max_seq_length: 16\n    step_size: 8\n    truncate: false", "seq_length_warmup/curr_seq_len", 16.0, false)]
    [TestCase("bert_mlm", "synthetic_mlm", "stochastic_depth:\n    drop_rate: 0.1\n    drop_distribution: uniform\n    drop_warmup: 0.5", "stochastic_depth/drop_rate", 0.1, false)]
    public void TheAlgorithmTrainsFromYamlByName(string model, string dataset, string algorithmYaml, string metric, double expected, bool requiredOnLoad)
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-algo-yaml-" + Guid.NewGuid().ToString("N"));
        string data = $"""
            model:
              name: {model}
              max_sequence_length: 32
            train_loader:
              batch_size: 4
              dataset:
                name: {dataset}
                num_samples: 8
                sequence_length: 16
            eval_loader:
              batch_size: 4
              dataset:
                name: {dataset}
                num_samples: 4
                sequence_length: 16
            progress_bar: false
            precision: amp_bf16
            """;
        try
        {
            using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
            string train = data + $"\nrun_folder: {folder}\nmax_duration: 2ba\nsave_interval: 2ba\nalgorithms:\n  low_precision_layernorm: {{}}\n  {algorithmYaml}\n";
            JobResult trained = new TrainJob(ConfigSection.Parse(train), provider).Train();
            Assert.That(trained.FinalMetrics[metric], Is.EqualTo(expected));
            Assert.That(trained.FinalMetrics.Keys.Where(k => k.StartsWith("metrics/eval/CrossEntropy", StringComparison.Ordinal)), Is.Not.Empty);

            string eval = data + $"\nrun_folder: {folder}\nload_path: {Path.Combine(folder, "checkpoints", "latest-rank0.ckpt")}\n";
            JobResult evaluated = new TrainJob(ConfigSection.Parse(eval), provider).Evaluate();
            if (requiredOnLoad)
            {
                Assert.That(evaluated.FinalMetrics[metric], Is.EqualTo(expected), "re-created from the checkpoint with its options");
            }
            else
            {
                Assert.That(evaluated.FinalMetrics.ContainsKey(metric), Is.False, "not required on load: evaluation runs without it");
            }
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
