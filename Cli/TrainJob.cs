using System.Diagnostics;
using System.Globalization;
using ComposerSharp.Algorithms;
using ComposerSharp.Cli.Configuration;
using ComposerSharp.Cli.Reporting;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Data;
using ComposerSharp.Events;
using ComposerSharp.Inference;
using ComposerSharp.Models;
using ComposerSharp.Models.HuggingFace;
using ComposerSharp.Training;
using ComposerSharp.Training.Checkpoints;
using ComposerSharp.Training.Optim;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Cli;

/// <summary>What a finished <c>train</c> or <c>eval</c> job reports.</summary>
/// <param name="RunFolder">Absolute path of the run folder.</param>
/// <param name="Wallclock">Wall-clock time of fit and evaluation.</param>
/// <param name="Timestamp">Training progress at the end (batches, samples, tokens).</param>
/// <param name="FinalMetrics">Last value of every logged metric.</param>
/// <param name="ModulesReplaced">Modules replaced by each module-surgery algorithm, by algorithm name.</param>
/// <param name="PlotPath">The loss plot, or null when nothing was plotted.</param>
public sealed record JobResult(
    string RunFolder,
    TimeSpan Wallclock,
    Timestamp Timestamp,
    IReadOnlyDictionary<string, double> FinalMetrics,
    IReadOnlyDictionary<string, int> ModulesReplaced,
    string? PlotPath)
{
    /// <summary>The rank of this process in a data-parallel job (0 alone); only rank 0 prints the summary.</summary>
    public int Rank { get; init; }

    /// <summary>Samples trained by this job (a resumed run counts only what it trained itself).</summary>
    public long SamplesThisRun { get; init; }

    /// <summary>Samples trained by this job per second of its wall-clock time (fit and evaluation together).</summary>
    public double SamplesPerSecond => Wallclock.TotalSeconds > 0 ? SamplesThisRun / Wallclock.TotalSeconds : 0;

    /// <summary>Whether training stopped early on a stop request (a signal: see <see cref="GracefulStop"/>).</summary>
    public bool StoppedByRequest { get; init; }

    /// <summary>The folder checkpoints were saved to, or null when the run saved none.</summary>
    public string? CheckpointFolder { get; init; }
}

/// <summary>
/// Builds a run from a configuration (model, dataloaders, optimizer, scheduler, algorithms, callbacks, loggers,
/// checkpoint options) and runs it with the <see cref="Trainer"/>. The keys follow Composer's and
/// llm-foundry's YAML; every unknown key, unknown name or bad value is a <see cref="ConfigException"/> that names it.
/// </summary>
public sealed class TrainJob
{
    /// <summary>The top-level keys that describe components (each a section or a list of named components).</summary>
    public static readonly IReadOnlyList<string> ComponentKeys = new[]
    {
        "model", "train_loader", "eval_loader", "optimizer", "scheduler", "algorithms", "callbacks", "loggers",
    };

    /// <summary>
    /// The accepted top-level keys: <see cref="ComponentKeys"/>, then the snake_case names of the bindable properties
    /// of <see cref="TrainerOptions"/> and <see cref="CheckpointOptions"/> (so a new option is a new key with no list
    /// to update), then <c>save_best</c> (a mapping), the data-parallel <c>dist_timeout</c> (seconds) and
    /// <c>dist_backend</c>, and <c>tokenizer</c> (<c>gpt2</c>, or a BERT folder or vocab.txt).
    /// </summary>
    public static readonly IReadOnlyList<string> TopLevelKeys = ComponentKeys
        .Concat(OptionsBinder.KeysOf<TrainerOptions>())
        .Concat(OptionsBinder.KeysOf<CheckpointOptions>())
        .Concat(new[] { "save_best", "dist_timeout", "dist_backend", "tokenizer" })
        .Append(ParallelismConfig.Key)
        .Distinct()
        .ToArray();

    private static readonly string[] LoaderKeys =
    {
        "dataset", "batch_size", "shuffle", "drop_last", "seed",
        "num_workers", "prefetch_factor", "shuffle_seed", "shuffle_algo", "shuffle_block_size", "num_canonical_nodes", // the loader's workers and elastic shuffle
    };

    private readonly ConfigSection _config;
    private readonly IServiceProvider _services;
    private readonly ComponentCatalog _catalog;
    private readonly ILoggerFactory _loggerFactory;

    /// <summary>Creates a job for <paramref name="config"/>; components are looked up in <paramref name="services"/>.</summary>
    /// <exception cref="ConfigException">An unknown top-level key.</exception>
    public TrainJob(ConfigSection config, IServiceProvider services)
    {
        _config = config ?? throw new ArgumentNullException(nameof(config));
        _services = services ?? throw new ArgumentNullException(nameof(services));
        _config.RequireKnownKeys(TopLevelKeys);
        _ = ParallelismConfig.Read(_config); // checked once, before any data is read or model built
        _catalog = new ComponentCatalog(services.GetServices<ComponentRegistration>());
        _loggerFactory = services.GetRequiredService<ILoggerFactory>();
    }

