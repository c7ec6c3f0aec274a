using ComposerSharp.Distributed;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Models;
using ComposerSharp.Training.Callbacks;
using ComposerSharp.Training.Checkpoints;
using ComposerSharp.Training.Loggers;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using EventsLogger = ComposerSharp.Events.Logger;

namespace ComposerSharp.Training;

/// <summary>
/// Trains, evaluates and runs a <see cref="ComposerModel"/> with Composer's training loop
/// (composer/trainer/trainer.py): every lifecycle <see cref="Event"/> is raised at the same point and in the same
/// order as in Composer, so algorithms and callbacks written against Composer's contract behave the same.
/// <code>
/// new Trainer(model, trainDataloader, maxDuration: "1ep",
///             algorithms: new[] { new LowPrecisionLayerNorm() }, precision: Precision.AmpBf16).Fit();
/// </code>
/// </summary>
/// <remarks>
/// <para>
/// Construction, in Composer's order: device, precision and seed; the model moved to the device; optimizers
/// (created after the move, because TorchSharp replaces <c>Parameter</c> objects on <c>.to()</c>); state, loggers
/// and callbacks; the engine; <see cref="Event.Init"/>; evaluators, training dataloader, max duration and
/// schedulers bound; <see cref="Event.BeforeLoad"/>; checkpoint load or autoresume; <see cref="Event.AfterLoad"/>;
/// reseeding with the run's seed.
/// </para>
/// <para>
/// Every training, evaluation and prediction step runs inside <c>torch.NewDisposeScope()</c>; the tensors of
/// <see cref="State.Batch"/>, <see cref="State.Outputs"/> and <see cref="State.Loss"/> live until the end of their
/// step, and the state's references are cleared then. All work happens on the calling thread (libtorch's
/// autocast state is per thread).
/// </para>
/// </remarks>
public sealed partial class Trainer : IDisposable
{
    /// <summary>Tunes glibc's malloc for large tensors before the first Trainer is built (see <see cref="NativeAllocator"/>): a library user needs no setup of their own.</summary>
    static Trainer() => NativeAllocator.Tune();

    private readonly ComposerModel _model;
    private readonly ILogger _log;
    private readonly List<EvaluatorRun> _evaluators = new();
    private IReadOnlyList<IMetric> _trainMetrics;
    private readonly List<optim.Optimizer> _ownedOptimizers = new();
    private Tensor? _lastLoss;
    private bool _closed;
    private CancellationToken _fitCancellation;

    // Distributed: data-parallel calls (no-ops for world size 1); the logic lives in Distributed/DataParallel.cs.
    private readonly DataParallel _distributed;

