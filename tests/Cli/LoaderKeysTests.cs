using ComposerSharp.Cli;
using ComposerSharp.Tests.Support;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>The loader keys of <c>train_loader</c>/<c>eval_loader</c> (workers and Streaming's shuffle keys): a bad value is a configuration error naming the key, exit code 2, before training.</summary>
[TestFixture]
public class LoaderKeysTests
{
    [TestCase("train_loader.num_workers=-1", "'train_loader.num_workers' is -1")]
    [TestCase("train_loader.prefetch_factor=0", "'train_loader.prefetch_factor' is 0")]
    [TestCase("train_loader.shuffle_algo=py9z", "'train_loader.shuffle_algo' is 'py9z'")]
    [TestCase("eval_loader.num_canonical_nodes=0", "'eval_loader.num_canonical_nodes' is 0")]
    [TestCase("train_loader.shuffle_block_size=0", "'train_loader.shuffle_block_size' is 0")]
    public void ABadLoaderValueIsAConfigurationErrorNamingTheKey(string setting, string expected)
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-loader-" + Guid.NewGuid().ToString("N"));
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "1ba", "--run-folder", folder, "--progress-bar", "false",
                "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16", "--set", setting });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode), error);
            Assert.That(error, Does.Contain(expected));
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
    public void WorkersAndTheElasticShuffleTrainFromTheCommandLine()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-loader-" + Guid.NewGuid().ToString("N"));
        try
        {
            (int code, _, string error) = CliRun.Captured(new[] { "train", "--max-duration", "2ba", "--run-folder", folder, "--progress-bar", "false",
                "--set", "train_loader.dataset.num_samples=64", "--set", "eval_loader.dataset.num_samples=16",
                "--set", "train_loader.num_workers=2", "--set", "train_loader.shuffle_algo=py1s", "--set", "train_loader.shuffle_seed=9176",
                "--set", "train_loader.shuffle_block_size=16", "--set", "train_loader.num_canonical_nodes=2", "--set", "eval_loader.num_workers=1" });
            Assert.That(code, Is.EqualTo(0), error);
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
