using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// What to do when a checkpoint records a required-on-load algorithm (<see cref="IAlgorithm.RequiredOnLoad"/>)
/// that the new Trainer was not given.
/// </summary>
public enum MissingAlgorithmPolicy
{
    /// <summary>
    /// Re-create it with <see cref="CheckpointOptions.AlgorithmResolver"/>, apply it at Init before the weights load,
    /// add it to the run and log a warning (Composer's behaviour); refuse when the resolver cannot re-create it.
    /// </summary>
    AddWithWarning,

    /// <summary>Refuse to load, with a message naming the algorithm to pass in <c>algorithms</c>.</summary>
    Refuse,
}

/// <summary>
/// Checkpoint saving and loading options, named after the Trainer arguments of Composer
/// (<c>save_folder</c>, <c>save_filename</c>, <c>save_latest_filename</c>, <c>save_interval</c>,
/// <c>save_num_checkpoints_to_keep</c>, <c>load_path</c>, <c>load_weights_only</c>, <c>autoresume</c>, …).
/// </summary>
/// <remarks>
/// Folder and file names are <see cref="PathTemplate"/>s: they may hold placeholders such as <c>{run_name}</c>,
/// <c>{epoch}</c> and <c>{batch}</c>.
/// Checkpoints are ComposerSharp files (a ZIP container of TorchSharp tensors and a JSON header), not PyTorch
/// pickles, hence the default <c>.ckpt</c> extension.
/// </remarks>
public sealed record CheckpointOptions
{
    /// <summary>Folder for checkpoints (placeholders allowed); null disables saving unless the Trainer has a run folder, whose <c>checkpoints</c> subfolder is then used.</summary>
    public string? SaveFolder { get; init; }

    /// <summary>File name pattern of each checkpoint inside <see cref="SaveFolder"/>.</summary>
    public string SaveFilename { get; init; } = "ep{epoch}-ba{batch}-rank{rank}.ckpt";

    /// <summary>Name of the pointer file to the newest checkpoint (Composer's "latest" symlink, here a small text file that <see cref="LoadPath"/> accepts), or null for none.</summary>
    public string? SaveLatestFilename { get; init; } = "latest-rank{rank}.ckpt";

    /// <summary>How often to save (<c>ep</c>, <c>ba</c>, <c>sp</c>, <c>tok</c>, <c>dur</c>); a checkpoint is also saved at the end of training.</summary>
    public Time SaveInterval { get; init; } = Time.FromEpoch(1);

    /// <summary>Replace an existing file of the same name (otherwise saving over one is an error).</summary>
    public bool SaveOverwrite { get; init; }

    /// <summary>Save only the model weights (and algorithm descriptions and metadata), not the training state.</summary>
    public bool SaveWeightsOnly { get; init; }

    /// <summary>Keep only the newest this many checkpoints written by this run (−1 keeps all; 0 is not allowed).</summary>
    public int SaveNumCheckpointsToKeep { get; init; } = -1;

    /// <summary>
    /// Keep the best checkpoint by a monitored evaluation metric beside the latest (as PyTorch Lightning's
    /// <c>ModelCheckpoint(monitor=…)</c> does), or null for none: see <see cref="SaveBestOptions"/>.
    /// </summary>
    public SaveBestOptions? SaveBest { get; init; }

    /// <summary>A checkpoint (or latest pointer) to load at construction, between BeforeLoad and AfterLoad; placeholders allowed.</summary>
    public string? LoadPath { get; init; }

    /// <summary>Load only the model weights from <see cref="LoadPath"/> (a fine-tuning start), not the training state.</summary>
    public bool LoadWeightsOnly { get; init; }

    /// <summary>Require the checkpoint's weights to match the model's names exactly (otherwise missing/unexpected keys are logged and skipped).</summary>
    public bool LoadStrictModelWeights { get; init; } = true;

    /// <summary>
    /// Glob patterns (<c>*</c> any run of characters, <c>?</c> one) over model state-dict keys, e.g. <c>classifier.*</c>,
    /// as Composer's <c>load_ignore_keys</c>: matching checkpoint tensors are not loaded, and matching model tensors may
    /// be absent from the checkpoint even when <see cref="LoadStrictModelWeights"/> is true (they keep their fresh
    /// initialisation). Not applied on autoresume.
    /// </summary>
    public IReadOnlyList<string>? LoadIgnoreKeys { get; init; }

    /// <summary>
    /// Extra string metadata written into every checkpoint's header (e.g. the model's description, so that a
    /// checkpoint can be used without the config that made it); keys must not clash with the built-in ones.
    /// </summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>Names of required-on-load algorithms not to re-create from the checkpoint.</summary>
    public IReadOnlyList<string>? LoadExcludeAlgorithms { get; init; }

    /// <summary>
    /// On construction, resume from <see cref="SaveLatestFilename"/> in <see cref="SaveFolder"/> if it exists
    /// (ignoring <see cref="LoadPath"/>); needs an explicit run name, a save folder and a latest file name.
    /// </summary>
    public bool Autoresume { get; init; }

    /// <summary>
    /// Re-creates an algorithm from the description a checkpoint recorded (name and hyperparameters), or returns null
    /// when it cannot. When null, the algorithms that ship with ComposerSharp (AlgorithmCatalog) are re-created.
    /// </summary>
    public Func<AlgorithmDescription, IAlgorithm?>? AlgorithmResolver { get; init; }

    /// <summary>What to do with a required-on-load algorithm the Trainer lacks.</summary>
    public MissingAlgorithmPolicy MissingAlgorithmPolicy { get; init; } = MissingAlgorithmPolicy.AddWithWarning;
}

/// <summary>
/// Which checkpoint counts as the best: the metric <c>metrics/&lt;Label&gt;/&lt;Monitor&gt;</c> after each round of
/// evaluation, compared with Composer's rule for stoppers (<see cref="Callbacks.MetricComparison"/>: <c>lt</c>/<c>gt</c>,
/// or by name — loss, error and perplexity are better lower). The best is written to <see cref="Filename"/> in the
/// checkpoint folder and replaced whenever an evaluation improves on it; it is never pruned.
/// </summary>
/// <param name="Monitor">The metric's name, e.g. <c>CrossEntropy</c> or <c>Accuracy</c>.</param>
/// <param name="Comp"><c>lt</c>, <c>gt</c> (or <c>less</c>, <c>greater</c>), or null for Composer's rule by name.</param>
/// <param name="Label">The evaluator's label; <c>eval</c> by default.</param>
/// <param name="Filename">The best checkpoint's file name pattern.</param>
public sealed record SaveBestOptions(string Monitor, string? Comp = null, string Label = "eval", string Filename = "best-rank{rank}.ckpt");