    /// <summary>Creates a Trainer.</summary>
    /// <param name="model">The model; it is moved to the device.</param>
    /// <param name="trainDataloader">Training batches (may be given only for <see cref="Fit"/> use later; needed to train).</param>
    /// <param name="maxDuration">
    /// When training stops: <c>"2ep"</c>, <c>"100ba"</c>, <c>"4096sp"</c>, <c>"1e6tok"</c>, or an integer number of
    /// epochs. <c>sec</c>, <c>dur</c> and <c>iter</c> are refused.
    /// </param>
    /// <param name="evalDataloader">Evaluation batches, run under the label <c>eval</c>.</param>
    /// <param name="algorithms">Algorithms, in the order given (the engine's passes decide the run order).</param>
    /// <param name="callbacks">Callbacks (a <see cref="CheckpointSaver"/> among them is bound to this Trainer).</param>
    /// <param name="loggers">Logger destinations (metrics sinks).</param>
    /// <param name="precision">fp32, amp_bf16 or amp_fp16; by default fp32 on CPU and amp_bf16 on CUDA.</param>
    /// <param name="device"><c>cpu</c>, <c>cuda</c>, <c>cuda:N</c> or <c>auto</c> (CUDA when available).</param>
    /// <param name="seed">Seed of libtorch's generators, set at construction and again after loading (Composer's <c>seed_all</c>).</param>
    /// <param name="optimizers">
    /// Optimizers over the model's parameters; they must have been created for parameters already on
    /// <paramref name="device"/>. When null and no <paramref name="optimizerFactory"/> is given, the default is
    /// <c>torch.optim.SGD(lr: 0.1)</c> (Composer's default <c>DecoupledSGDW(lr=0.1)</c> has zero weight decay,
    /// which makes it the same update).
    /// </param>
    /// <param name="schedulers">Learning-rate schedules; the rate of each parameter group during batch k is its initial rate times the product of the factors at timestamp k.</param>
    /// <param name="deviceTrainMicrobatchSize">Samples per microbatch (gradient accumulation), or null to train each batch whole.</param>
    /// <param name="evalInterval">How often to evaluate during <see cref="Fit"/> (<c>ep</c>, <c>ba</c>, <c>sp</c>, <c>tok</c>, <c>dur</c>; integers mean epochs; 0 disables); 1 epoch by default.</param>
    /// <param name="checkpoint">Checkpoint saving/loading options.</param>
    /// <param name="loggerFactory">Source of <see cref="ILogger"/>s for diagnostics and the console logger.</param>
    /// <param name="runName">Name of the run; from <c>COMPOSER_RUN_NAME</c> or generated when null (autoresume needs it explicit).</param>
    /// <param name="evaluators">More evaluators, each with its own label, metrics and interval.</param>
    /// <param name="optimizerFactory">Creates the optimizer from the model's parameters after the move to the device (preferred over <paramref name="optimizers"/> for CUDA).</param>
    /// <param name="evalSubsetNumBatches">Default cap on batches per evaluation, or null for whole loaders.</param>
    /// <param name="runFolder">Folder gathering this run's files: <c>metrics.jsonl</c>, <c>tensorboard/</c> and, unless the checkpoint options name another folder, <c>checkpoints/</c>.</param>
    /// <param name="progressBar">Show a Spectre.Console progress bar on stderr (it stays off when stderr is redirected).</param>
    /// <param name="logToConsole">Log metrics through <see cref="ILogger"/> (<see cref="ConsoleLogger"/>).</param>
    /// <param name="consoleLogInterval">Batches between console metric lines (<c>ba</c> or <c>ep</c>); 1 batch by default.</param>
    /// <param name="algorithmPasses">Extra algorithm passes, appended after Composer's defaults.</param>
    /// <param name="gradScaler">The loss scaler for amp_fp16; PyTorch's defaults when null. Ignored for other precisions.</param>
    /// <param name="computeTrainingMetrics">
    /// Compute the model's training metrics (<c>metrics/train/*</c>) on every batch (Composer's
    /// <c>compute_training_metrics</c>). On by default here, off by default in Composer: each batch then pays a
    /// second pass over the outputs and host reads of the results.
    /// </param>
    /// <param name="deterministicMode">
    /// Composer's <c>deterministic_mode</c>: results repeat bitwise run to run on the same machine and libtorch
    /// thread count (MKL Conditional Numerical Reproducibility, libtorch's deterministic algorithms, cuBLAS/cuDNN
    /// settings; see <see cref="Reproducibility.ConfigureDeterministicMode"/>). Process-wide, costs some speed, and
    /// must be switched on before the process's first MKL computation (the Trainer throws otherwise).
    /// </param>
    /// <param name="distributed">
    /// Data-parallel settings (<c>dist_timeout</c>, <c>dist_backend</c>, bucket size, an explicit process group). The
    /// world size comes from the launcher's environment (<see cref="DistributedEnvironment"/>); nothing needs setting
    /// for one process. With several, the batch size of the training loader is per rank.
    /// </param>
    /// <exception cref="ArgumentException">Bad durations, sizes or names; the message names the value and what was expected.</exception>
    /// <exception cref="InvalidOperationException">Deterministic mode requested after MKL already computed without it; CUDA requested but unavailable, optimizers over parameters on another device, or autoresume without a run name.</exception>
    /// <exception cref="NotSupportedException">The precision cannot run on the device.</exception>
    /// <exception cref="CheckpointException">The checkpoint to load is missing, truncated, damaged or foreign.</exception>
    public Trainer(
        ComposerModel model,
        IDataLoader? trainDataloader = null,
        Time? maxDuration = null,
        IDataLoader? evalDataloader = null,
        IEnumerable<IAlgorithm>? algorithms = null,
        IEnumerable<ICallback>? callbacks = null,
        IEnumerable<ILoggerDestination>? loggers = null,
        Precision? precision = null,
        string device = "auto",
        int seed = 17,
        IEnumerable<optim.Optimizer>? optimizers = null,
        IEnumerable<IScheduler>? schedulers = null,
        int? deviceTrainMicrobatchSize = null,
        Time? evalInterval = null,
        CheckpointOptions? checkpoint = null,
        ILoggerFactory? loggerFactory = null,
        string? runName = null,
        IEnumerable<Evaluator>? evaluators = null,
        Func<IEnumerable<Parameter>, optim.Optimizer>? optimizerFactory = null,
        long? evalSubsetNumBatches = null,
        string? runFolder = null,
        bool progressBar = true,
        bool logToConsole = false,
        Time? consoleLogInterval = null,
        IEnumerable<AlgorithmPass>? algorithmPasses = null,
        GradScaler? gradScaler = null,
        bool computeTrainingMetrics = true,
        bool deterministicMode = false,
        DistributedOptions? distributed = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        loggerFactory ??= NullLoggerFactory.Instance;
        _log = loggerFactory.CreateLogger<Trainer>();
        if (deterministicMode)
        {
            // First, as in Composer: MKL's reproducibility mode can only be switched on before its first computation.
            Reproducibility.ConfigureDeterministicMode(_log);
        }
        checkpoint ??= new CheckpointOptions();
        if (deviceTrainMicrobatchSize is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(deviceTrainMicrobatchSize), deviceTrainMicrobatchSize, "The microbatch size must be at least 1 sample (or null for whole batches).");
        }

