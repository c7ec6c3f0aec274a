using ComposerSharp.Algorithms;
using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Cli.Plugins;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

[TestFixture]
public class ConfigTests
{
    [Test]
    public void EmbeddedDefaultConfigParsesAndUsesTheAlgorithm()
    {
        ConfigSection config = CliApp.LoadConfig(null, Array.Empty<string>(), Array.Empty<KeyValuePair<string, string>>());
        Assert.That(config.GetString("precision"), Is.EqualTo("amp_bf16"));
        Assert.That(config.GetString("max_duration"), Is.EqualTo("1ep"));
        Assert.That(config.GetNamedList("algorithms").Select(a => a.Name), Is.EqualTo(new[] { "low_precision_layernorm" }));
        config.RequireKnownKeys(TrainJob.TopLevelKeys);
    }

    [Test]
    public void OverridesReplaceTopLevelAndNestedKeys()
    {
        ConfigSection config = CliApp.LoadConfig(
            null,
            new[] { "train_loader.batch_size=8", "optimizer.betas=[0.8, 0.9]" },
            new[] { new KeyValuePair<string, string>("max_duration", "2ep"), new("algorithms", "low_precision_layernorm,low_precision_groupnorm") });
        Assert.That(config.GetString("max_duration"), Is.EqualTo("2ep"));
        Assert.That(config.Section("train_loader").GetLong("batch_size"), Is.EqualTo(8));
        Assert.That(config.Section("optimizer").Get("betas"), Is.EqualTo(new List<object?> { "0.8", "0.9" }));
        Assert.That(config.GetNamedList("algorithms").Select(a => a.Name), Is.EqualTo(new[] { "low_precision_layernorm", "low_precision_groupnorm" }));
        // Untouched keys stay as in the file.
        Assert.That(config.Section("train_loader").Section("dataset").GetString("name"), Is.EqualTo("synthetic_mlm"));
    }

    [Test]
    public void NamedListsAcceptComposerMappingAndListForms()
    {
        ConfigSection config = ConfigSection.Parse("""
            algorithms:
              low_precision_layernorm: {apply_at: after_load}
            callbacks:
              - speed_monitor: {window_size: 5}
              - lr_monitor
            """);
        var algorithms = config.GetNamedList("algorithms");
        Assert.That(algorithms.Single().Name, Is.EqualTo("low_precision_layernorm"));
        Assert.That(algorithms.Single().Args.GetString("apply_at"), Is.EqualTo("after_load"));
        var callbacks = config.GetNamedList("callbacks");
        Assert.That(callbacks.Select(c => c.Name), Is.EqualTo(new[] { "speed_monitor", "lr_monitor" }));
        Assert.That(callbacks[0].Args.GetLong("window_size"), Is.EqualTo(5));
    }

    [Test]
    public void UnknownTopLevelKeyNamesItAndListsAcceptedKeys()
    {
        ConfigSection config = ConfigSection.Parse("max_duraton: 1ep\n");
        using ServiceProvider services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var ex = Assert.Throws<ConfigException>(() => new TrainJob(config, services));
        Assert.That(ex!.Message, Does.Contain("'max_duraton'").And.Contain("max_duration").And.Contain("train_loader"));
    }