    /// <summary>Trains (<c>train</c>) and evaluates at the end when an eval loader is configured.</summary>
    /// <param name="cancellationToken">A graceful stop request (see <see cref="Trainer.Fit(Time?, CancellationToken)"/>).</param>
    /// <exception cref="ConfigException">The configuration cannot be used.</exception>
    public JobResult Train(CancellationToken cancellationToken = default) => Run(fit: true, cancellationToken);

    /// <summary>Evaluates the model loaded from <c>load_path</c> on <c>eval_loader</c> (<c>eval</c>).</summary>
    /// <exception cref="ConfigException">No <c>eval_loader</c> or no <c>load_path</c>, or the configuration cannot be used.</exception>
    public JobResult Evaluate()
    {
        if (_config.Get("eval_loader") is null)
        {
            throw new ConfigException("'eval_loader' is required for eval.");
        }

        if (_config.GetString("load_path") is null)
        {
            throw new ConfigException("'load_path' is required for eval: the checkpoint to evaluate.");
        }

        try
        {
            return Run(fit: false, CancellationToken.None);
        }
        catch
        {
            // A failed evaluation leaves no eval-<time> folder behind (it holds nothing of value yet).
            if (_lastEvalFolder is { } folder && Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }

            throw;
        }
    }

    private string? _lastEvalFolder;

    /// <summary><c>save_best: {monitor: CrossEntropy, comp: lt, label: eval, filename: …}</c>, or null when absent.</summary>
    /// <exception cref="ConfigException">Not a mapping, no monitor, an unknown key or comparison.</exception>
    private static SaveBestOptions? SaveBestOf(ConfigSection config)
    {
        object? value = config.Get("save_best");
        if (value is null)
        {
            return null;
        }

        if (value is not ConfigSection s)
        {
            throw new ConfigException("'save_best' must be a mapping such as {monitor: CrossEntropy, comp: lt} (comp and label are optional).");
        }

        s.RequireKnownKeys(new[] { "monitor", "comp", "label", "filename" }, "option");
        string monitor = s.GetString("monitor") ?? throw new ConfigException($"'{s.PathOf("monitor")}' is required: the evaluation metric to monitor, e.g. CrossEntropy or Accuracy.");
        string? comp = s.GetString("comp");
        if (comp is not null && comp.ToLowerInvariant() is not ("lt" or "gt" or "less" or "greater"))
        {
            throw new ConfigException($"'{s.PathOf("comp")}' is '{comp}'; expected lt, gt, less or greater.");
        }

        var defaults = new SaveBestOptions(monitor);
        return new SaveBestOptions(monitor, comp, s.GetString("label") ?? defaults.Label, s.GetString("filename") ?? defaults.Filename);
    }