        if (optimizers is not null && optimizerFactory is not null)
        {
            throw new ArgumentException("Give either optimizers or optimizerFactory, not both.", nameof(optimizerFactory));
        }

        // Device, precision and seed.
        Device dev = TrainerDevice.Resolve(device);
        Precision prec = precision ?? (dev.type == DeviceType.CUDA ? Precision.AmpBf16 : Precision.Fp32);
        TrainerDevice.CheckPrecision(prec, dev);
        SeedAll(seed);
        _distributed = DataParallel.Create(dev, distributed, loggerFactory); // Distributed

        // Model to device, then optimizers.
        List<optim.Optimizer> opts = optimizers?.ToList() ?? new List<optim.Optimizer>();
        if (optimizers is not null && opts.Count > 0)
        {
            Parameter? onOtherDevice = model.parameters().FirstOrDefault(p => !SameDevice(p.device, dev));
            if (onOtherDevice is not null)
            {
                throw new InvalidOperationException(
                    $"The optimizers were created over parameters on '{onOtherDevice.device}', but the Trainer moves the model to '{dev}', which replaces TorchSharp's Parameter objects. " +
                    "Create the model on the target device first, or pass optimizerFactory so the optimizer is built after the move.");
            }
        }

        model.to(dev);
        if (optimizers is null)
        {
            Parameter[] parameters = model.parameters().ToArray();
            if (optimizerFactory is not null)
            {
                opts.Add(optimizerFactory(parameters) ?? throw new InvalidOperationException("optimizerFactory returned null."));
            }
            else if (parameters.Length > 0)
            {
                opts.Add(torch.optim.SGD(parameters, learningRate: 0.1));
                _log.LogWarning("No optimizer was specified. Defaulting to SGD(lr=0.1).");
            }
            else
            {
                _log.LogWarning("No optimizer was specified and the model has no parameters; this Trainer can evaluate and predict but not train.");
            }

            _ownedOptimizers.AddRange(opts);
        }

        // Run name.
        runName ??= Environment.GetEnvironmentVariable("COMPOSER_RUN_NAME");
        if (runName is null)
        {
            if (checkpoint.Autoresume)
            {
                throw new InvalidOperationException("Autoresume needs an explicit runName so that the run's checkpoints can be found again.");
            }

            runName = $"run-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid().ToString("N")[..6]}";
        }

        // State, loggers and callbacks.
        State = new State(model, dev, prec, runName)
        {
            Seed = seed,
            DeterministicMode = deterministicMode,
            Optimizers = opts,
            Algorithms = (algorithms ?? Array.Empty<IAlgorithm>()).ToList(),
            LoggerFactory = loggerFactory,
            DeviceTrainMicrobatchSize = deviceTrainMicrobatchSize,
            CheckpointMetadata = checkpoint.Metadata,
            ProcessGroup = _distributed, // Distributed: checkpoints gather RNG states and write on rank 0 through it
        };

