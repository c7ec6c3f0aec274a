using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
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

namespace ComposerSharp.Training;

/// <summary>
/// Trains, evaluates and runs a <see cref="ComposerModel"/> with Composer's training loop
/// (composer/trainer/trainer.py): every lifecycle <see cref="Event"/> is raised at the same point and in the same
/// order as in Composer, so algorithms and callbacks written against Composer's contract behave the same.
/// <code>
/// new Trainer(model, new TrainerOptions { MaxDuration = "1ep", Precision = Precision.AmpBf16 }, trainDataloader,
///             algorithms: new[] { new LowPrecisionLayerNorm() }).Fit();
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
    private readonly ComposerModel _model;
    private readonly ILogger _log;
    private IReadOnlyList<IMetric> _trainMetrics;
    private readonly List<optim.Optimizer> _ownedOptimizers = new();
    private Tensor? _lastLoss;
    private bool _closed;
    private CancellationToken _fitCancellation;

    // Composer's accumulate_train_batch_on_tokens: microbatches and ranks weigh by their loss-generating tokens.
    private readonly bool _accumulateOnTokens;

    // Distributed: data-parallel calls (no-ops for world size 1); the logic lives in Distributed/DataParallel.cs.
    // Its process group is State.ProcessGroup.
    private readonly DataParallel _dataParallel;

    /// <summary>Creates a Trainer: the scalar settings in <paramref name="options"/>, the components as arguments (Composer's <c>Trainer</c> arguments of the same names).</summary>
    /// <param name="model">The model; it is moved to the device.</param>
    /// <param name="options">Duration, device, precision, seed, intervals, run folder, checkpointing and distributed settings; the defaults of <see cref="TrainerOptions"/> when null.</param>
    /// <param name="trainDataloader">Training batches (may be given only for <see cref="Fit"/> use later; needed to train).</param>
    /// <param name="evalDataloader">Evaluation batches, run under the label <c>eval</c>.</param>
    /// <param name="algorithms">Algorithms, in the order given (the engine's passes decide the run order).</param>
    /// <param name="callbacks">Callbacks.</param>
    /// <param name="loggers">Logger destinations (metrics sinks).</param>
    /// <param name="optimizers">
    /// Optimizers over the model's parameters; they must have been created for parameters already on the device.
    /// When null and no <paramref name="optimizerFactory"/> is given, the default is <c>torch.optim.SGD(lr: 0.1)</c>
    /// (Composer's default <c>DecoupledSGDW(lr=0.1)</c> has zero weight decay, which makes it the same update).
    /// </param>
    /// <param name="optimizerFactory">Creates the optimizer from the model's parameters after the move to the device (preferred over <paramref name="optimizers"/> for CUDA).</param>
    /// <param name="schedulers">Learning-rate schedules; the rate of each parameter group during batch k is its initial rate times the product of the factors at timestamp k.</param>
    /// <param name="evaluators">More evaluators, each with its own label, metrics and interval.</param>
    /// <param name="algorithmPasses">Extra algorithm passes, appended after Composer's defaults.</param>
    /// <param name="gradScaler">The loss scaler for amp_fp16; PyTorch's defaults when null. Ignored for other precisions.</param>
    /// <param name="loggerFactory">Source of <see cref="ILogger"/>s for diagnostics and the console logger.</param>
    /// <exception cref="ArgumentException">Bad durations, sizes or names; the message names the value and what was expected.</exception>
    /// <exception cref="InvalidOperationException">Deterministic mode requested after MKL already computed without it; CUDA requested but unavailable, optimizers over parameters on another device, or autoresume without a run name.</exception>
    /// <exception cref="NotSupportedException">The precision cannot run on the device.</exception>
    /// <exception cref="CheckpointException">The checkpoint to load is missing, truncated, damaged or foreign.</exception>
    public Trainer(
        ComposerModel model,
        TrainerOptions? options = null,
        IDataLoader? trainDataloader = null,
        IDataLoader? evalDataloader = null,
        IEnumerable<IAlgorithm>? algorithms = null,
        IEnumerable<ICallback>? callbacks = null,
        IEnumerable<ILoggerDestination>? loggers = null,
        IEnumerable<optim.Optimizer>? optimizers = null,
        Func<IEnumerable<Parameter>, optim.Optimizer>? optimizerFactory = null,
        IEnumerable<IScheduler>? schedulers = null,
        IEnumerable<Evaluator>? evaluators = null,
        IEnumerable<AlgorithmPass>? algorithmPasses = null,
        GradScaler? gradScaler = null,
        ILoggerFactory? loggerFactory = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        TrainerOptions o = (options ?? new TrainerOptions()).Validate();
        loggerFactory ??= NullLoggerFactory.Instance;
        _accumulateOnTokens = o.AccumulateTrainBatchOnTokens;
        _log = loggerFactory.CreateLogger<Trainer>();
        if (o.DeterministicMode)
        {
            // First, as in Composer: MKL's reproducibility mode can only be switched on before its first computation.
            Reproducibility.ConfigureDeterministicMode(_log);
        }

        CheckpointOptions checkpoint = o.Checkpoint;

        if (optimizers is not null && optimizerFactory is not null)
        {
            throw new ArgumentException("Give either optimizers or optimizerFactory, not both.", nameof(optimizerFactory));
        }

        // Device, precision and seed.
        Device dev = TrainerDevice.Resolve(o.Device);
        Precision prec = o.Precision ?? (dev.type == DeviceType.CUDA ? Precision.AmpBf16 : Precision.Fp32);
        prec.CheckSupported(dev);
        SeedAll(o.Seed);
        _dataParallel = DataParallel.Create(dev, o.Distributed, loggerFactory); // Distributed

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
        string? runName = o.RunName ?? Environment.GetEnvironmentVariable("COMPOSER_RUN_NAME");
        if (runName is null)
        {
            if (checkpoint.Autoresume)
            {
                throw new InvalidOperationException("Autoresume needs an explicit run name (TrainerOptions.RunName, run_name) so that the run's checkpoints can be found again.");
            }

            runName = $"run-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid().ToString("N")[..6]}";
        }

        // State, loggers and callbacks.
        State = new State(model, dev, prec, runName)
        {
            Seed = o.Seed,
            DeterministicMode = o.DeterministicMode,
            Optimizers = opts,
            Algorithms = (algorithms ?? Array.Empty<IAlgorithm>()).ToList(),
            LoggerFactory = loggerFactory,
            DeviceTrainMicrobatchSize = o.DeviceTrainMicrobatchSize,
            CheckpointMetadata = checkpoint.Metadata,
            ProcessGroup = _dataParallel.ProcessGroup, // Distributed: checkpoints gather RNG states and write on rank 0 through it
        };

        List<ILoggerDestination> destinations = (loggers ?? Array.Empty<ILoggerDestination>()).ToList();
        RunFolderLayout? layout = null;
        if (o.RunFolder is not null)
        {
            RunFolder = Path.GetFullPath(PathTemplate.Expand(o.RunFolder, State));
            Directory.CreateDirectory(RunFolder);
            layout = new RunFolderLayout(RunFolder);
            if (_dataParallel.IsRankZero)
            {
                // Distributed: only rank 0 opens the run folder's log files (other ranks would hold them open unused).
                destinations.Add(new JsonLinesLogger(layout.Metrics));
                destinations.Add(new TensorBoardLogger(layout.TensorBoard));
            }
        }

        if (o.ProgressBar && !destinations.OfType<ProgressBarLogger>().Any())
        {
            destinations.Add(new ProgressBarLogger());
        }

        if (o.LogToConsole && !destinations.OfType<ConsoleLogger>().Any())
        {
            destinations.Add(new ConsoleLogger(loggerFactory.CreateLogger<ConsoleLogger>(), o.ConsoleLogInterval ?? Time.FromBatch(1)));
        }

        if (destinations.OfType<ProgressBarLogger>().Any(b => b.Enabled) && destinations.OfType<ConsoleLogger>().Any())
        {
            _log.LogWarning("Both a progress bar and console logging are on; their lines will interleave. Consider turning one off (as Composer advises).");
        }

        destinations = _dataParallel.OnRankZero(destinations); // Distributed: loggers and the progress bar on rank 0 only
        Logger = new Logger(State, destinations);
        List<ICallback> allCallbacks = destinations.Cast<ICallback>().Concat(callbacks ?? Array.Empty<ICallback>()).ToList();
        string? saveFolder = layout?.CheckpointFolder(checkpoint.SaveFolder) ?? checkpoint.SaveFolder;
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
            Initialize(o, trainDataloader, evalDataloader, evaluators, schedulers, gradScaler, saveFolder, prec);
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
        TrainerOptions o,
        IDataLoader? trainDataloader,
        IDataLoader? evalDataloader,
        IEnumerable<Evaluator>? evaluators,
        IEnumerable<IScheduler>? schedulers,
        GradScaler? gradScaler,
        string? saveFolder,
        Precision prec)
    {
        Engine.RunEvent(Event.Init);
        _dataParallel.SynchronizeModel(State.Model); // Distributed: same tensors everywhere, then rank 0's values
        LogRunHyperparameters();

        // Metrics, evaluators, dataloader, max duration, schedulers, scaler.
        _trainMetrics = o.ComputeTrainingMetrics ? _model.GetMetrics(isTrain: true) : Array.Empty<IMetric>();
        Time defaultInterval = o.EvalInterval ?? Time.FromEpoch(1);
        if (defaultInterval.Value <= 0 && (evalDataloader is not null || evaluators?.Any() == true))
        {
            _log.LogInformation("Evaluation during training is off (eval interval {Interval}); evaluators without their own interval run only when Eval is called.", defaultInterval);
        }
        if (evalDataloader is not null)
        {
            AddEvaluator(new Evaluator("eval", evalDataloader, subsetNumBatches: o.EvalSubsetNumBatches), defaultInterval, o.EvalSubsetNumBatches);
        }

        foreach (Evaluator evaluator in evaluators ?? Array.Empty<Evaluator>())
        {
            AddEvaluator(evaluator, defaultInterval, o.EvalSubsetNumBatches);
        }

        if (trainDataloader is not null)
        {
            trainDataloader = _dataParallel.ShardForTraining(trainDataloader); // Distributed: this rank's shard
            State.TrainDataloader = trainDataloader;
            State.Dataloader = trainDataloader;
            State.DataloaderLabel = TrainLabel;
        }

        State.MaxDuration = o.MaxDuration;

        State.Schedulers = (schedulers ?? Array.Empty<IScheduler>()).ToList();
        State.Scaler = prec == Precision.AmpFp16 ? gradScaler ?? new GradScaler() : new GradScaler(enabled: false);

        // Loading.
        Engine.RunEvent(Event.BeforeLoad);
        CheckpointOptions checkpoint = o.Checkpoint;
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
        SeedAll(State.Seed + _dataParallel.Rank); // Distributed: each rank its own stream (Composer: rank_zero_seed + rank)
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
    public Logger Logger { get; }

    /// <summary>The loss scaler (enabled only for amp_fp16); the same object as <see cref="State.Scaler"/>.</summary>
    public GradScaler GradScaler => State.Scaler;

    /// <summary>The run folder (absolute), or null when none was given.</summary>
    public string? RunFolder { get; }

    /// <summary>
    /// The data-parallel context (world size 1 unless started by a launcher): sharding, gradient and metric
    /// reduction, the agreed stop. Its <see cref="DataParallel.ProcessGroup"/> is <see cref="State.ProcessGroup"/>.
    /// </summary>
    public DataParallel DataParallel => _dataParallel;

    /// <summary>The model, as given (<see cref="State.Model"/> is the same object).</summary>
    public ComposerModel Model => _model;

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
            _dataParallel.Dispose();
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
            ["accumulate_train_batch_on_tokens"] = _accumulateOnTokens,
            ["world_size"] = _dataParallel.WorldSize,
        };
        foreach (IAlgorithm algorithm in State.Algorithms)
        {
            hp[$"enabled_algorithms/{algorithm.Name}"] = true;
        }

        Logger.LogHyperparameters(hp);
    }
}