    /// <summary>
    /// Before the Trainer touches the run folder: a run that neither resumes nor overwrites is refused when the
    /// checkpoint folder already holds checkpoints (configuration error, nothing written); with
    /// <c>save_overwrite</c> and without <c>autoresume</c> the run starts afresh: the folder's checkpoints,
    /// <c>metrics.jsonl</c>, <c>tensorboard/</c> and <c>loss.png</c> of the earlier run are removed.
    /// The files of an earlier run that left no checkpoint cannot be continued, so they are not appended to either:
    /// when that run trained no batch (it failed while starting) they are removed; when it trained some, the run is
    /// refused like one with checkpoints, and with <c>autoresume</c> (nothing to resume from: the run starts at batch 0)
    /// they are removed, as a resume drops what an earlier process logged after its checkpoint.
    /// </summary>
    /// <remarks>
    /// Distributed: every rank makes the refusal check (read-only, so all ranks of a job fail together instead of
    /// some waiting in a collective for the others); only <paramref name="rankZero"/> removes files.
    /// </remarks>
    /// <exception cref="ConfigException">Checkpoints, or the metrics of a run that trained, are present and neither option is set.</exception>
    private void PrepareRunFolder(RunFolderLayout layout, CheckpointOptions checkpoint, bool rankZero)
    {
        string runFolder = layout.Folder;
        string folder = Path.GetFullPath(layout.CheckpointFolder(checkpoint.SaveFolder));
        if (folder.Contains('{', StringComparison.Ordinal))
        {
            return; // a templated folder is checked by the saver at the start of fit
        }

        string[] allCheckpoints = Directory.Exists(folder) ? Directory.GetFiles(folder, "*.ckpt") : Array.Empty<string>();
        if (checkpoint.Autoresume && allCheckpoints.Length > 0)
        {
            return; // resuming continues these files
        }

        // The checkpoint this run loads (load_path, possibly through a latest pointer) is never removed: save_overwrite
        // would otherwise delete the file the run is about to start from.
        string? loading = LoadPathCheckpoint();
        string[] checkpoints = allCheckpoints.Where(f => !Path.GetFileName(f).StartsWith("latest", StringComparison.Ordinal)).ToArray();
        string[] earlierFiles = layout.EarlierRunFiles.Where(File.Exists).ToArray();
        string tensorboard = layout.TensorBoard;
        bool earlierRun = earlierFiles.Length > 0 || Directory.Exists(tensorboard);
        ILogger log = _loggerFactory.CreateLogger<TrainJob>();
        string removed;
        if (!checkpoint.SaveOverwrite && !checkpoint.Autoresume)
        {
            if (checkpoints.Length > 0)
            {
                throw new ConfigException(
                    $"The checkpoint folder '{folder}' already holds {checkpoints.Length} checkpoint(s) of an earlier run (e.g. '{Path.GetFileName(checkpoints[0])}'). " +
                    "Resume it with --autoresume true, start it afresh with --save-overwrite true (removes its checkpoints, metrics.jsonl, tensorboard/ and loss.png), or choose another --run-name.");
            }

            if (!earlierRun)
            {
                return;
            }

            string metrics = layout.Metrics;
            if (File.Exists(metrics) && File.ReadLines(metrics).Any(l => l.Contains("\"loss/train", StringComparison.Ordinal)))
            {
                throw new ConfigException(
                    $"The run folder '{runFolder}' holds the metrics of an earlier run that trained but saved no checkpoint ('{metrics}'); this run would append to them. " +
                    "Start it afresh with --save-overwrite true (removes its metrics.jsonl, tensorboard/ and loss.png), or choose another --run-name.");
            }

            removed = "metrics.jsonl and tensorboard/ of an earlier run that trained no batch (it failed while starting)";
        }
        else
        {
            removed = checkpoint.SaveOverwrite && !checkpoint.Autoresume
                ? $"save_overwrite: {checkpoints.Length} checkpoint(s), metrics.jsonl, tensorboard/ and loss.png of the earlier run"
                : "autoresume found no checkpoint to resume from, so the run starts at batch 0: metrics.jsonl, tensorboard/ and loss.png of the earlier process";
            if (!earlierRun && checkpoints.Length == 0)
            {
                return;
            }
        }

        if (!rankZero)
        {
            return; // Distributed: rank 0 starts the shared run folder afresh
        }

        foreach (string file in checkpoints.Where(f => Path.GetFullPath(f) != loading).Concat(earlierFiles))
        {
            File.Delete(file);
        }

        if (loading is not null && checkpoints.Any(f => Path.GetFullPath(f) == loading))
        {
            log.LogInformation("Run folder {Folder}: the load_path checkpoint {Checkpoint} is kept (this run starts from it).", runFolder, loading);
        }

        if (Directory.Exists(tensorboard))
        {
            Directory.Delete(tensorboard, recursive: true);
        }

        log.LogWarning("Run folder {Folder} starts afresh ({Removed} removed).", runFolder, removed);
    }

    /// <summary>The full path of the checkpoint <c>load_path</c> designates (through a latest pointer), or null when there is none.</summary>
    private string? LoadPathCheckpoint()
    {
        if (_config.GetString("load_path") is not { } load || !File.Exists(load))
        {
            return null;
        }

        try
        {
            return Path.GetFullPath(CheckpointFile.Resolve(load));
        }
        catch (CheckpointException)
        {
            return null; // the Trainer reports a broken pointer when it loads
        }
    }

    /// <summary>
    /// A <c>train</c> (<paramref name="fit"/>) or <c>eval</c> job: <see cref="Bind"/> the scalar settings, lock the run
    /// folder, <see cref="Build"/> the components and the Trainer, <see cref="Execute"/> and <see cref="Report"/>.
    /// </summary>
    private JobResult Run(bool fit, CancellationToken cancellationToken)
    {
        RunPlan plan = Bind(fit);

        // One run per folder: the lock comes before anything else touches the folder.
        using RunFolderLock? runLock = fit && plan.RankZero ? RunFolderLock.Acquire(plan.Layout.Folder, _loggerFactory.CreateLogger<TrainJob>()) : null;
        (Trainer built, MetricHistory history, Stopwatch stopwatch) = Build(plan);
        using Trainer trainer = built;
        Timestamp start = Execute(plan, trainer, history, cancellationToken);
        stopwatch.Stop();
        return Report(plan, trainer, history, stopwatch.Elapsed, start);
    }

    /// <summary>What <see cref="Bind"/> settles before anything is built.</summary>
    /// <param name="Fit">Whether the job trains (<c>train</c>) or only evaluates (<c>eval</c>).</param>
    /// <param name="Options">The bound and validated options.</param>
    /// <param name="RunName">The run's name (configured, or the model's name and the start time).</param>
    /// <param name="Layout">The run folder (for an evaluation, its own <c>eval-&lt;time&gt;</c> folder inside the run's).</param>
    /// <param name="RankZero">Whether this process is rank 0 of its job.</param>
    private sealed record RunPlan(bool Fit, TrainerOptions Options, string RunName, RunFolderLayout Layout, bool RankZero);

