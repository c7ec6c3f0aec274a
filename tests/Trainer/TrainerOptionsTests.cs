using ComposerSharp.Cli;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using NUnit.Framework;

namespace ComposerSharp.Tests.Training;

/// <summary>
/// The Trainer's scalar settings are one options record, validated once by the library and bound from the YAML's
/// top-level keys by name, so the API, the configuration and the accepted keys cannot disagree.
/// </summary>
[TestFixture]
public class TrainerOptionsTests
{
    [Test]
    public void EveryScalarOptionIsATopLevelKeyByItsSnakeCaseName()
    {
        string[] expected =
        {
            "max_duration", "precision", "device", "seed", "device_train_microbatch_size", "accumulate_train_batch_on_tokens", "eval_interval", "eval_subset_num_batches",
            "run_name", "run_folder", "progress_bar", "log_to_console", "console_log_interval", "compute_training_metrics", "deterministic_mode",
            "save_folder", "save_filename", "save_latest_filename", "save_interval", "save_overwrite", "save_weights_only",
            "save_num_checkpoints_to_keep", "load_path", "load_weights_only", "load_strict_model_weights", "load_ignore_keys", "autoresume",
        };
        Assert.That(TrainJob.TopLevelKeys, Is.SupersetOf(expected));
        Assert.That(TrainJob.TopLevelKeys, Is.Unique);
        Assert.That(OptionsBinder.KeysOf<TrainerOptions>(), Does.Not.Contain("checkpoint").And.Not.Contain("distributed"), "records are not scalar keys");
    }

    [Test]
    public void TheYamlBindsTheSameRecordTheApiBuilds()
    {
        ConfigSection config = ConfigSection.Parse(
            "max_duration: 12ba\nprecision: amp_bf16\ndevice: CPU\nseed: 5\ndevice_train_microbatch_size: 2\naccumulate_train_batch_on_tokens: true\neval_interval: 3ba\n" +
            "compute_training_metrics: false\nsave_interval: 4ba\nload_ignore_keys: [classifier.*, pooler.*]\nmodel: {name: x}\n",
            "test");
        TrainerOptions bound = OptionsBinder.Bind<TrainerOptions>(config, null, TrainJob.TopLevelKeys.ToArray()) with
        {
            Checkpoint = OptionsBinder.Bind<CheckpointOptions>(config, null, TrainJob.TopLevelKeys.ToArray()),
        };
        TrainerOptions validated = bound.Validate();
        Assert.That(validated.MaxDuration, Is.EqualTo(Time.FromBatch(12)));
        Assert.That(validated.Precision, Is.EqualTo(Precision.AmpBf16));
        Assert.That(validated.Device, Is.EqualTo("cpu"), "the device name is normalised once, by the library");
        Assert.That(validated.Seed, Is.EqualTo(5));
        Assert.That(validated.DeviceTrainMicrobatchSize, Is.EqualTo(2));
        Assert.That(validated.AccumulateTrainBatchOnTokens, Is.True);
        Assert.That(new TrainerOptions().AccumulateTrainBatchOnTokens, Is.False, "off by default, as Composer's");
        Assert.That(validated.EvalInterval, Is.EqualTo(Time.FromBatch(3)));
        Assert.That(validated.ComputeTrainingMetrics, Is.False);
        Assert.That(validated.ProgressBar, Is.True, "an absent key keeps the record's default");
        Assert.That(validated.Checkpoint.SaveInterval, Is.EqualTo(Time.FromBatch(4)));
        Assert.That(validated.Checkpoint.LoadIgnoreKeys, Is.EqualTo(new[] { "classifier.*", "pooler.*" }));
        Assert.That(validated.Checkpoint.SaveFilename, Is.EqualTo(new CheckpointOptions().SaveFilename), "defaults are the record's, not repeated by the CLI");
    }

    [TestCase("MaxDuration")]
    [TestCase("Device")]
    [TestCase("DeviceTrainMicrobatchSize")]
    [TestCase("RunName")]
    public void ValidateNamesTheRefusedProperty(string property)
    {
        TrainerOptions bad = property switch
        {
            "MaxDuration" => new TrainerOptions { MaxDuration = "3sec" },
            "Device" => new TrainerOptions { Device = "tpu" },
            "DeviceTrainMicrobatchSize" => new TrainerOptions { DeviceTrainMicrobatchSize = 0 },
            _ => new TrainerOptions { RunName = " " },
        };
        var ex = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => bad.Validate()) as ArgumentException;
        Assert.That(ex!.ParamName, Is.EqualTo(property));
        var fromTrainer = Assert.Throws(Is.InstanceOf<ArgumentException>(), () => new Trainer(TestData.Model(), bad with { ProgressBar = false })) as ArgumentException;
        Assert.That(fromTrainer!.ParamName, Is.EqualTo(property), "the Trainer checks its options before building anything");
    }
}