    [Test]
    public void UnknownAlgorithmNameListsRegisteredAlgorithms()
    {
        using ServiceProvider services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(services.GetServices<ComponentRegistration>());
        var ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(
            ComponentKind.Algorithm, "low_precision_layer_norm", new ConfigSection("algorithms.low_precision_layer_norm"), new ComponentContext(services, "", 0)));
        Assert.That(ex!.Message, Does.Contain("'low_precision_layer_norm'").And.Contain("low_precision_layernorm").And.Contain("low_precision_groupnorm"));
    }

    [Test]
    public void AlgorithmOptionsBindToConstructorAndBadValuesNameTheKey()
    {
        using ServiceProvider services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var catalog = new ComponentCatalog(services.GetServices<ComponentRegistration>());
        var context = new ComponentContext(services, "", 0);
        var ok = ConfigSection.Parse("apply_at: after_load");
        var algorithm = catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", ok, context);
        Assert.That(algorithm.Describe().Hyperparameters["apply_at"], Is.EqualTo("after_load"));

        var badEvent = ConfigSection.Parse("apply_at: after_lunch");
        var ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", badEvent, context));
        Assert.That(ex!.Message, Does.Contain("apply_at").And.Contain("after_lunch"));

        var badKey = ConfigSection.Parse("apply: init");
        ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", badKey, context));
        Assert.That(ex!.Message, Does.Contain("'apply'").And.Contain("apply_at"));

        // The LayerNorm kernel under bf16 autocast is a key too, described (so a checkpoint re-creates it) unless default.
        var kernel = (LowPrecisionLayerNorm)catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", ConfigSection.Parse("kernel: libtorch"), context);
        Assert.That(kernel.Kernel, Is.EqualTo(LayerNormKernel.Libtorch));
        Assert.That(kernel.Describe().Hyperparameters["kernel"], Is.EqualTo("libtorch"));
        Assert.That(((LowPrecisionLayerNorm)AlgorithmCatalog.Create(kernel.Describe())).Kernel, Is.EqualTo(LayerNormKernel.Libtorch));
        Assert.That(algorithm.Describe().Hyperparameters.ContainsKey("kernel"), Is.False, "the default kernel is not described");
        var badKernel = ConfigSection.Parse("kernel: cuda");
        ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", badKernel, context));
        Assert.That(ex!.Message, Does.Contain("kernel").And.Contain("cuda").And.Contain("libtorch"));
        var badStored = new AlgorithmDescription("low_precision_layernorm", new Dictionary<string, string> { ["kernel"] = "apex" });
        Assert.That(Assert.Throws<ArgumentException>(() => AlgorithmCatalog.Create(badStored))!.Message, Does.Contain("'apex'").And.Contain("fused"));

        // An event outside Init/BeforeLoad/AfterLoad is refused by the algorithm itself and reported with the key path.
        var wrongEvent = ConfigSection.Parse("apply_at: fit_start");
        ex = Assert.Throws<ConfigException>(() => catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "low_precision_layernorm", wrongEvent, context));
        Assert.That(ex!.Message, Does.Contain("low_precision_layernorm"));
    }

    [TestCase("train_loader:\n  batch_size: sixteen\n  dataset: {name: synthetic_mlm}\nmax_duration: 1ep\nmodel: {name: bert_mlm}\n", "train_loader.batch_size", "sixteen")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: synthetic_mlm, num_samplez: 3}\nmax_duration: 1ep\nmodel: {name: bert_mlm}\n", "num_samplez", "num_samples")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: synthetic_mlm}\nmax_duration: 1.5ep\nmodel: {name: bert_mlm}\n", "max_duration", "1.5ep")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: synthetic_mlm}\nmax_duration: 1ep\nmodel: {name: bert_mlm, preset: bert-huge}\n", "bert-huge", "bert-tiny")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: synthetic_mlm}\nmax_duration: 1ep\nmodel: {name: bert_mlm}\noptimizer: {name: lamb}\n", "lamb", "adamw")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: synthetic_mlm}\nmax_duration: 1ep\nmodel: {name: bert_mlm}\nprecision: amp_fp8\n", "precision", "amp_bf16")]
    [TestCase("train_loader:\n  batch_size: 4\n  dataset: {name: jsonl_classification, path: /nonexistent/x.jsonl}\nmax_duration: 1ep\nmodel: {name: bert_classification}\n", "/nonexistent/x.jsonl", "")]
    public void BadValuesAreConfigErrorsNamingKeyAndExpectation(string yaml, string named, string expected)
    {
        using ServiceProvider services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var job = new TrainJob(ConfigSection.Parse(yaml), services);
        var ex = Assert.Throws<ConfigException>(() => job.Train());
        Assert.That(ex!.Message, Does.Contain(named).And.Contain(expected));
    }

    [Test]
    public void MalformedYamlNamesTheLine()
    {
        var ex = Assert.Throws<ConfigException>(() => ConfigSection.Parse("model:\n  name: [bert\nseed: 1\n", "bad.yaml"));
        Assert.That(ex!.Message, Does.Contain("bad.yaml").And.Contain("line"));
    }

    [Test]
    public void DuplicateKeyIsRefused()
    {
        var ex = Assert.Throws<ConfigException>(() => ConfigSection.Parse("seed: 1\nseed: 2\n", "dup.yaml"));
        Assert.That(ex!.Message, Does.Contain("dup.yaml").And.Contain("line 2").And.Contain("seed"));
    }

    [Test]
    public void MissingConfigFileIsNamed()
    {
        var ex = Assert.Throws<ConfigException>(() => ConfigSection.LoadFile("/no/such/config.yaml"));
        Assert.That(ex!.Message, Does.Contain("/no/such/config.yaml"));
    }

    [Test]
    public void CliReturnsConfigErrorExitCodeWithMessage()
    {
        var err = new StringWriter();
        TextWriter old = Console.Error;
        Console.SetError(err);
        try
        {
            int code = CliApp.Run(new[] { "train", "--precision", "fp64" });
            Assert.That(code, Is.EqualTo(CliApp.ConfigErrorExitCode));
        }
        finally
        {
            Console.SetError(old);
        }

        Assert.That(err.ToString(), Does.Contain("fp64").And.Contain("amp_bf16"));
    }

    [Test]
    public void ShippedConfigsParseWithKnownKeys()
    {
        string? dir = TestContext.CurrentContext.TestDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Trainer.sln")))
        {
            dir = Path.GetDirectoryName(dir);
        }

        Assert.That(dir, Is.Not.Null, "repository root not found above the test output");
        string[] configs = Directory.GetFiles(Path.Combine(dir!, "configs"), "*.yaml");
        Assert.That(configs, Has.Length.GreaterThanOrEqualTo(4));
        foreach (string path in configs)
        {
            ConfigSection config = ConfigSection.LoadFile(path);
            Assert.DoesNotThrow(() => config.RequireKnownKeys(TrainJob.TopLevelKeys), path);
            Assert.That(config.Section("model").GetString("name"), Is.AnyOf(BuiltinComponents.ModelNames.ToArray()), path);
        }
    }
}

