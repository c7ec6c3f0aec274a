namespace ComposerSharp.Training;

/// <summary>
/// The names of what a run folder holds, spelt once for the <see cref="Trainer"/> (which writes the metrics, the
/// TensorBoard events and, by default, the checkpoints there) and the CLI (which adds the resolved configuration and
/// the plots, and starts a folder afresh or refuses it). All paths are <see cref="Folder"/> joined with the name.
/// </summary>
/// <param name="Folder">The run folder.</param>
public sealed record RunFolderLayout(string Folder)
{
    /// <summary>The checkpoint folder's name inside the run folder (the default <c>save_folder</c>).</summary>
    public const string CheckpointsName = "checkpoints";

    /// <summary>The metrics log's file name: one JSON object per logged step (<c>JsonLinesLogger</c>).</summary>
    public const string MetricsName = "metrics.jsonl";

    /// <summary>The TensorBoard event folder's name.</summary>
    public const string TensorBoardName = "tensorboard";

    /// <summary>The resolved configuration's file name (written by the CLI's <c>train</c>).</summary>
    public const string ConfigName = "config.yaml";

    /// <summary>The loss plot's file name (written by the CLI).</summary>
    public const string LossPlotName = "loss.png";

    /// <summary>The confusion-matrix plot's file name (written by the CLI for a multiclass F1 metric).</summary>
    public const string ConfusionPlotName = "confusion.png";

    /// <summary>The default checkpoint folder.</summary>
    public string Checkpoints => Path.Combine(Folder, CheckpointsName);

    /// <summary>The metrics log.</summary>
    public string Metrics => Path.Combine(Folder, MetricsName);

    /// <summary>The TensorBoard event folder.</summary>
    public string TensorBoard => Path.Combine(Folder, TensorBoardName);

    /// <summary>The resolved configuration.</summary>
    public string Config => Path.Combine(Folder, ConfigName);

    /// <summary>The loss plot.</summary>
    public string LossPlot => Path.Combine(Folder, LossPlotName);

    /// <summary>The confusion-matrix plot.</summary>
    public string ConfusionPlot => Path.Combine(Folder, ConfusionPlotName);

    /// <summary>The files an earlier run leaves in the folder besides checkpoints and TensorBoard events (metrics, plots).</summary>
    public IReadOnlyList<string> EarlierRunFiles => new[] { Metrics, LossPlot, ConfusionPlot };

    /// <summary>The checkpoint folder of a run: <paramref name="saveFolder"/> when given, else <see cref="Checkpoints"/>.</summary>
    public string CheckpointFolder(string? saveFolder) => saveFolder ?? Checkpoints;
}
