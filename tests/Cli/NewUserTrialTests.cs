using ComposerSharp.Cli;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// Defects found by trying the CLI as a new user would: each refusal names the key or option, the value and what is
/// expected, with exit code 2, before anything is trained or written.
/// </summary>
[TestFixture]
public class NewUserTrialTests
{
    private static string NewFolder() => Path.Combine(Path.GetTempPath(), "composersharp-trial-" + Guid.NewGuid().ToString("N"));

    [TestCase("model.num_layers=-1", "'model.num_layers' is '-1': must be at least 1")]
    [TestCase("model.dropout=2", "'model.dropout' is '2': must be a probability")]
    [TestCase("train_loader.dataset.num_samples=-3", "'train_loader.dataset.num_samples' is '-3': must be at least 1")]
    [TestCase("train_loader.dataset.mlm_probability=1.5", "'train_loader.dataset.mlm_probability' is '1.5': must be a probability")]
    public void ALibraryRefusalIsReportedAsTheYamlKeyWithoutDotNetWording(string set, string expected)
    {
        string folder = NewFolder();
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false", "--set", set });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain(expected));
            Assert.That(error, Does.Not.Contain("(Parameter '").And.Not.Contain("Actual value was"), "no .NET exception wording");
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
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false" });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain("cannot be used").And.Not.Contain("in use by"));
            Assert.That(error, Does.Not.Contain("   at "), "no stack trace");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
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
        try
        {
            // The checkpoint does not exist: the bad number is reported first, named as the command line spells it.
            (int code, _, string error) = CliRun.Captured(new[] { "predict", "--load-path", Path.Combine(folder, "missing.ckpt"), "--input", input, "--output", output, option, value });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain($"{option} is {value}; expected a whole number of at least 1"));
            Assert.That(File.Exists(output), Is.False);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Test]
    public void PredictWithACheckpointItCannotUseLeavesNoEmptyOutputFile()
    {
        string folder = NewFolder();
        Directory.CreateDirectory(folder);
        string input = Path.Combine(folder, "in.txt");
        File.WriteAllText(input, "The [MASK] was white.\n");
        string output = Path.Combine(folder, "out.jsonl");
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "predict", "--load-path", Path.Combine(folder, "missing.ckpt"), "--input", input, "--output", output });
            Assert.That(code, Is.Not.EqualTo(0), error);
            Assert.That(error, Does.Contain("missing.ckpt"));
            Assert.That(File.Exists(output), Is.False, "no empty predictions file for a run that predicted nothing");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