    /// <summary>
    /// Bind: the scalar settings first, so that a bad value is reported before any data is read or model built (the
    /// top-level keys bound to the options records, each value checked once by the library); then the run's name
    /// and folder.
    /// </summary>
    /// <exception cref="ConfigException">A value the library refused, or no <c>max_duration</c> for <c>train</c>.</exception>
    private RunPlan Bind(bool fit)
    {
        var checkpointDefaults = new CheckpointOptions { LoadWeightsOnly = !fit };
        CheckpointOptions boundCheckpoint = OptionsBinder.Bind(_config, checkpointDefaults, TopLevelKeys.ToArray()) with { SaveBest = SaveBestOf(_config) };
        TrainerOptions options = OptionsBinder.Bind<TrainerOptions>(_config, null, TopLevelKeys.ToArray()) with
        {
            Checkpoint = boundCheckpoint,
            Distributed = DistributedSettings(),
        };
        if (fit && options.MaxDuration is null)
        {
            throw new ConfigException("'max_duration' is required for train, e.g. 'max_duration: 1ep'.");
        }

        options = Validated(fit ? options : options with { MaxDuration = null }); // eval trains nothing
        string stamp = DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
        string runName = options.RunName ?? $"{_config.Section("model").GetString("name") ?? "model"}-{stamp}";
        string runFolder = Path.GetFullPath(options.RunFolder ?? Path.Combine("runs", runName));
        // Distributed: the ranks of one job share the run folder, which rank 0 locks and, for an evaluation, alone creates.
        bool rankZero = ComposerSharp.Distributed.DistributedEnvironment.FromProcess().Rank == 0;
        if (!fit)
        {
            // An evaluation never writes into the training run's files: it gets a folder of its own inside the run
            // folder. Only rank 0 writes there (the summary, the plots), and the other ranks' clocks may give another
            // stamp, so they get no run folder at all.
            runFolder = Path.Combine(runFolder, "eval-" + stamp);
            _lastEvalFolder = rankZero && !Directory.Exists(runFolder) ? runFolder : null;
        }

        return new RunPlan(fit, options, runName, new RunFolderLayout(runFolder), rankZero);
    }

    /// <summary>
    /// Build: deterministic mode and the seed, the tokenizer, the data, the model, the algorithms, callbacks, loggers,
    /// optimizer and scheduler; for training, the run folder prepared (<see cref="PrepareRunFolder"/>); then the
    /// Trainer, which loads a checkpoint when one is configured. The clock starts just before the Trainer is made.
    /// </summary>
    /// <returns>The Trainer, the metric history it logs to, and the running clock.</returns>
    /// <exception cref="ConfigException">A component cannot be built from the configuration.</exception>
    private (Trainer Trainer, MetricHistory History, Stopwatch Clock) Build(RunPlan plan)
    {
        bool fit = plan.Fit;
        TrainerOptions options = plan.Options;
        int seed = options.Seed;
        string runFolder = plan.Layout.Folder;
        var context = new ComponentContext(_services, runFolder, seed);

        if (options.DeterministicMode)
        {
            // Before data and model are built: MKL's reproducibility mode can only be switched on before its first
            // computation. The Trainer logs what was set.
            Reproducibility.ConfigureDeterministicMode();
        }

        torch.manual_seed(seed);
        ModelDescription? recorded = RecordedModel();
        context = context with { Labels = recorded?.Labels, Tokenizer = ResolveTokenizer() };
        DataSource? train = fit ? BuildData("train_loader", context, required: true) : null;
        ComponentContext modelContext = context with { Vocabulary = train?.Vocabulary, Labels = train?.Labels ?? recorded?.Labels };
        DataSource? eval = BuildData("eval_loader", modelContext, required: false);
        modelContext = modelContext with { Vocabulary = modelContext.Vocabulary ?? eval?.Vocabulary, Labels = modelContext.Labels ?? eval?.Labels };

        ComposerModel model = BuildModel(modelContext, recorded);
        if (model is TransformerModel built && modelContext.Vocabulary is { } dataVocabulary && dataVocabulary.Size > built.Config.VocabSize)
        {
            model.Dispose();
            string by = modelContext.Tokenizer is { } t && dataVocabulary.Equals(t.Vocabulary) ? $"tokenizer '{Tokenizers.NameOf(t)}'" : "the dataset";
            throw new ConfigException($"The data's token ids (from {by}) go up to {dataVocabulary.Size - 1}, but the model's vocab_size is {built.Config.VocabSize}; raise model.vocab_size or use the model's own tokenizer.");
        }

        ComposerSharp.Cli.Configuration.ParallelismConfig.Read(_config)?.ApplyTo(model); // Composer's parallelism.fsdp: activation checkpointing of the blocks
        IReadOnlyDictionary<string, string>? description = Describe(model, modelContext, recorded, eval?.Input ?? train?.Input);
        var algorithms = _config.GetNamedList("algorithms").Select(a => _catalog.Create<IAlgorithm>(ComponentKind.Algorithm, a.Name, a.Args, context)).ToList();
        var callbacks = _config.GetNamedList("callbacks").Select(c => _catalog.Create<ICallback>(ComponentKind.Callback, c.Name, c.Args, context)).ToList();
        var history = new MetricHistory();
        var loggers = _config.GetNamedList("loggers").Select(l => _catalog.Create<ILoggerDestination>(ComponentKind.Logger, l.Name, l.Args, context)).ToList();
        loggers.Add(history);

        ConfigSection optimizer = _config.Section("optimizer");
        var optimizerFactory = _catalog.Create<Func<IEnumerable<TorchSharp.Modules.Parameter>, optim.Optimizer>>(
            ComponentKind.Optimizer, optimizer.GetString("name") ?? "adamw", optimizer.Without("name"), context);
        ConfigSection scheduler = _config.Section("scheduler");
        string? schedulerName = scheduler.GetString("name");
        if (schedulerName is null)
        {
            scheduler.RequireKnownKeys(Array.Empty<string>(), "option (scheduler needs 'name')");
        }

        IScheduler[] schedulers = schedulerName is null
            ? Array.Empty<IScheduler>()
            : new[] { _catalog.Create<IScheduler>(ComponentKind.Scheduler, schedulerName, scheduler.Without("name"), context) };

        CheckpointOptions checkpoint = options.Checkpoint with { AlgorithmResolver = ResolveAlgorithm, Metadata = description };

        if (fit)
        {
            PrepareRunFolder(plan.Layout, checkpoint, plan.RankZero);
        }

        LoaderSettings? trainSettings = fit ? LoaderSettingsOf("train_loader", seed, shuffle: true) : null;
        LoaderSettings? evalSettings = eval is null ? null : LoaderSettingsOf("eval_loader", seed, shuffle: false);
        var stopwatch = Stopwatch.StartNew();
        var trainer = new Trainer(
            model,
            options with { RunName = plan.RunName, RunFolder = fit || plan.RankZero ? runFolder : null, Checkpoint = checkpoint },
            trainDataloader: train?.CreateLoader(trainSettings!),
            evalDataloader: eval?.CreateLoader(evalSettings!),
            algorithms: algorithms,
            callbacks: callbacks,
            loggers: loggers,
            optimizerFactory: optimizerFactory,
            schedulers: schedulers,
            loggerFactory: _loggerFactory);
        return (trainer, history, stopwatch);
    }

