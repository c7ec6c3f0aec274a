using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using NUnit.Framework;

namespace ComposerSharp.Tests.Cli;

/// <summary>The <c>parallelism: {fsdp: …}</c> section: what it accepts, what it refuses, and activation checkpointing from YAML.</summary>
[TestFixture]
public class ParallelismYamlTests
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
        max_duration: 3ba
        precision: amp_bf16
        seed: 17
        algorithms:
          low_precision_layernorm: {}
          gated_linear_units: {}
        """;

    [Test]
    [Category(TestCategories.Slow)]
    public void ActivationCheckpointingFromYamlTrainsWithSurgeryAndGivesTheSameLosses()
    {
        Dictionary<string, double> Train(string extra)
        {
            string folder = Path.Combine(Path.GetTempPath(), "composersharp-ac-" + Guid.NewGuid().ToString("N"));
            try
            {
                using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
                JobResult result = new TrainJob(ConfigSection.Parse(Data + $"\nrun_folder: {folder}\n" + extra), provider).Train();
                Assert.That(result.Timestamp.Batch, Is.EqualTo(3));
                Assert.That(result.ModulesReplaced.Keys, Is.SupersetOf(new[] { "LowPrecisionLayerNorm", "GatedLinearUnits" }).Or.Count.GreaterThan(0));
                return result.FinalMetrics.Where(m => m.Key.Contains("loss", StringComparison.Ordinal)).ToDictionary();
            }
            finally
            {
                if (Directory.Exists(folder))
                {
                    Directory.Delete(folder, recursive: true);
                }
            }
        }

        Dictionary<string, double> plain = Train(string.Empty);
        Dictionary<string, double> checkpointed = Train("parallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    activation_checkpointing: true\n");
        Assert.That(plain, Is.Not.Empty);
        Assert.That(checkpointed, Is.EqualTo(plain), "bitwise the same losses: the recomputation replays the dropout masks");
    }

    [TestCase("parallelism:\n  fsdp:\n    activation_checkpointing: true\n", "sharding_strategy' is not set (Composer's default is FULL_SHARD)")]
    [TestCase("parallelism:\n  fsdp:\n    sharding_strategy: FULL_SHARD\n", "FULL_SHARD, SHARD_GRAD_OP and HYBRID_SHARD are not implemented yet; supported: NO_SHARD")]
    [TestCase("parallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    mixed_precision: PURE\n", "'parallelism.fsdp.mixed_precision' is a Composer FSDP key that is not implemented yet")]
    [TestCase("parallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    shard_everything: true\n", "Unknown key 'parallelism.fsdp.shard_everything'")]
    [TestCase("parallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    activation_checkpointing_reentrant: false\n", "only the reentrant form")]
    [TestCase("parallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    state_dict_type: sharded\n", "sharded checkpoints are not implemented yet")]
    [TestCase("parallelism:\n  tp:\n    tensor_parallel_degree: 2\n", "'parallelism.tp' (tensor parallelism) is not implemented")]
    public void UnsupportedSettingsAreRefusedWithWhatIsSupported(string section, string expected)
    {
        using ServiceProvider provider = CliApp.CreateServices(Array.Empty<string>()).BuildServiceProvider();
        var e = Assert.Throws<ConfigException>(() => new TrainJob(ConfigSection.Parse(Data + "\n" + section), provider))!;
        Assert.That(e.Message, Does.Contain(expected));
    }

    [Test]
    public void NoSectionMeansNothingAndNoShardWithoutCheckpointingIsAccepted()
    {
        Assert.That(ParallelismConfig.Read(ConfigSection.Parse(Data)), Is.Null);
        ParallelismConfig? read = ParallelismConfig.Read(ConfigSection.Parse(Data + "\nparallelism:\n  fsdp:\n    sharding_strategy: NO_SHARD\n    activation_checkpointing_reentrant: true\n    state_dict_type: full\n"));
        Assert.That(read, Is.EqualTo(new ParallelismConfig(false)));

        var model = new ComposerSharp.Models.GptForCausalLM(ComposerSharp.Models.TransformerConfig.Preset("gpt-tiny"));
        new ParallelismConfig(false).ApplyTo(model);
        Assert.That(model.Backbone.Layers.Any(l => l.ActivationCheckpointing), Is.False);
        new ParallelismConfig(true).ApplyTo(model);
        Assert.That(model.Backbone.Layers.All(l => l.ActivationCheckpointing), Is.True, "activation_checkpointing: true wraps every transformer block");
    }
}
