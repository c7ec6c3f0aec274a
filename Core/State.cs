using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Core;

/// <summary>
/// A learning-rate schedule in Composer's style (composer/optim/scheduler.py): a function of the training
/// <see cref="State"/> that returns the multiplier applied to each parameter group's initial learning rate.
/// The Trainer evaluates it after every optimizer step.
/// </summary>
public interface IScheduler
{
    /// <summary>The learning-rate multiplier (≥ 0, usually ≤ 1) at the state's current timestamp.</summary>
    /// <exception cref="InvalidOperationException">The schedule needs <see cref="State.MaxDuration"/> and it is not set.</exception>
    double Factor(State state);
}

/// <summary>
/// Everything about a training run that algorithms and callbacks may read or change (Composer's
/// <c>composer.core.State</c>, composer/core/state.py). The Trainer owns it; algorithms know only this.
/// </summary>
public sealed class State
{
    /// <summary>Creates a state for <paramref name="model"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    public State(nn.Module model, Device? device = null, Precision precision = Precision.Fp32, string runName = "run")
    {
        Model = model ?? throw new ArgumentNullException(nameof(model));
        Device = device ?? torch.CPU;
        Precision = precision;
        RunName = runName;
    }

    /// <summary>The model being trained. Module surgery may replace its submodules; never replace it while optimizers hold its parameters.</summary>
    public nn.Module Model { get; set; }

    /// <summary>The optimizers (usually one); their parameter groups reference the model's parameters.</summary>
    public IList<optim.Optimizer> Optimizers { get; set; } = new List<optim.Optimizer>();

    /// <summary>Learning-rate schedules, applied after every optimizer step.</summary>
    public IList<IScheduler> Schedulers { get; set; } = new List<IScheduler>();

    /// <summary>Numerical precision of the run.</summary>
    public Precision Precision { get; set; }

    /// <summary>The device the model and batches live on (<c>cpu</c> or <c>cuda</c>).</summary>
    public Device Device { get; set; }

    /// <summary>Name of the run (used for folders and checkpoint names).</summary>
    public string RunName { get; set; }

    /// <summary>The random seed of the run.</summary>
    public int Seed { get; set; }

    /// <summary>
    /// Extra string metadata written into every checkpoint header (e.g. the model's description, so that a checkpoint
    /// can be used without the config that made it); set from the checkpoint options' <c>Metadata</c>. Built-in keys win.
    /// </summary>
    public IReadOnlyDictionary<string, string>? CheckpointMetadata { get; set; }

    /// <summary>
    /// Whether the run was started in deterministic mode (Composer's <c>State.deterministic_mode</c>): results then
    /// repeat bitwise on the same machine and thread count (<see cref="Reproducibility"/>).
    /// </summary>
    public bool DeterministicMode { get; set; }

    /// <summary>Training progress.</summary>
    public Timestamp Timestamp { get; set; } = new();

    /// <summary>When training stops (any unit but <c>dur</c>, as in Composer), or null before one is set.</summary>
    /// <exception cref="ArgumentException">Set to a <c>dur</c> time, which is relative to the max duration itself.</exception>
    public Time? MaxDuration
    {
        get => _maxDuration;
        set => _maxDuration = value is { Unit: TimeUnit.Duration } d
            ? throw new ArgumentException($"The max duration cannot be {d}: 'dur' is a fraction of the max duration; use iter, ep, ba, sp, tok or sec.", nameof(value))
            : value;
    }

    private Time? _maxDuration;

    /// <summary>
    /// Epochs per iteration (Composer's <c>iteration_length</c>), or null (the default) for a run that is one
    /// iteration. When set, the training loop ends an iteration after the epoch that completes it: the timestamp
    /// moves to the next iteration and IterationEnd and IterationCheckpoint are raised, then IterationStart for the
    /// next one. Curriculum-style callbacks set it (for example at Init).
    /// </summary>
    /// <exception cref="ArgumentException">Set to a time that is not a positive number of epochs.</exception>
    public Time? IterationLength
    {
        get => _iterationLength;
        set => _iterationLength = value is { } v && (v.Unit != TimeUnit.Epoch || v.Value < 1)
            ? throw new ArgumentException($"The iteration length cannot be {v}: it must be a positive number of epochs (e.g. 2ep).", nameof(value))
            : value;
    }

    private Time? _iterationLength;

    /// <summary>The dataloader being iterated now (train, eval or predict), or null.</summary>
    public IDataLoader? Dataloader { get; set; }

    /// <summary>Label of <see cref="Dataloader"/>: <c>train</c>, an eval label such as <c>eval</c>, or <c>predict</c>.</summary>
    public string? DataloaderLabel { get; set; }

    /// <summary>Batches per epoch of <see cref="Dataloader"/>, or null when unknown.</summary>
    public long? DataloaderLength => Dataloader?.BatchesPerEpoch;

    /// <summary>The training dataloader, or null.</summary>
    public IDataLoader? TrainDataloader { get; set; }

    /// <summary>
    /// The current batch: the whole batch at the per-batch events, the microbatch inside the per-microbatch
    /// events (BeforeForward … AfterBackward). Algorithms may replace it at AfterDataloader.
    /// </summary>
    public Batch? Batch { get; set; }