        List<ILoggerDestination> destinations = (loggers ?? Array.Empty<ILoggerDestination>()).ToList();
        if (runFolder is not null)
        {
            RunFolder = Path.GetFullPath(PathTemplate.Expand(runFolder, State));
            Directory.CreateDirectory(RunFolder);
            if (_distributed.IsRankZero)
            {
                // Distributed: only rank 0 opens the run folder's log files (other ranks would hold them open unused).
                destinations.Add(new JsonLinesLogger(Path.Combine(RunFolder, "metrics.jsonl")));
                destinations.Add(new TensorBoardLogger(Path.Combine(RunFolder, "tensorboard")));
            }
        }

        if (progressBar && !destinations.OfType<ProgressBarLogger>().Any())
        {
            destinations.Add(new ProgressBarLogger());
        }

        if (logToConsole && !destinations.OfType<ConsoleLogger>().Any())
        {
            destinations.Add(new ConsoleLogger(loggerFactory.CreateLogger<ConsoleLogger>(), consoleLogInterval ?? Time.FromBatch(1)));
        }

        if (destinations.OfType<ProgressBarLogger>().Any(b => b.Enabled) && destinations.OfType<ConsoleLogger>().Any())
        {
            _log.LogWarning("Both a progress bar and console logging are on; their lines will interleave. Consider turning one off (as Composer advises).");
        }

        destinations = _distributed.OnRankZero(destinations); // Distributed: loggers and the progress bar on rank 0 only
        Logger = new EventsLogger(State, destinations);
        List<ICallback> allCallbacks = destinations.Cast<ICallback>().Concat(callbacks ?? Array.Empty<ICallback>()).ToList();
        string? saveFolder = checkpoint.SaveFolder ?? (RunFolder is null ? null : Path.Combine(RunFolder, "checkpoints"));
        if (saveFolder is not null)
        {
            allCallbacks.Add(new CheckpointSaver(
                saveFolder,
                checkpoint.SaveFilename,
                checkpoint.SaveLatestFilename,
                checkpoint.SaveInterval,
                checkpoint.SaveOverwrite,
                checkpoint.SaveNumCheckpointsToKeep,
                checkpoint.SaveWeightsOnly,
                checkpoint.SaveBest));
        }

        State.Callbacks = allCallbacks;

        // The engine and Init.
        Engine = new Engine(State, Logger);
        foreach (AlgorithmPass pass in algorithmPasses ?? Array.Empty<AlgorithmPass>())
        {
            Engine.RegisterPass(pass);
        }