    /// <summary>
    /// Execute: for training, the earlier processes' metrics of a resumed run loaded into <paramref name="history"/>,
    /// the resolved configuration written, and <see cref="Trainer.Fit"/> (nothing when the run is already complete);
    /// for an evaluation, <see cref="Trainer.Eval"/>.
    /// </summary>
    /// <returns>The training progress before this job ran.</returns>
    private Timestamp Execute(RunPlan plan, Trainer trainer, MetricHistory history, CancellationToken cancellationToken)
    {
        bool fit = plan.Fit;
        Timestamp start = trainer.State.Timestamp;
        if (fit && start.Batch > 0)
        {
            // Resumed: the plot and summary cover the earlier processes of the run too.
            history.LoadEarlier(plan.Layout.Metrics, start.Batch);
        }

        bool alreadyComplete = fit && trainer.State.MaxDuration is { } max && trainer.State.Timestamp >= max;
        if (alreadyComplete)
        {
            // Autoresume of a finished run (a scheduler re-launching a completed job): nothing to train, not an error.
            _loggerFactory.CreateLogger<TrainJob>().LogWarning(
                "Run '{Run}' is already complete ({Batches} batches, max_duration {Max}): nothing to train. Raise --max-duration to train further, or choose another --run-name.",
                plan.RunName, trainer.State.Timestamp.Batch, trainer.State.MaxDuration);
        }
        else if (fit)
        {
            // The resolved configuration (file, --set and options applied), so the run folder says how it was made.
            if (trainer.DataParallel.IsRankZero)
            {
                File.WriteAllText(plan.Layout.Config, _config.ToYaml());
            }

            trainer.Fit(cancellationToken: cancellationToken);
        }
        else
        {
            trainer.Eval();
        }

        return start;
    }