    /// <summary>Output of the last forward pass, e.g. logits Float32/BFloat16 [B, T, V] or [B, C].</summary>
    public Tensor? Outputs { get; set; }

    /// <summary>Loss of the last microbatch (scalar), as the model returned it.</summary>
    public Tensor? Loss { get; set; }

    /// <summary>
    /// The loss scaler (Composer's <c>state.scaler</c>): enabled for <c>amp_fp16</c>, a pass-through otherwise. The
    /// training loop scales, unscales and steps through it; checkpoints save and restore its state.
    /// </summary>
    public GradScaler Scaler { get; set; } = new(enabled: false);

    /// <summary>
    /// The CPU generator state (libtorch's <c>get_rng_state</c> bytes) a loaded checkpoint holds, or null. The
    /// training loop restores it at FitStart and clears it, so that a resumed run draws the same random numbers
    /// (dropout, shuffling) as the uninterrupted one; loading happens at construction, before the seed is re-set.
    /// </summary>
    public byte[]? PendingRngState { get; set; }

    /// <summary>
    /// The processes training this model together (rank, world size, a byte gather; Composer's <c>dist</c>): the
    /// Trainer's process group (ComposerSharp.Distributed's <c>IProcessGroup</c>, the one its <c>DataParallel</c>
    /// wraps), or <see cref="SingleRankGroup"/> (world size 1) by default. Checkpoints gather every rank's RNG state
    /// through it and only rank 0 writes files.
    /// </summary>
    /// <exception cref="ArgumentNullException">Set to null.</exception>
    public IRankGroup ProcessGroup
    {
        get => _processGroup;
        set => _processGroup = value ?? throw new ArgumentNullException(nameof(value), "The process group cannot be null; use SingleRankGroup for one process.");
    }

    private IRankGroup _processGroup = new SingleRankGroup();

    /// <summary>The run's algorithms, in the order given (the engine's passes decide the run order).</summary>
    public IList<IAlgorithm> Algorithms { get; set; } = new List<IAlgorithm>();

    /// <summary>The run's callbacks (logger destinations included).</summary>
    public IList<ICallback> Callbacks { get; set; } = new List<ICallback>();

    /// <summary>The latest value of each logged metric, e.g. <c>metrics/eval/Accuracy</c> → 0.93.</summary>
    public IDictionary<string, double> Metrics { get; } = new Dictionary<string, double>();

    /// <summary>Source of <see cref="ILogger"/>s for diagnostics (warnings, surgery reports); a null factory by default.</summary>
    public ILoggerFactory LoggerFactory { get; set; } = NullLoggerFactory.Instance;

    /// <summary>
    /// The timestamp before the last batch or epoch advance (Composer's <c>previous_timestamp</c>), or null before
    /// the first batch of the run. Interval rules (evaluation, checkpoints) compare it with <see cref="Timestamp"/>
    /// to tell whether an interval boundary was crossed.
    /// </summary>
    public Timestamp? PreviousTimestamp { get; set; }

    /// <summary>Progress of the evaluation in progress (reset at each EvalStart; Composer's <c>eval_timestamp</c>).</summary>
    public Timestamp EvalTimestamp { get; set; } = new();

    /// <summary>Progress of the prediction in progress (reset at each PredictStart; Composer's <c>predict_timestamp</c>).</summary>
    public Timestamp PredictTimestamp { get; set; } = new();

    /// <summary>The evaluation dataloaders by label (e.g. <c>eval</c>), in the order they run.</summary>
    public IDictionary<string, IDataLoader> EvalDataloaders { get; } = new Dictionary<string, IDataLoader>();

    /// <summary>
    /// Samples per training microbatch (Composer's <c>device_train_microbatch_size</c>), or null to train each
    /// batch in one piece.
    /// </summary>
    public long? DeviceTrainMicrobatchSize { get; set; }

    /// <summary>
    /// Fraction of <see cref="MaxDuration"/> elapsed, as a <c>dur</c> time (0 at the start, 1 at the end): the
    /// timestamp's counter in the max duration's unit divided by the max duration (Composer's
    /// <c>get_elapsed_duration</c>). Null when no max duration is set; 1 when the max duration is zero (a run
    /// stopped before its first batch is complete).
    /// </summary>
    public Time? ElapsedDuration
    {
        get
        {
            if (MaxDuration is not { } max)
            {
                return null;
            }

            if (max.Value == 0)
            {
                return Time.FromDuration(1);
            }

            double fraction = Timestamp.Get(max.Unit).Value / max.Value;
            return Time.FromDuration(Math.Max(0, fraction));
        }
    }

    /// <summary>
    /// Stops training gracefully, with Composer's meaning (<c>State.stop_training</c>): the batch in progress and
    /// its evaluation, logging and epoch-end events finish, then the loop ends, because the max duration shrinks to
    /// the current time in its own unit, or to the batches completed so far when it is in epochs (or unset).
    /// </summary>
    public void StopTraining() =>
        MaxDuration = MaxDuration is { } max && max.Unit != TimeUnit.Epoch
            ? Timestamp.Get(max.Unit)
            : Time.FromBatch(Timestamp.Batch);
}
