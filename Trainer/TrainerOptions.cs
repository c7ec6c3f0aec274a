using ComposerSharp.Core;
using ComposerSharp.Distributed;
using ComposerSharp.Events;
using ComposerSharp.Training.Checkpoints;
using ComposerSharp.Training.Loggers;

namespace ComposerSharp.Training;

/// <summary>
/// The scalar settings of a <see cref="Trainer"/>: how long, on what device, in which precision, with which seed,
/// how often to evaluate and log, where the run's files go, how checkpoints are saved and loaded, and the
/// data-parallel settings. The components (model, dataloaders, algorithms, callbacks, loggers, optimizers,
/// schedulers, evaluators) are the Trainer's constructor arguments.
/// </summary>
/// <remarks>
/// <para>
/// Each property is the camel-case form of the Composer <c>Trainer</c> argument of the same meaning
/// (composer/trainer/trainer.py: <c>max_duration</c>, <c>precision</c>, <c>device</c>, <c>seed</c>,
/// <c>device_train_microbatch_size</c>, <c>accumulate_train_batch_on_tokens</c>, <c>eval_interval</c>, <c>eval_subset_num_batches</c>, <c>run_name</c>,
/// <c>progress_bar</c>, <c>log_to_console</c>, <c>console_log_interval</c>, <c>compute_training_metrics</c>,
/// <c>deterministic_mode</c>); the YAML of <c>composersharp train</c> binds its top-level keys to these properties
/// by that snake-case name, so the API and the configuration cannot disagree.
/// </para>
/// <para>
/// Every value is checked once, here, by <see cref="Validate"/> (the Trainer calls it first); the CLI reports the
/// message with the key. An <see cref="ArgumentException"/> from <see cref="Validate"/> carries the property's name
/// as <see cref="ArgumentException.ParamName"/>.
/// </para>
/// </remarks>
public sealed record TrainerOptions
{
    /// <summary>
    /// When training stops: <c>"2ep"</c>, <c>"100ba"</c>, <c>"4096sp"</c>, <c>"1e6tok"</c>, or an integer number of
    /// epochs; null to give it later to <see cref="Trainer.Fit"/>. <c>sec</c>, <c>dur</c> and <c>iter</c> are refused
    /// (see <see cref="CheckMaxDuration"/>).
    /// </summary>
    public Time? MaxDuration { get; init; }

    /// <summary>fp32, amp_bf16 or amp_fp16; null means fp32 on CPU and amp_bf16 on CUDA (Composer's default).</summary>
    public Precision? Precision { get; init; }

    /// <summary><c>cpu</c>, <c>cuda</c>, <c>cuda:N</c>, <c>gpu</c> or <c>auto</c> (CUDA when available); see <see cref="TrainerDevice.Normalize"/>.</summary>
    public string Device { get; init; } = "auto";

    /// <summary>Seed of libtorch's generators, set at construction and again after loading (Composer's <c>seed_all</c>; each rank adds its rank).</summary>
    public int Seed { get; init; } = 17;

    /// <summary>Samples per microbatch (gradient accumulation; at least 1), or null to train each batch whole.</summary>
    public int? DeviceTrainMicrobatchSize { get; init; }

    /// <summary>
    /// Composer's <c>accumulate_train_batch_on_tokens</c> (composer/trainer/trainer.py, <c>_train_microbatches</c> and
    /// <c>_train_microbatch</c>): weight each microbatch's mean loss, and each rank's share of the gradient, by its
    /// loss-generating tokens (<see cref="ComposerSharp.Models.ComposerModel.LossGeneratingTokens"/>, e.g. the labels that are not
    /// −100 of BERT MLM or GPT) divided by their total over every microbatch of every rank (one extra SUM all-reduce
    /// per step when distributed), instead of by its share of the samples. The step's gradient and logged loss are
    /// then those of the token mean over the whole global batch, the same for any microbatch size and any number of
    /// ranks; with sample weighting a loss that is a mean over tokens gives a result that depends on the split, as
    /// microbatches and ranks hold different numbers of masked tokens. Models that count samples (the default count)
    /// train exactly as with the option off. A step whose global batch holds no loss-generating token falls back to
    /// sample weighting (its losses are 0 with zero gradients for the models here). Off by default, as in Composer.
    /// </summary>
    public bool AccumulateTrainBatchOnTokens { get; init; }

    /// <summary>
    /// How often to evaluate during <see cref="Trainer.Fit"/> (<c>ep</c>, <c>ba</c>, <c>sp</c>, <c>tok</c>, <c>dur</c>;
    /// integers mean epochs; 0 disables); null means 1 epoch.
    /// </summary>
    public Time? EvalInterval { get; init; }

    /// <summary>Default cap on batches per evaluation (at least 1), or null for whole loaders.</summary>
    public long? EvalSubsetNumBatches { get; init; }

    /// <summary>Name of the run; from <c>COMPOSER_RUN_NAME</c> or generated when null (autoresume needs it explicit).</summary>
    public string? RunName { get; init; }

    /// <summary>
    /// Folder gathering this run's files (placeholders of <see cref="PathTemplate"/> allowed): <c>metrics.jsonl</c>,
    /// <c>tensorboard/</c> and, unless <see cref="CheckpointOptions.SaveFolder"/> names another folder,
    /// <c>checkpoints/</c>; null for none.
    /// </summary>
    public string? RunFolder { get; init; }

