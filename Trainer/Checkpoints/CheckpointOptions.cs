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

    /// <summary>A checkpoint (or latest pointer) to load at construction, between BeforeLoad and AfterLoad; placeholders allowed.</summary>
    public string? LoadPath { get; init; }

    /// <summary>Load only the model weights from <see cref="LoadPath"/> (a fine-tuning start), not the training state.</summary>
    public bool LoadWeightsOnly { get; init; }

    /// <summary>Require the checkpoint's weights to match the model's names exactly (otherwise missing/unexpected keys are logged and skipped).</summary>
    public bool LoadStrictModelWeights { get; init; } = true;

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