    /// <summary>
    /// Report: the loss and confusion plots, an evaluation's empty checkpoint folder removed, the job's result; then
    /// the Trainer is closed.
    /// </summary>
    private static JobResult Report(RunPlan plan, Trainer trainer, MetricHistory history, TimeSpan wallclock, Timestamp start)
    {
        bool fit = plan.Fit;
        RunFolderLayout layout = plan.Layout;
        string plotPath = layout.LossPlot;
        bool plotted = fit && LossPlot.Save(history, plotPath);
        ConfusionPlot.Save(history.Latest(), layout.ConfusionPlot);
        IReadOnlyDictionary<string, double> latest = history.Latest();
        string checkpointFolder = Path.GetFullPath(layout.CheckpointFolder(plan.Options.Checkpoint.SaveFolder));
        if (!fit && trainer.DataParallel.IsRankZero && Directory.Exists(checkpointFolder) && !Directory.EnumerateFileSystemEntries(checkpointFolder).Any())
        {
            Directory.Delete(checkpointFolder); // an evaluation saves no checkpoint: no empty folder either (rank 0 owns the folder)
        }

        // An evaluation reports the batches and samples it evaluated over all ranks, not the training counters of the checkpoint.
        Timestamp shown = fit ? trainer.State.Timestamp : GlobalEvaluation(trainer);
        var result = new JobResult(layout.Folder, wallclock, shown, latest, ModulesReplaced(latest), plotted ? plotPath : null)
        {
            SamplesThisRun = fit ? trainer.State.Timestamp.Sample - start.Sample : shown.Sample,
            Rank = trainer.DataParallel.Rank,
            StoppedByRequest = trainer.StoppedByRequest,
            CheckpointFolder = Directory.Exists(checkpointFolder) && Directory.EnumerateFiles(checkpointFolder, "*.ckpt").Any() ? checkpointFolder : null,
        };
        trainer.Close();
        return result;
    }

    /// <summary>
    /// The counters of the last evaluation over all ranks (a collective: every rank calls it): each rank evaluated its
    /// own shard (<see cref="State.EvalTimestamp"/> counts that shard), so samples and tokens are summed and the
    /// batches are those of the rank with the most, as the ranks evaluate their batches side by side.
    /// </summary>
    private static Timestamp GlobalEvaluation(Trainer trainer)
    {
        Timestamp local = trainer.State.EvalTimestamp;
        (long samples, long tokens) = trainer.DataParallel.GlobalCounts(local.Sample, local.Token);
        return local with { Batch = trainer.DataParallel.MaxOverRanks(local.Batch), Sample = samples, Token = tokens };
    }

    /// <summary>The <c>dist_timeout</c> (seconds) and <c>dist_backend</c> keys; the world size comes from the launcher. Ranges are checked by <see cref="TrainerOptions.Validate"/>.</summary>
    private ComposerSharp.Distributed.DistributedOptions DistributedSettings()
    {
        var defaults = new ComposerSharp.Distributed.DistributedOptions();
        double? timeout = _config.GetDouble("dist_timeout");
        if (timeout is { } t && !double.IsFinite(t))
        {
            throw new ConfigException($"'dist_timeout' is {t.ToString(CultureInfo.InvariantCulture)}; expected a positive number of seconds (default {defaults.Timeout.TotalSeconds.ToString(CultureInfo.InvariantCulture)}).");
        }

        return defaults with { Timeout = timeout is { } s ? TimeSpan.FromSeconds(s) : defaults.Timeout, Backend = _config.GetString("dist_backend") ?? defaults.Backend };
    }

    /// <summary>
    /// <paramref name="options"/> checked by the library (<see cref="TrainerOptions.Validate"/>); a refused value is
    /// reported as the configuration key it came from, with the library's message.
    /// </summary>
    /// <exception cref="ConfigException">A value the library refused.</exception>
    private TrainerOptions Validated(TrainerOptions options)
    {
        try
        {
            return options.Validate();
        }
        catch (ArgumentException ex)
        {
            string key = ex.ParamName switch
            {
                nameof(ComposerSharp.Distributed.DistributedOptions.Timeout) => "dist_timeout",
                nameof(ComposerSharp.Distributed.DistributedOptions.Backend) => "dist_backend",
                { Length: > 0 } p => Algorithm.ToSnakeCase(p),
                _ => "configuration",
            };
            string value = _config.Get(key) is string v ? $" is '{v}'" : string.Empty;
            throw new ConfigException($"'{key}'{value}: {ConfigException.LibraryMessage(ex)}", ex);
        }
    }

    /// <summary>What module-surgery algorithms reported through the logger: <c>&lt;name&gt;/modules_replaced</c> metrics, by algorithm name.</summary>
    private static Dictionary<string, int> ModulesReplaced(IReadOnlyDictionary<string, double> metrics) =>
        metrics.Where(m => m.Key.EndsWith(ModuleSurgery.ModulesReplacedMetricSuffix, StringComparison.Ordinal))
            .ToDictionary(m => m.Key[..^ModuleSurgery.ModulesReplacedMetricSuffix.Length], m => (int)m.Value);

    private IAlgorithm? ResolveAlgorithm(AlgorithmDescription description)
    {
        if (!_catalog.Names(ComponentKind.Algorithm).Contains(description.Name))
        {
            return null;
        }

        var args = new ConfigSection($"checkpoint.algorithms.{description.Name}");
        foreach ((string key, string value) in description.Hyperparameters)
        {
            args.Set(key, value);
        }

        return _catalog.Create<IAlgorithm>(ComponentKind.Algorithm, description.Name, args, new ComponentContext(_services, string.Empty, 0));
    }

