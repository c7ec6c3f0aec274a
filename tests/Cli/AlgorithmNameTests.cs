using System.Globalization;
using ComposerSharp.Algorithms;
using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>
/// A plugin's required-on-load algorithm: it changes nothing, but reports its factor through the logger at Init, so
/// a run shows whether it was applied (configured, or re-created from a checkpoint).
/// </summary>
public sealed class TaggedSurgery : Algorithm
{
    public TaggedSurgery(double factor = 1.0) => Factor = factor;

    public double Factor { get; }

    public override string Name => "tagged_surgery";

    public override bool RequiredOnLoad => true;

    public override bool Match(Event e, State state) => e == Event.Init;

    public override int? Apply(Event e, State state, Logger logger)
    {
        logger.LogMetric("tagged_surgery/factor", Factor);
        return null;
    }

    public override AlgorithmDescription Describe() =>
        new(Name, new Dictionary<string, string> { ["factor"] = Factor.ToString("R", CultureInfo.InvariantCulture) });
}

/// <summary>One name per algorithm: the registration, the catalog and the checkpoint all use <see cref="IAlgorithm.Name"/>.</summary>
[TestFixture]
public class AlgorithmNameTests
{
    [Test]
    public void ARegistrationTakesTheNameFromTheAlgorithm()
    {
        var services = new ServiceCollection();
        services.AddAlgorithm<TaggedSurgery>();
        using ServiceProvider provider = services.BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        Assert.That(catalog.Names(ComponentKind.Algorithm), Is.EqualTo(new[] { "tagged_surgery" }));
    }

    [Test]
    public void TheBuiltInRegistrationsAreTheLibraryCatalog()
    {
        using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        Assert.That(catalog.Names(ComponentKind.Algorithm), Is.EquivalentTo(AlgorithmCatalog.Names));
        foreach (string name in AlgorithmCatalog.Names)
        {
            IAlgorithm built = catalog.Create<IAlgorithm>(ComponentKind.Algorithm, name, new ConfigSection("algorithms." + name), new ComponentContext(provider, "", 0));
            Assert.That(built.Name, Is.EqualTo(name));
            Assert.That(AlgorithmCatalog.Create(built.Describe()).Describe(), Is.EqualTo(built.Describe()), "the library catalog re-creates what it describes");
        }
    }

    [Test]
    public void AFactoryRegisteredUnderAnotherNameIsRefusedWhenBuilt()
    {
        var services = new ServiceCollection();
        services.AddAlgorithm("batch_counter", (_, _) => new CountBatchesAlgorithm());
        using ServiceProvider provider = services.BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        var ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "batch_counter", new ConfigSection("algorithms.batch_counter"), new ComponentContext(provider, "", 0)));
        Assert.That(ex!.Message, Does.Contain("'batch_counter'").And.Contain("'count_batches'").And.Contain("AddAlgorithm<T>()"));
    }

    [Test]
    [Category(TestCategories.Slow)]
    public void APluginAlgorithmRoundTripsThroughACheckpoint()
    {
        string folder = Path.Combine(Path.GetTempPath(), "composersharp-names-" + Guid.NewGuid().ToString("N"));
        string data = """
            model:
              name: bert_mlm
            train_loader:
              batch_size: 8
              dataset:
                name: synthetic_mlm
                num_samples: 16
                sequence_length: 16
            eval_loader:
              batch_size: 8
              dataset:
                name: synthetic_mlm
                num_samples: 8
                sequence_length: 16
            progress_bar: false
            """;
        try
        {
            ServiceCollection services = CliApp.CreateServices(Array.Empty<string>());
            services.AddAlgorithm<TaggedSurgery>();
            using ServiceProvider provider = services.BuildServiceProvider();
            string train = data + $"\nrun_folder: {folder}\nmax_duration: 1ba\nsave_interval: 1ba\nalgorithms:\n  tagged_surgery:\n    factor: 2.5\n";
            JobResult trained = new TrainJob(ConfigSection.Parse(train), provider).Train();
            Assert.That(trained.FinalMetrics["tagged_surgery/factor"], Is.EqualTo(2.5));

            // The eval run does not list the algorithm: the checkpoint records it by its Name, and the registration
            // under the same name re-creates it with the recorded factor.
            string eval = data + $"\nrun_folder: {folder}\nload_path: {Path.Combine(folder, "checkpoints", "latest-rank0.ckpt")}\n";
            JobResult evaluated = new TrainJob(ConfigSection.Parse(eval), provider).Evaluate();
            Assert.That(evaluated.FinalMetrics["tagged_surgery/factor"], Is.EqualTo(2.5));
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
