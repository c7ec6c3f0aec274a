using ComposerSharp.Cli;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// Defects found by trying the CLI as a new user would: each refusal names the key or option, the value and what is
/// expected, with exit code 2, before anything is trained or written.
/// </summary>
[TestFixture]
public class NewUserTrialTests
{
    private readonly List<string> _folders = new();

    /// <summary>A path for a run folder that does not exist yet; removed after the test.</summary>
    private string NewFolder()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-trial-" + Guid.NewGuid().ToString("N"));
        _folders.Add(folder);
        return folder;
    }

    [TearDown]
    public void RemoveFolders()
    {
        foreach (string folder in _folders.Where(Directory.Exists))
        {
            Directory.Delete(folder, recursive: true);
        }

        _folders.Clear();
    }

    [TestCase("model.num_layers=-1", "'model.num_layers' is '-1': must be at least 1")]
    [TestCase("model.dropout=2", "'model.dropout' is '2': must be a probability")]
    [TestCase("train_loader.dataset.num_samples=-3", "'train_loader.dataset.num_samples' is '-3': must be at least 1")]
    [TestCase("train_loader.dataset.mlm_probability=1.5", "'train_loader.dataset.mlm_probability' is '1.5': must be a probability")]
    public void ALibraryRefusalIsReportedAsTheYamlKeyWithoutDotNetWording(string set, string expected)
    {
        string folder = NewFolder();
        (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false", "--set", set });
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
        Assert.That(error, Does.Contain(expected));
        Assert.That(error, Does.Not.Contain("(Parameter '").And.Not.Contain("Actual value was"), "no .NET exception wording");
    }

    [Test]
    public void SamplesLongerThanTheModelNameTheYamlKeysWithoutDotNetWording()
    {
        string folder = NewFolder();
        (int code, _, string error) = CliRun.Captured(new[]
        {
            "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false", "--set", "train_loader.dataset.sequence_length=1000",
        });
        Assert.That(code, Is.Not.Zero, error);
        Assert.That(error, Does.Contain("1000 tokens per sample").And.Contain("max_sequence_length").And.Contain("is 128").And.Contain("sequence_length or block_size"));
        Assert.That(error, Does.Not.Contain("(Parameter '"), "no .NET exception wording");
    }

    [Test]
    public void ARunFolderThatCannotBeCreatedIsAConfigurationErrorNotAStackTrace()
    {
        // A path through a regular file: the folder cannot be created (as on a read-only file system).
        string file = Path.GetTempFileName();
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", Path.Combine(file, "run"), "--progress-bar", "false" });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain("cannot be used").And.Contain("writable --run-folder"));
            Assert.That(error, Does.Not.Contain("   at "), "no stack trace");
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Test]
    public void ALockFileThatCannotBeOpenedIsNotReportedAsAFolderInUse()
    {
        // The lock file's name is taken by a folder: opening it fails for a reason other than another run's lock
        // (as on a read-only file system, where the message used to say "in use by another process").
        string folder = NewFolder();
        Directory.CreateDirectory(Path.Combine(folder, RunFolderLock.FileName));
        (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false" });
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
        Assert.That(error, Does.Contain("cannot be used").And.Not.Contain("in use by"));
        Assert.That(error, Does.Not.Contain("   at "), "no stack trace");
    }

    [TestCase("--top-k", "0")]
    [TestCase("--batch-size", "0")]
    [TestCase("--top-k", "-2")]
    public void PredictChecksItsNumbersBeforeReadingAnythingAndWritesNoOutputFile(string option, string value)
    {
        string folder = NewFolder();
        Directory.CreateDirectory(folder);
        string input = Path.Combine(folder, "in.txt");
        File.WriteAllText(input, "The [MASK] was white.\n");
        string output = Path.Combine(folder, "out.jsonl");
        // The checkpoint does not exist: the bad number is reported first, named as the command line spells it.
        (int code, _, string error) = CliRun.Captured(new[] { "predict", "--load-path", Path.Combine(folder, "missing.ckpt"), "--input", input, "--output", output, option, value });
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
        Assert.That(error, Does.Contain($"{option} is {value}; expected a whole number of at least 1"));
        Assert.That(File.Exists(output), Is.False);
    }

    [Test]
    public void PredictWithACheckpointItCannotUseLeavesNoEmptyOutputFile()
    {
        string folder = NewFolder();
        Directory.CreateDirectory(folder);
        string input = Path.Combine(folder, "in.txt");
        File.WriteAllText(input, "The [MASK] was white.\n");
        string output = Path.Combine(folder, "out.jsonl");
        (int code, _, string error) = CliRun.Captured(new[] { "predict", "--load-path", Path.Combine(folder, "missing.ckpt"), "--input", input, "--output", output });
        Assert.That(code, Is.Not.EqualTo(0), error);
        Assert.That(error, Does.Contain("missing.ckpt"));
        Assert.That(File.Exists(output), Is.False, "no empty predictions file for a run that predicted nothing");
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void ARunThatFailedWhileStartingLeavesNothingTheNextRunAppendsTo()
    {
        string folder = NewFolder();
        string[] small = { "--progress-bar", "false", "--eval-interval", "0", "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16" };
        // A batch larger than the dataset with drop_last: the Trainer refuses after the run folder was opened.
        (int failed, _, string failure) = CliRun.Captured(new[] { "train", "--max-duration", "2ba", "--run-folder", folder, "--set", "train_loader.batch_size=128" }.Concat(small).ToArray());
        Assert.That(failed, Is.Not.EqualTo(0), failure);
        Assert.That(failure, Does.Contain("no batches per epoch"));

        (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "2ba", "--run-folder", folder, "--set", "train_loader.batch_size=8" }.Concat(small).ToArray());
        Assert.That(code, Is.EqualTo(0), error);
        string[] lines = File.ReadAllLines(Path.Combine(folder, "metrics.jsonl"));
        Assert.That(lines.Count(l => l.Contains("\"hyperparameters\"", StringComparison.Ordinal)), Is.EqualTo(1), "one run's header, not the failed run's too");
        Assert.That(Directory.GetFiles(Path.Combine(folder, "tensorboard"), "events.out.tfevents*", SearchOption.AllDirectories), Has.Length.EqualTo(1));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void MetricsOfARunThatTrainedButSavedNoCheckpointAreRefusedThenStartedAfreshByAutoresume()
    {
        // As a process killed before its first checkpoint leaves them.
        string folder = NewFolder();
        Directory.CreateDirectory(folder);
        string metrics = Path.Combine(folder, "metrics.jsonl");
        string earlier = "{\"hyperparameters\":{\"run_name\":\"earlier\"}}\n{\"step\":0,\"time\":\"2026-01-01T00:00:00Z\",\"metrics\":{\"loss/train/total\":6.1}}\n";
        File.WriteAllText(metrics, earlier);
        string[] args = { "train", "--max-duration", "2ba", "--run-folder", folder, "--run-name", "killed", "--progress-bar", "false", "--eval-interval", "0", "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8" };
        (int refused, _, string why) = CliRun.Captured(args);
        Assert.That(refused, Is.EqualTo(CliApp.ConfigErrorExitCode), why);
        Assert.That(why, Does.Contain("trained but saved no checkpoint").And.Contain("--save-overwrite true"));
        Assert.That(File.ReadAllText(metrics), Is.EqualTo(earlier), "the refused run touched nothing");

        (int code, _, string error) = CliRun.Captured(args.Concat(new[] { "--autoresume", "true" }).ToArray());
        Assert.That(code, Is.EqualTo(0), error);
        string[] lines = File.ReadAllLines(metrics);
        Assert.That(lines.Count(l => l.Contains("\"hyperparameters\"", StringComparison.Ordinal)), Is.EqualTo(1));
        Assert.That(lines.Count(l => l.Contains("\"step\":0,", StringComparison.Ordinal) && l.Contains("loss/train/total", StringComparison.Ordinal)), Is.EqualTo(1), "step 0 once");
        Assert.That(File.ReadAllText(metrics), Does.Not.Contain("\"earlier\""));
    }

    [Test]
    public void AModelTooLargeForMemoryIsOneLineWithTheSizeNotLibTorchsFrames()
    {
        string folder = NewFolder();
        (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false", "--set", "model.vocab_size=2000000000" });
        Assert.That(code, Is.EqualTo(1), error);
        Assert.That(error, Does.Contain("libtorch error").And.Contain("GiB").And.Contain("does not fit in memory"));
        Assert.That(error, Does.Not.Contain("frame #"), "no C++ frames without --verbose");
    }

    [TestCase("a: &x [*x]\n", "nested more than")]
    [TestCase("a: &x {b: *x}\n", "nested more than")]
    public void ARecursiveYamlAliasIsAConfigurationErrorNotAStackOverflow(string yaml, string expected)
    {
        var ex = Assert.Throws<ComposerSharp.Cli.Configuration.ConfigException>(() => ComposerSharp.Cli.Configuration.ConfigSection.Parse(yaml, "x.yaml"));
        Assert.That(ex!.Message, Does.Contain("x.yaml").And.Contain(expected).And.Contain("line 1"));
    }

    [Test]
    public void AliasesThatMultiplyBeyondAnyRealConfigAreRefused()
    {
        // The "billion laughs": each level repeats the one before ten times (10^6 values at the last level).
        var yaml = new System.Text.StringBuilder("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for (int i = 1; i <= 6; i++)
        {
            yaml.Append(System.Globalization.CultureInfo.InvariantCulture, $"l{i}: &l{i} [{string.Join(", ", Enumerable.Repeat($"*l{i - 1}", 10))}]\n");
        }

        var ex = Assert.Throws<ComposerSharp.Cli.Configuration.ConfigException>(() => ComposerSharp.Cli.Configuration.ConfigSection.Parse(yaml.ToString(), "laughs.yaml"));
        Assert.That(ex!.Message, Does.Contain("expands to more than"));
    }

    [Test]
    public void AnIntegerOutOfRangeNamesTheRange()
    {
        string folder = NewFolder();
        (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--seed", "99999999999999" });
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
        Assert.That(error, Does.Contain("'seed' is '99999999999999'").And.Contain("from -2147483648 to 2147483647"));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void EvalAndExportUseACheckpointDamagedOnlyInItsOptimizerState()
    {
        string folder = NewFolder();
        string[] small = { "--progress-bar", "false", "--eval-interval", "0", "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", "train_loader.batch_size=8" };
        (int trained, _, string trainError) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder }.Concat(small).ToArray());
        Assert.That(trained, Is.EqualTo(0), trainError);
        string checkpoint = Directory.GetFiles(Path.Combine(folder, "checkpoints"), "ep*.ckpt").Single();
        using (var zip = System.IO.Compression.ZipFile.Open(checkpoint, System.IO.Compression.ZipArchiveMode.Update))
        {
            zip.GetEntry("optimizers/0.bin")!.Delete();
            using Stream replaced = zip.CreateEntry("optimizers/0.bin").Open();
            replaced.Write(new byte[] { 1, 2, 3 });
        }

        (int evaluated, _, string evalError) = CliRun.Captured(new[] { "eval", "--load-path", checkpoint, "--run-folder", folder }.Concat(small).ToArray());
        Assert.That(evaluated, Is.EqualTo(0), "eval needs the weights only, which are intact: " + evalError);

        (int exported, _, string exportError) = CliRun.Captured(new[] { "export", "--load-path", checkpoint, "--output", Path.Combine(folder, "hf") });
        Assert.That(exported, Is.EqualTo(0), exportError);

        // Resuming needs the optimizer state: still refused, naming the damaged entry.
        (int resumed, _, string resumeError) = CliRun.Captured(new[] { "train", "--max-duration", "2ba", "--run-folder", folder, "--load-path", checkpoint, "--save-overwrite", "true" }.Concat(small).ToArray());
        Assert.That(resumed, Is.Not.EqualTo(0));
        Assert.That(resumeError, Does.Contain("optimizers/0.bin"), "--save-overwrite true keeps the load_path checkpoint (it used to delete it first: 'does not exist')");
        Assert.That(File.Exists(checkpoint), Is.True);
    }

    [Test]
    public void AFolderGivenAsAJsonLinesFileIsCalledAFolder()
    {
        string folder = NewFolder();
        Directory.CreateDirectory(folder);
        (int code, _, string error) = CliRun.Captured(new[]
        {
            "train", "--max-duration", "1ba", "--run-folder", Path.Combine(folder, "run"), "--progress-bar", "false",
            "--set", "model.name=bert_classification", "--set", "train_loader.dataset.name=jsonl_classification", "--set", $"train_loader.dataset.path={folder}",
            "--set", "eval_loader.dataset.name=jsonl_classification", "--set", $"eval_loader.dataset.path={folder}",
        });
        Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
        Assert.That(error, Does.Contain("is a folder; expected a .jsonl file").And.Not.Contain("does not exist"));
    }
}
