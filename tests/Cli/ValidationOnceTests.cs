using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Training;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>Run values are validated once, in the library; the CLI reports the library's message with the key.</summary>
[TestFixture]
public class ValidationOnceTests
{
    [TestCase("max_duration", "2sec")]
    [TestCase("max_duration", "0ba")]
    [TestCase("device", "tpu")]
    public void TheCliReportsTheLibrarysMessageWithTheKey(string key, string value)
    {
        string library = key == "device"
            ? Assert.Throws<ArgumentException>(() => TrainerDevice.Normalize(value))!.Message
            : Assert.Throws<ArgumentException>(() => TrainerOptions.CheckMaxDuration(ComposerSharp.Core.Time.Parse(value)))!.Message;
        ConfigSection config = CliApp.LoadConfig(null, new[] { "train_loader.dataset.num_samples=64" }, new[] { new KeyValuePair<string, string>(key, value) });
        using ServiceProvider services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var ex = Assert.Throws<ConfigException>(() => new TrainJob(config, services).Train());
        Assert.That(ex!.Message, Does.Contain($"'{key}'").And.Contain(library));
    }
}