        try
        {
            Initialize(trainDataloader, maxDuration, evalDataloader, schedulers, evalInterval, checkpoint, evaluators, evalSubsetNumBatches, gradScaler, saveFolder, prec, computeTrainingMetrics);
        }
        catch
        {
            // Release what the callbacks and loggers hold (open files, the progress bar) before reporting the failure.
            try
            {
                Close();
            }
            catch (Exception closeError)
            {
                _log.LogWarning(closeError, "Closing the Trainer after a failed construction also failed.");
            }

            throw;
        }
    }

    /// <summary>The second half of construction, from Init to the reseeding after AfterLoad.</summary>
    [System.Diagnostics.CodeAnalysis.MemberNotNull(nameof(_trainMetrics))]
    private void Initialize(
        IDataLoader? trainDataloader,
        Time? maxDuration,
        IDataLoader? evalDataloader,
        IEnumerable<IScheduler>? schedulers,
        Time? evalInterval,
        CheckpointOptions checkpoint,
        IEnumerable<Evaluator>? evaluators,
        long? evalSubsetNumBatches,
        GradScaler? gradScaler,
        string? saveFolder,
        Precision prec,
        bool computeTrainingMetrics)
    {
        Engine.RunEvent(Event.Init);
        _distributed.SynchronizeModel(State.Model); // Distributed: same tensors everywhere, then rank 0's values
        LogRunHyperparameters();

        // Metrics, evaluators, dataloader, max duration, schedulers, scaler.
        _trainMetrics = computeTrainingMetrics ? _model.GetMetrics(isTrain: true) : Array.Empty<IMetric>();
        Time defaultInterval = evalInterval ?? Time.FromEpoch(1);
        if (defaultInterval.Value <= 0 && (evalDataloader is not null || evaluators?.Any() == true))
        {
            _log.LogInformation("Evaluation during training is off (eval interval {Interval}); evaluators without their own interval run only when Eval is called.", defaultInterval);
        }
        if (evalDataloader is not null)
        {
            AddEvaluator(new Evaluator("eval", evalDataloader, subsetNumBatches: evalSubsetNumBatches), defaultInterval, evalSubsetNumBatches);
        }

        foreach (Evaluator evaluator in evaluators ?? Array.Empty<Evaluator>())
        {
            AddEvaluator(evaluator, defaultInterval, evalSubsetNumBatches);
        }

        if (trainDataloader is not null)
        {
            trainDataloader = _distributed.ShardForTraining(trainDataloader); // Distributed: this rank's shard
            State.TrainDataloader = trainDataloader;
            State.Dataloader = trainDataloader;
            State.DataloaderLabel = TrainLabel;
        }

        if (maxDuration is { } max)
        {
            State.MaxDuration = CheckMaxDuration(max, nameof(maxDuration));
        }

        State.Schedulers = (schedulers ?? Array.Empty<IScheduler>()).ToList();
        State.Scaler = prec == Precision.AmpFp16 ? gradScaler ?? new GradScaler() : new GradScaler(enabled: false);

        // Loading.
        Engine.RunEvent(Event.BeforeLoad);
        string? loadPath = checkpoint.LoadPath;
        if (checkpoint.Autoresume && Checkpoint.FindLatest(State, checkpoint, saveFolder) is { } latest)
        {
            // Autoresume continues the run itself: everything is restored and no algorithm is left out.
            _log.LogInformation("Autoresuming from {Checkpoint}.", latest);
            loadPath = latest;
            checkpoint = checkpoint with { LoadWeightsOnly = false, LoadExcludeAlgorithms = null, LoadIgnoreKeys = null };
        }

        if (loadPath is not null)
        {
            Checkpoint.Load(State, Logger, loadPath, checkpoint);
        }

        Engine.RunEvent(Event.AfterLoad);
        SeedAll(State.Seed + _distributed.Rank); // Distributed: each rank its own stream (Composer: rank_zero_seed + rank)
    }

    /// <summary>The label of the training dataloader.</summary>
    public const string TrainLabel = "train";

    /// <summary>The state shared with algorithms and callbacks.</summary>
    public State State { get; }

    /// <summary>Whether the last <see cref="Fit"/> ended early because its cancellation token asked for a stop.</summary>
    public bool StoppedByRequest { get; private set; }

    /// <summary>The engine that runs algorithms, callbacks and loggers at each event.</summary>
    public Engine Engine { get; }

    /// <summary>The logger that fans metrics out to the destinations.</summary>
    public EventsLogger Logger { get; }

    /// <summary>The loss scaler (enabled only for amp_fp16); the same object as <see cref="State.Scaler"/>.</summary>
    public GradScaler GradScaler => State.Scaler;

    /// <summary>The run folder (absolute), or null when none was given.</summary>
    public string? RunFolder { get; }

    /// <summary>The data-parallel context (world size 1 unless started by a launcher).</summary>
    public DataParallel Distributed => _distributed;

    /// <summary>The model, as given (<see cref="State.Model"/> is the same object).</summary>
    public ComposerModel Model => _model;

    /// <summary>The evaluators, in the order they run.</summary>
    public IReadOnlyList<Evaluator> Evaluators => _evaluators.Select(e => e.Evaluator).ToList();

    /// <summary>Closes the engine (every callback and logger closes once) and disposes optimizers this Trainer created. Later calls do nothing.</summary>
    public void Close()
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        try
        {
            Engine.Close();
        }
        finally
        {
            foreach (optim.Optimizer optimizer in _ownedOptimizers)
            {
                optimizer.Dispose();
            }

            _lastLoss?.Dispose();
            _distributed.Dispose();
        }
    }

    /// <summary>
    /// Writes a checkpoint of this run to <paramref name="path"/> (a <see cref="PathTemplate"/>); the same as
    /// <see cref="Checkpoint.Save"/> on <see cref="State"/>, which describes the contents and the atomic write.
    /// </summary>
    /// <returns>The absolute path written.</returns>
    /// <exception cref="ObjectDisposedException">The Trainer is closed.</exception>
    /// <exception cref="CheckpointException">The write failed; the previous file, if any, is unchanged.</exception>
    /// <exception cref="NotSupportedException">An optimizer whose state TorchSharp cannot serialise.</exception>
    public string SaveCheckpoint(string path, bool weightsOnly = false)
    {
        ThrowIfClosed();
        return Checkpoint.Save(State, path, weightsOnly);
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => Close();

    private void ThrowIfClosed()
    {
        if (_closed)
        {
            throw new ObjectDisposedException(nameof(Trainer), "The Trainer is closed.");
        }
    }

    private static void SeedAll(int seed)
    {
        torch.manual_seed(seed);
        if (torch.cuda.is_available())
        {
            torch.cuda.manual_seed_all(seed);
        }
    }

    /// <summary>Same device type and, for CUDA, the same index (an unspecified index means device 0).</summary>
    internal static bool SameDevice(Device a, Device b) =>
        a.type == b.type && (a.type == DeviceType.CPU || Math.Max(a.index, 0) == Math.Max(b.index, 0));

    /// <summary>
    /// Checks a max duration (or a <see cref="Fit"/> duration) the way the Trainer does, so that callers such as the
    /// CLI report the same rule: a positive number of epochs, batches, samples or tokens.
    /// </summary>
    /// <returns><paramref name="max"/>.</returns>
    /// <exception cref="ArgumentException">The unit is <c>sec</c>, <c>dur</c> or <c>iter</c>, or the value is not positive; the message quotes the value and lists what is allowed.</exception>
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

    private void AddEvaluator(Evaluator evaluator, Time defaultInterval, long? defaultSubset)
    {
        if (_evaluators.Any(e => e.Evaluator.Label == evaluator.Label) || evaluator.Label == TrainLabel)
        {
            throw new ArgumentException($"Evaluator label '{evaluator.Label}' is already used; give each evaluator a unique label other than '{TrainLabel}'.", nameof(evaluator));
        }

        if (evaluator.SubsetNumBatches is null && defaultSubset is null && evaluator.Dataloader.BatchesPerEpoch is null)
        {
            throw new ArgumentException(
                $"Evaluator '{evaluator.Label}' has a dataloader of unknown length; set its subsetNumBatches (or evalSubsetNumBatches) so evaluation ends.", nameof(evaluator));
        }

        IReadOnlyList<IMetric> all = _model.GetMetrics(isTrain: false);
        IReadOnlyList<IMetric> metrics = all;
        if (evaluator.MetricNames is { } names)
        {
            string[] unknown = names.Where(n => all.All(m => m.Name != n)).ToArray();
            if (unknown.Length > 0)
            {
                throw new ArgumentException(
                    $"Evaluator '{evaluator.Label}' asks for metrics {string.Join(", ", unknown)}, which the model does not provide (it has: {string.Join(", ", all.Select(m => m.Name))}).",
                    nameof(evaluator));
            }

            metrics = all.Where(m => names.Contains(m.Name)).ToList();
        }

        var schedule = new IntervalSchedule(evaluator.EvalInterval ?? defaultInterval, checkpointEvents: false, finalEvents: new[] { Event.FitEnd });
        _evaluators.Add(new EvaluatorRun(evaluator, metrics, schedule, evaluator.SubsetNumBatches ?? defaultSubset));
        State.EvalDataloaders[evaluator.Label] = evaluator.Dataloader;
    }

    private void LogRunHyperparameters()
    {
        var hp = new Dictionary<string, object?>
        {
            ["composersharp_version"] = Checkpoint.LibraryVersion(typeof(Trainer).Assembly),
            ["torchsharp_version"] = Checkpoint.LibraryVersion(typeof(torch).Assembly),
            ["run_name"] = State.RunName,
            ["seed"] = State.Seed,
            ["deterministic_mode"] = State.DeterministicMode,
            ["precision"] = State.Precision.ToComposerName(),
            ["device"] = State.Device.ToString(),
            ["device_train_microbatch_size"] = State.DeviceTrainMicrobatchSize,
            ["world_size"] = _distributed.WorldSize,
        };
        foreach (IAlgorithm algorithm in State.Algorithms)
        {
            hp[$"enabled_algorithms/{algorithm.Name}"] = true;
        }

        Logger.LogHyperparameters(hp);
    }

    /// <summary>An evaluator with its metric instances and interval schedule.</summary>
    private sealed record EvaluatorRun(Evaluator Evaluator, IReadOnlyList<IMetric> Metrics, IntervalSchedule Schedule, long? SubsetNumBatches);
}