/// <summary>A user's algorithm, registered by a plugin class; used to prove plugin loading end to end.</summary>
public sealed class CountBatchesAlgorithm : Algorithm
{
    public CountBatchesAlgorithm(int every = 1) => Every = every;

    public int Every { get; }

    public int Seen { get; private set; }

    public override string Name => "count_batches";

    public override bool Match(Event e, State state) => e == Event.BatchEnd;

    public override int? Apply(Event e, State state, Logger logger)
    {
        Seen++;
        return Seen % Every == 0 ? Seen : null;
    }
}

public sealed class TestPlugin : IComposerSharpPlugin
{
    public void ConfigureServices(IServiceCollection services) => services.AddAlgorithm<CountBatchesAlgorithm>();
}

[TestFixture]
public class PluginTests
{
    [Test]
    public void PluginAssemblyRegistersAlgorithmThatIsCreatedByName()
    {
        var services = CliApp.CreateServices(Array.Empty<string>());
        IReadOnlyList<string> loaded = PluginLoader.Load(typeof(TestPlugin).Assembly.Location, services);
        Assert.That(loaded, Does.Contain(typeof(TestPlugin).FullName));
        using ServiceProvider provider = services.BuildServiceProvider();
        var catalog = new ComponentCatalog(provider.GetServices<ComponentRegistration>());
        Assert.That(catalog.Names(ComponentKind.Algorithm), Does.Contain("count_batches"));
        var algorithm = catalog.Create<IAlgorithm>(ComponentKind.Algorithm, "count_batches", ConfigSection.Parse("every: 3"), new ComponentContext(provider, "", 0));
        Assert.That(algorithm, Is.TypeOf<CountBatchesAlgorithm>());
        Assert.That(((CountBatchesAlgorithm)algorithm).Every, Is.EqualTo(3));
    }

    [Test]
    public void MissingOrInvalidPluginGivesClearError()
    {
        var services = new ServiceCollection();
        var missing = Assert.Throws<FileNotFoundException>(() => PluginLoader.Load("/no/plugin.dll", services));
        Assert.That(missing!.Message, Does.Contain("/no/plugin.dll"));
        string notAssembly = Path.GetTempFileName();
        try
        {
            File.WriteAllText(notAssembly, "not a dll");
            var bad = Assert.Throws<InvalidOperationException>(() => PluginLoader.Load(notAssembly, services));
            Assert.That(bad!.Message, Does.Contain(notAssembly));
        }
        finally
        {
            File.Delete(notAssembly);
        }
    }
}