    private LoaderSettings LoaderSettingsOf(string key, int runSeed, bool shuffle)
    {
        ConfigSection s = _config.Section(key);
        long batchSize = s.GetLong("batch_size") ?? throw new ConfigException($"'{s.PathOf("batch_size")}' is required.");
        if (batchSize is < 1 or > int.MaxValue)
        {
            throw new ConfigException($"'{s.PathOf("batch_size")}' is {batchSize}; expected a whole number of at least 1.");
        }

        long? seed = s.GetLong("seed"), shuffleSeed = s.GetLong("shuffle_seed");
        if (seed is not null && shuffleSeed is not null && seed != shuffleSeed)
        {
            throw new ConfigException($"'{s.PathOf("seed")}' is {seed} and '{s.PathOf("shuffle_seed")}' is {shuffleSeed}; give one (shuffle_seed is Streaming's name for the loader's seed).");
        }

        string? algo = s.GetString("shuffle_algo");
        if (algo is not null && !StreamingShuffle.Algorithms.Contains(algo))
        {
            throw new ConfigException($"'{s.PathOf("shuffle_algo")}' is '{algo}'; expected one of: {string.Join(", ", StreamingShuffle.Algorithms)}.");
        }

        return new LoaderSettings((int)batchSize, s.GetBool("shuffle") ?? shuffle, s.GetBool("drop_last") ?? false, shuffleSeed ?? seed ?? runSeed)
        {
            NumWorkers = (int)LoaderLong(s, "num_workers", 0, 0),
            PrefetchFactor = (int)LoaderLong(s, "prefetch_factor", 2, 1),
            ShuffleAlgo = algo,
            ShuffleBlockSize = s.GetLong("shuffle_block_size") is null ? null : LoaderLong(s, "shuffle_block_size", 1, 1),
            NumCanonicalNodes = (int)LoaderLong(s, "num_canonical_nodes", 1, 1),
        };
    }

    /// <summary>A whole-number loader key of at least <paramref name="min"/>, or <paramref name="fallback"/> when absent.</summary>
    private static long LoaderLong(ConfigSection s, string key, long fallback, long min)
    {
        long value = s.GetLong(key) ?? fallback;
        if (value < min || value > int.MaxValue)
        {
            throw new ConfigException($"'{s.PathOf(key)}' is {value}; expected a whole number of at least {min}.");
        }

        return value;
    }

    private DataSource? BuildData(string key, ComponentContext context, bool required)
    {
        if (_config.Get(key) is null)
        {
            return required ? throw new ConfigException($"'{key}' is required: a mapping with 'dataset' and 'batch_size'.") : null;
        }

        ConfigSection loader = _config.Section(key);
        loader.RequireKnownKeys(LoaderKeys);
        ConfigSection dataset = loader.Section("dataset");
        string name = dataset.GetString("name") ?? throw new ConfigException(
            $"'{dataset.PathOf("name")}' is required; registered datasets: {string.Join(", ", _catalog.Names(ComponentKind.Dataset))}.");
        return _catalog.Create<DataSource>(ComponentKind.Dataset, name, dataset.Without("name"), context);
    }

    private ComposerModel BuildModel(ComponentContext context, ModelDescription? recorded)
    {
        ConfigSection model = _config.Section("model");
        string? name = model.GetString("name");
        if (name is null && recorded is not null)
        {
            // A self-describing checkpoint: its model, with any keys of the config's model section applied on top.
            TransformerConfig config = recorded.Config;
            if (model.Count > 0)
            {
                config = OptionsBinder.Bind(model, config);
            }

            return (recorded with { Config = config }).CreateModel();
        }

        if (name is null)
        {
            string hint = _config.GetString("load_path") is { } load
                ? $" Checkpoint '{load}' does not record its model (it was written before checkpoints described themselves), so the config must give it."
                : string.Empty;
            throw new ConfigException($"'model.name' is required; registered models: {string.Join(", ", _catalog.Names(ComponentKind.Model))}.{hint}");
        }

        return _catalog.Create<ComposerModel>(ComponentKind.Model, name, model.Without("name"), context);
    }

