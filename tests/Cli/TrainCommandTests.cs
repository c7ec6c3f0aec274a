using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

[TestFixture]
[Category(TestCategories.Slow)]
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
[Category(TestCategories.Slow)]
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

[TestFixture]
public class RunFolderTests
{
    [Test]
    public void ASecondRunInALockedFolderIsRefusedWithExitCode2AndAStaleLockIsTakenOver()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-lock-" + Guid.NewGuid().ToString("N"));
        var log = new CapturingLoggerFactory();
        try
        {
            using (RunFolderLock.Acquire(folder, log.CreateLogger("test")))
            {
                (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false" });
                Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
                Assert.That(error, Does.Contain("is in use by process " + Environment.ProcessId));
                Assert.That(Directory.GetFileSystemEntries(folder).Select(Path.GetFileName), Is.EquivalentTo(new[] { RunFolderLock.FileName, RunFolderLock.FileName + ".info" }), "the refused run touched nothing");
            }

            // A crashed holder leaves its description behind; the next run takes the lock over and says so.
            File.WriteAllText(Path.Combine(folder, RunFolderLock.FileName + ".info"), "process 999999 on elsewhere");
            using (RunFolderLock.Acquire(folder, log.CreateLogger("test")))
            {
                Assert.That(log.Warnings, Has.Some.Contains("left by process 999999"));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ReRunningACommandIsRefusedBeforeAnyFileIsTouchedAndSaveOverwriteStartsAfresh()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-rerun-" + Guid.NewGuid().ToString("N"));
        string[] args =
        {
            "train", "--max-duration", "2ba", "--run-folder", folder, "--progress-bar", "false",
            "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8",
        };
        try
        {
            Assert.That(CliRun.Captured(args).Code, Is.Zero);
            string metrics = Path.Combine(folder, "metrics.jsonl");
            byte[] before = File.ReadAllBytes(metrics);
            int events = Directory.GetFiles(Path.Combine(folder, "tensorboard"), "*", SearchOption.AllDirectories).Length;

            (int code, _, string error) = CliRun.Captured(args);
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain("already holds").And.Contain("--autoresume true").And.Contain("--save-overwrite true"));
            Assert.That(File.ReadAllBytes(metrics), Is.EqualTo(before), "metrics.jsonl untouched");
            Assert.That(Directory.GetFiles(Path.Combine(folder, "tensorboard"), "*", SearchOption.AllDirectories), Has.Length.EqualTo(events), "no new TensorBoard file");

            (code, _, error) = CliRun.Captured(args.Append("--save-overwrite").Append("true").ToArray());
            Assert.That(code, Is.Zero, error);
            Assert.That(File.ReadLines(metrics).Count(l => l.Contains("\"hyperparameters\"", StringComparison.Ordinal)), Is.EqualTo(1), "metrics.jsonl started afresh");
            Assert.That(Directory.GetFiles(Path.Combine(folder, "tensorboard"), "events.out.tfevents*", SearchOption.AllDirectories), Has.Length.EqualTo(1));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void SaveBestFromTheCommandLineKeepsTheBestCheckpointAndABadComparisonIsAConfigurationError()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-best-" + Guid.NewGuid().ToString("N"));
        string[] args =
        {
            "train", "--max-duration", "3ba", "--run-folder", folder, "--progress-bar", "false", "--eval-interval", "1ba",
            "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8",
        };
        try
        {
            (int code, _, string error) = CliRun.Captured(args.Concat(new[] { "--set", "save_best={monitor: CrossEntropy, comp: sideways}" }).ToArray());
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode));
            Assert.That(error, Does.Contain("save_best.comp").And.Contain("sideways"));

            (code, _, error) = CliRun.Captured(args.Concat(new[] { "--set", "save_best={monitor: CrossEntropy}" }).ToArray());
            Assert.That(code, Is.Zero, error);
            Assert.That(File.Exists(Path.Combine(folder, "checkpoints", "best-rank0.ckpt")), Is.True);
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
    [Category(TestCategories.Slow)]
    public void TheRunFolderHoldsTheResolvedConfigurationWhichReadsBackToTheSameValues()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-cfg-" + Guid.NewGuid().ToString("N"));
        try
        {
            var output = new StringWriter();
            int code = CliApp.Run(
                new[]
                {
                    "train", "--max-duration", "2ba", "--run-folder", folder, "--progress-bar", "false", "--set", "optimizer.lr=3.5e-4",
                    "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8",
                },
                output);
            Assert.That(code, Is.Zero, output.ToString());
            ConfigSection saved = ConfigSection.LoadFile(Path.Combine(folder, "config.yaml"));
            Assert.That(saved.Section("optimizer").GetDouble("lr"), Is.EqualTo(3.5e-4));
            Assert.That(saved.GetString("max_duration"), Is.EqualTo("2ba"));
            Assert.That(saved.Section("train_loader").Section("dataset").GetLong("num_samples"), Is.EqualTo(64));
            Assert.That(saved.ToYaml(), Is.EqualTo(CliApp.LoadConfig(null, new[] { "optimizer.lr=3.5e-4", "train_loader.dataset.num_samples=64", "eval_loader.dataset.num_samples=16", "train_loader.batch_size=8" },
                new[] { KeyValuePair.Create("max_duration", "2ba"), KeyValuePair.Create("run_folder", folder), KeyValuePair.Create("progress_bar", "false") }).ToYaml()));
            Assert.That(File.Exists(Path.Combine(folder, RunFolderLock.FileName + ".info")), Is.False, "the lock's description is removed at the end");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

[TestFixture]
[Category(TestCategories.Slow)]
public class AutoresumeCliTests
{
    [Test]
    public void AutoresumingAFinishedRunSaysItIsCompleteAndExitsZero()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-done-" + Guid.NewGuid().ToString("N"));
        string[] args =
        {
            "train", "--max-duration", "2ba", "--run-folder", folder, "--run-name", "done", "--progress-bar", "false", "--autoresume", "true",
            "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8",
        };
        try
        {
            Assert.That(CliApp.Run(args, new StringWriter()), Is.Zero);
            var summary = new StringWriter();
            (int code, string log, _) = CliRun.Captured(args, summary);
            Assert.That(code, Is.Zero, log);
            Assert.That(log, Does.Contain("is already complete").And.Contain("nothing to train"));
            Assert.That(summary.ToString(), Does.Match(@"batches\s*[│|]?\s*2\b"));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

[TestFixture]
[Category(TestCategories.Slow)]
public class EvalCliTests
{
    [Test]
    public void EvalReportsTheBatchesItEvaluatedAndLeavesNoEmptyOrFailedFolders()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-eval-" + Guid.NewGuid().ToString("N"));
        string[] data = { "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=24", "--set", "train_loader.batch_size=8", "--set", "eval_loader.batch_size=8" };
        try
        {
            Assert.That(CliApp.Run(new[] { "train", "--max-duration", "2ba", "--run-folder", folder, "--progress-bar", "false" }.Concat(data).ToArray(), new StringWriter()), Is.Zero);
            string checkpoint = Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*-ba2-*.ckpt").Single();

            var summary = new StringWriter();
            int code = CliApp.Run(new[] { "eval", "--load-path", checkpoint, "--run-folder", folder, "--progress-bar", "false" }.Concat(data).ToArray(), summary);
            Assert.That(code, Is.Zero, summary.ToString());
            Assert.That(summary.ToString(), Does.Match(@"batches\s*[│|]?\s*3\b").And.Match(@"samples\s*[│|]?\s*24\b"), "3 eval batches of 8, not the checkpoint's training counters");
            string evalFolder = Directory.GetDirectories(folder, "eval-*").Single();
            Assert.That(Directory.Exists(Path.Combine(evalFolder, "checkpoints")), Is.False, "no empty checkpoints folder");

            Thread.Sleep(1100); // a new eval-<time> stamp
            (code, _, string error) = CliRun.Captured(new[] { "eval", "--load-path", Path.Combine(folder, "missing.ckpt"), "--run-folder", folder, "--progress-bar", "false" }.Concat(data).ToArray());
            Assert.That(code, Is.Not.Zero);
            Assert.That(Directory.GetDirectories(folder, "eval-*"), Has.Length.EqualTo(1), "the failed evaluation left no folder: " + error);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

[TestFixture]
public class CommandLineErrorTests
{
    private static (int Code, string Error) Run(params string[] args)
    {
        (int code, _, string error) = CliRun.Captured(args);
        return (code, error);
    }

    [Test]
    public void AMisspelledOptionIsAShortErrorWithExitCode2NotTheWholeHelp()
    {
        (int code, string error) = Run("train", "--max-durration", "1ba");
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode));
        Assert.That(error, Does.Contain("--max-durration").And.Contain("See 'composersharp train --help'"));
        Assert.That(error.Split('\n').Length, Is.LessThan(8), error);
    }

    [Test]
    public void AMicrobatchSizeOfZeroIsAConfigurationErrorNamingTheKey()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-mb-" + Guid.NewGuid().ToString("N"));
        try
        {
            (int code, string error) = Run("train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false", "--device-train-microbatch-size", "0",
                "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16");
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain("configuration error: 'device_train_microbatch_size'").And.Contain("at least 1").And.Contain("(got 0)"));
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

/// <summary>Runs the CLI in-process with the console's output and error captured.</summary>
internal static class CliRun
{
    private static readonly object Gate = new();

    /// <summary>Runs <paramref name="args"/>; the summary goes to <paramref name="summary"/> (discarded when null).</summary>
    internal static (int Code, string Out, string Err) Captured(string[] args, TextWriter? summary = null)
    {
        lock (Gate)
        {
            var output = new StringWriter();
            var error = new StringWriter();
            TextWriter originalOut = Console.Out, originalError = Console.Error;
            Console.SetOut(output);
            Console.SetError(error);
            try
            {
                return (CliApp.Run(args, summary ?? new StringWriter()), output.ToString(), error.ToString());
            }
            finally
            {
                Console.SetOut(originalOut);
                Console.SetError(originalError);
            }
        }
    }
}

[TestFixture]
public class HelpTests
{
    [Test]
    public void HelpShowsTheDefaultConfigsValues()
    {
        (int code, string output, _) = CliRun.Captured(new[] { "train", "--help" });
        Assert.That(code, Is.Zero);
        Assert.That(output, Does.Contain("Default config: 1ep").And.Contain("Default config: amp_bf16").And.Contain("Default config: low_precision_layernorm"));
    }
}

[TestFixture]
[Category(TestCategories.Slow)]
public class FineTuneCommandTests
{
    [Test]
    public void MlmPretrainingThenClassificationFineTuningRunsFromTheCommandLine()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-finetune-" + Guid.NewGuid().ToString("N"));
        const string Tiny = "--set=model.hidden_size=32 --set=model.num_heads=4 --set=model.intermediate_size=64 --set=model.max_sequence_length=64";
        try
        {
            var output = new StringWriter();
            int code = CliApp.Run(
                ($"train --max-duration 2ba --run-folder {folder}/mlm --progress-bar false {Tiny} "
                 + "--set=train_loader.dataset.num_samples=64 --set=train_loader.dataset.regular_vocab_size=1024 --set=train_loader.batch_size=8 "
                 + "--set=eval_loader.dataset.num_samples=16 --set=eval_loader.dataset.regular_vocab_size=1024 --set=eval_loader.dataset.first_index=64").Split(' '),
                output);
            Assert.That(code, Is.Zero, output.ToString());
            string checkpoint = Directory.GetFiles(Path.Combine(folder, "mlm", "checkpoints"), "ep*.ckpt").Single();

            string yaml = Path.Combine(Path.GetTempPath(), "finetune-" + Guid.NewGuid().ToString("N") + ".yaml");
            File.WriteAllText(yaml, """
                max_duration: 2ba
                progress_bar: false
                model: {name: bert_classification, hidden_size: 32, num_heads: 4, intermediate_size: 64, max_sequence_length: 64}
                train_loader: {batch_size: 8, dataset: {name: synthetic_classification, num_samples: 32, regular_vocab_size: 1024, max_length: 32}}
                """);
            int fine = CliApp.Run(
                new[] { "train", "--config", yaml, "--run-folder", $"{folder}/cls", "--load-path", checkpoint, "--load-weights-only", "true", "--load-strict-model-weights", "false" },
                output);
            File.Delete(yaml);
            Assert.That(fine, Is.Zero, output.ToString());
            Assert.That(output.ToString(), Does.Contain("metrics/train/Accuracy"));
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
