using ComposerSharp.Cli;
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
}