    /// <summary>Show progress on stderr (<see cref="ProgressBarLogger"/>: a bar on a terminal, plain lines when redirected).</summary>
    public bool ProgressBar { get; init; } = true;

    /// <summary>Log metrics through <see cref="Microsoft.Extensions.Logging.ILogger"/> (<see cref="ConsoleLogger"/>).</summary>
    public bool LogToConsole { get; init; }

    /// <summary>Interval between console metric lines (<c>ba</c> or <c>ep</c>); null means 1 batch.</summary>
    public Time? ConsoleLogInterval { get; init; }

    /// <summary>
    /// Compute the model's training metrics (<c>metrics/train/*</c>) on every batch (Composer's
    /// <c>compute_training_metrics</c>). On by default here, off by default in Composer: each batch then pays a
    /// second pass over the outputs and host reads of the results.
    /// </summary>
    public bool ComputeTrainingMetrics { get; init; } = true;

    /// <summary>
    /// Composer's <c>deterministic_mode</c>: results repeat bitwise run to run on the same machine and libtorch
    /// thread count (MKL Conditional Numerical Reproducibility, libtorch's deterministic algorithms, cuBLAS/cuDNN
    /// settings; see <see cref="Reproducibility.ConfigureDeterministicMode"/>). Process-wide, costs some speed, and
    /// must be switched on before the process's first MKL computation (the Trainer throws otherwise).
    /// </summary>
    public bool DeterministicMode { get; init; }

    /// <summary>Checkpoint saving and loading (Composer's <c>save_*</c>, <c>load_*</c> and <c>autoresume</c> arguments).</summary>
    public CheckpointOptions Checkpoint { get; init; } = new();

    /// <summary>
    /// Data-parallel settings (<c>dist_timeout</c>, <c>dist_backend</c>, bucket size, an explicit process group). The
    /// world size comes from the launcher's environment (<see cref="DistributedEnvironment"/>); nothing needs setting
    /// for one process. With several, the batch size of the training loader is per rank.
    /// </summary>
    public DistributedOptions Distributed { get; init; } = new();

    /// <summary>
    /// Checks every value and returns these options with <see cref="Device"/> in its normal form. The Trainer calls
    /// it first, before anything is built.
    /// </summary>
    /// <returns>A copy with the device name normalised (e.g. <c>" GPU "</c> → <c>cuda</c>).</returns>
    /// <remarks>
    /// Values whose rules belong to the component that uses them are checked there, once: the evaluation interval's
    /// units by <see cref="IntervalSchedule"/>, the console interval by <see cref="ConsoleLogger"/>, the subset size by
    /// <see cref="Evaluator"/>, the checkpoint settings by <see cref="Callbacks.CheckpointSaver"/> and <see cref="Checkpoint"/>.
    /// </remarks>
    /// <exception cref="ArgumentException">
    /// A value outside its range or of the wrong time unit; <see cref="ArgumentException.ParamName"/> is the
    /// property's name and the message quotes the value and what was expected.
    /// </exception>
    public TrainerOptions Validate()
    {
        if (MaxDuration is { } max)
        {
            CheckMaxDuration(max, nameof(MaxDuration));
        }

        string device = TrainerDevice.Normalize(Device ?? throw new ArgumentException("Device is null; expected cpu, cuda, cuda:N or auto.", nameof(Device)), nameof(Device));
        if (DeviceTrainMicrobatchSize is <= 0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(DeviceTrainMicrobatchSize), DeviceTrainMicrobatchSize, "The microbatch size must be at least 1 sample (or null for whole batches).");
        }

        if (RunName is { } name && string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException("run_name is empty; give a name (or null to have one generated).", nameof(RunName));
        }

        ArgumentNullException.ThrowIfNull(Checkpoint, nameof(Checkpoint));
        ArgumentNullException.ThrowIfNull(Distributed, nameof(Distributed));
        Distributed.Validate();
        return this with { Device = device };
    }

    /// <summary>
    /// Checks that <paramref name="max"/> can end training: a positive count of epochs, batches, samples or tokens
    /// (<c>sec</c>, <c>dur</c> and <c>iter</c> cannot, as in Composer).
    /// </summary>
    /// <returns><paramref name="max"/>.</returns>
    /// <exception cref="ArgumentException">Another unit or a value ≤ 0; the message quotes it and names the allowed units.</exception>
    public static Time CheckMaxDuration(Time max, string? paramName = null)
    {
        if (max.Unit is TimeUnit.Second or TimeUnit.Duration or TimeUnit.Iteration)
        {
            throw new ArgumentException(
                $"Max duration '{max}' is not allowed: '{max.Unit.Suffix()}' cannot end training; use epochs (\"2ep\" or an integer), batches (\"100ba\"), samples (\"4096sp\") or tokens (\"1e6tok\").",
                paramName);
        }

        if (max.Value <= 0)
        {
            throw new ArgumentException($"Max duration '{max}' is not allowed: it must be positive, e.g. \"1ep\" or \"100ba\"; nothing would be trained.", paramName);
        }

        return max;
    }
}