[TestFixture]
public class OverrideSemanticsTests
{
    [Test]
    public void SettingAComponentNameStartsItsSectionAfresh()
    {
        ConfigSection config = CliApp.LoadConfig(null, new[] { "scheduler.name=constant" }, Array.Empty<KeyValuePair<string, string>>());
        Assert.That(config.Section("scheduler").Keys, Is.EqualTo(new[] { "name" }));
        Assert.That(config.Section("scheduler").GetString("name"), Is.EqualTo("constant"));

        // The same name keeps the other options.
        config = CliApp.LoadConfig(null, new[] { "scheduler.name=linear_decay_with_warmup" }, Array.Empty<KeyValuePair<string, string>>());
        Assert.That(config.Section("scheduler").Keys, Does.Contain("t_warmup"));

        // A whole mapping replaces the section.
        config = CliApp.LoadConfig(null, new[] { "scheduler={name: step, step_size: 10ba}" }, Array.Empty<KeyValuePair<string, string>>());
        Assert.That(config.Section("scheduler").Keys, Is.EquivalentTo(new[] { "name", "step_size" }));
    }

    [TestCase("optimizer.lr=-1", "optimizer.lr", "greater than 0")]
    [TestCase("optimizer.betas=[0.9, 1.5]", "optimizer.betas", "[0, 1)")]
    public void OutOfRangeOptimizerValuesAreConfigErrors(string set, string key, string expected)
    {
        ConfigSection config = CliApp.LoadConfig(null, new[] { set, "train_loader.dataset.num_samples=64" }, Array.Empty<KeyValuePair<string, string>>());
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var ex = Assert.Throws<ConfigException>(() => new TrainJob(config, services).Train());
        Assert.That(ex!.Message, Does.Contain(key).And.Contain(expected));
    }

    [TestCase("max_duration", "-4ba")]
    [TestCase("max_duration", "0ba")]
    [TestCase("max_duration", "0.5dur")]
    [TestCase("device", "mps")]
    public void BadRunValuesNameTheKey(string key, string value)
    {
        ConfigSection config = CliApp.LoadConfig(null, new[] { "train_loader.dataset.num_samples=64" }, new[] { new KeyValuePair<string, string>(key, value) });
        using var services = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var ex = Assert.Throws<ConfigException>(() => new TrainJob(config, services).Train());
        Assert.That(ex!.Message, Does.Contain($"'{key}'").And.Contain(value));
    }

    [Test]
    public void NumberParseErrorsSayWhatWasExpectedWithoutDotNetWording()
    {
        var ex = Assert.Throws<ConfigException>(() => ConfigSection.Parse("seed: lots").GetLong("seed"));
        Assert.That(ex!.Message, Is.EqualTo("'seed' is 'lots', which is not an integer."));
        ex = Assert.Throws<ConfigException>(() => ConfigSection.Parse("precision: bf16").GetValue("precision", PrecisionExtensions.Parse, "a precision"));
        Assert.That(ex!.Message, Does.StartWith("'precision': 'bf16' is not a precision"));
    }
}

public class IntegerTimeConfigTests
{
    [TestCase("max_duration: 3", 3)]
    [TestCase("max_duration: 1", 1)]
    [TestCase("max_duration: 0", 0)]
    public void AnIntegerTimeMeansEpochsAsInComposer(string yaml, long epochs)
    {
        var config = ComposerSharp.Cli.Configuration.ConfigSection.Parse(yaml, "test");
        Assert.That(config.GetTime("max_duration"), Is.EqualTo(ComposerSharp.Core.Time.FromEpoch(epochs)));
    }

    [Test]
    public void ANegativeOrFractionalBareNumberIsStillATimeError()
    {
        var config = ComposerSharp.Cli.Configuration.ConfigSection.Parse("max_duration: -2\neval_interval: 1.5", "test");
        Assert.Throws<ComposerSharp.Cli.Configuration.ConfigException>(() => config.GetTime("max_duration"));
        Assert.Throws<ComposerSharp.Cli.Configuration.ConfigException>(() => config.GetTime("eval_interval"));
    }
}