    /// <summary>
    /// The tokenizer that reads the run's text: the <c>tokenizer</c> key (<c>gpt2</c>, or a BERT folder or vocab.txt);
    /// else the vocab.txt of a <c>model.pretrained</c> folder (an imported BERT keeps its WordPiece ids; a BERT folder
    /// without one is refused rather than read with GPT-2's ids); else the
    /// tokenizer the load_path checkpoint records (fine-tuning and eval read text as the checkpoint's model did); else
    /// the registered <see cref="ITextTokenizer"/> (GPT-2).
    /// </summary>
    /// <exception cref="ConfigException">A tokenizer that cannot be read, or a pretrained BERT folder without vocab.txt and no <c>tokenizer</c> key; the message names the key, value and missing file.</exception>
    private ITextTokenizer? ResolveTokenizer()
    {
        ILogger logger = _loggerFactory.CreateLogger<TrainJob>();
        if (_config.GetString("tokenizer") is { } spec)
        {
            try
            {
                return Tokenizers.FromSpec(spec);
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException)
            {
                throw new ConfigException($"'tokenizer' is '{spec}': {ex.Message}", ex);
            }
        }

        if (_config.Section("model").GetString("pretrained") is { } folder && BertWordPieceTokenizer.IsBertFolder(folder))
        {
            try
            {
                var wordPiece = BertWordPieceTokenizer.Load(folder);
                logger.LogInformation("Tokenizer: WordPiece vocabulary of {Folder} ({Size} ids, lower case {LowerCase}).", folder, wordPiece.Vocabulary.Size, wordPiece.Options.LowerCase);
                return wordPiece;
            }
            catch (Exception ex) when (ex is IOException or InvalidDataException)
            {
                throw new ConfigException($"'model.pretrained' is '{folder}': {ex.Message}", ex);
            }
        }

        if (_config.Section("model").GetString("pretrained") is { } bertFolder && IsBertModelFolder(bertFolder))
        {
            // A BERT read with GPT-2's ids would train on the wrong embeddings without a word of warning.
            bool hasJson = File.Exists(Path.Combine(bertFolder, "tokenizer.json"));
            throw new ConfigException(
                $"'model.pretrained' is '{bertFolder}', a BERT model, but that folder has no {BertWordPieceTokenizer.VocabFileName}"
                + (hasJson ? " (its tokenizer.json is not read; the WordPiece vocabulary must be a vocab.txt)" : " or tokenizer.json")
                + $"; copy the model's {BertWordPieceTokenizer.VocabFileName} there, or set 'tokenizer' to a BERT folder or vocab.txt file. GPT-2's tokenizer is not used for a BERT.");
        }

        if (LoadPathDescription() is { Tokenizer: not null } recorded)
        {
            try
            {
                ITextTokenizer fromCheckpoint = Tokenizers.Create(recorded);
                logger.LogInformation("Tokenizer: {Name}, as recorded in the load_path checkpoint.", recorded.Tokenizer);
                return fromCheckpoint;
            }
            catch (InvalidDataException ex)
            {
                throw new ConfigException($"'load_path' is '{_config.GetString("load_path")}': {ex.Message}", ex);
            }
        }

        return _services.GetService<ITextTokenizer>();
    }

    /// <summary>True when <paramref name="folder"/>'s config.json describes a BERT (any architecture but GPT-2); false without a readable config.json (the model's loading reports that).</summary>
    private static bool IsBertModelFolder(string folder)
    {
        try
        {
            return HuggingFaceConfig.Read(folder).Architecture != HuggingFaceArchitecture.Gpt2LMHeadModel;
        }
        catch (Exception ex) when (ex is IOException or InvalidDataException or NotSupportedException)
        {
            return false;
        }
    }

    /// <summary>The model description of the checkpoint at load_path, or null when there is none or it records none.</summary>
    private ModelDescription? LoadPathDescription()
    {
        if (_config.GetString("load_path") is not { } load || !File.Exists(load))
        {
            return null; // the Trainer reports a missing checkpoint with its own message
        }

        string path = CheckpointFile.Resolve(load);
        return CheckpointFile.ReadMetadata(path).TryGetValue(ModelDescription.MetadataKey, out string? json)
            ? ModelDescription.FromJson(json, $"Checkpoint '{path}'")
            : null;
    }

    /// <summary>The model description of the checkpoint at load_path, when it records one and the config's model section names no model.</summary>
    private ModelDescription? RecordedModel() =>
        _config.Section("model").GetString("name") is null ? LoadPathDescription() : null;

    /// <summary>
    /// The checkpoint metadata that makes checkpoints self-describing: the model's description (kind, config, labels,
    /// tokenizer) and <paramref name="input"/>, how the data read text (the eval loader's settings when there is one, as
    /// inference is to reproduce evaluation, else the training data's); without data settings those the load_path
    /// checkpoint recorded are kept.
    /// </summary>
    private static IReadOnlyDictionary<string, string>? Describe(ComposerModel model, ComponentContext context, ModelDescription? recorded, TextInputDescription? input)
    {
        if (model is not TransformerModel transformer)
        {
            return null;
        }

        ITextTokenizer? tokenizer = context.Tokenizer;
        ComposerSharp.Data.TokenVocabulary? vocabulary = context.Vocabulary;
        var description = ModelDescription.Of(transformer, context.Labels, null, vocabulary?.RegularCount ?? recorded?.TokenizerRegularCount);
        if (vocabulary is not null && tokenizer is not null && vocabulary.Equals(tokenizer.Vocabulary))
        {
            description = description.WithTokenizer(tokenizer); // the data was read with it
        }
        else if (vocabulary is null && recorded is not null)
        {
            description = description with
            {
                Tokenizer = recorded.Tokenizer,
                TokenizerSha256 = recorded.TokenizerSha256,
                TokenizerFiles = recorded.TokenizerFiles,
            };
        }

        description = description with { Input = input ?? recorded?.Input };
        return new Dictionary<string, string> { [ModelDescription.MetadataKey] = description.ToJson() };
    }

}
