using System.Globalization;
using System.Text.RegularExpressions;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using ComposerSharp.Training.Checkpoints;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Training.Callbacks;

/// <summary>
/// Saves checkpoints at an interval and at the end of training (Composer's <c>CheckpointSaver</c>,
/// composer/callbacks/checkpoint_saver.py): at BatchCheckpoint and EpochCheckpoint, when the
/// <see cref="IntervalSchedule"/> says so and nothing was saved at this batch yet. After each save it updates the
/// "latest" pointer and deletes the oldest checkpoints of the folder beyond <see cref="NumCheckpointsToKeep"/>
/// (counting those of earlier, resumed or crashed processes of the run too). An ordinary
/// callback: it saves the <see cref="State"/> it is given through <see cref="Checkpoint.Save"/>, so it works in
/// any loop that raises the events with a complete state.
/// </summary>
public sealed class CheckpointSaver : Callback, IStatefulCallback
{
    private readonly IntervalSchedule _schedule;
    private readonly List<string> _saved = new();
    private readonly List<string> _allSaved = new();
    private long? _lastCheckpointBatch;
    private readonly Func<double, double, bool>? _better;
    private double? _bestValue;

    /// <summary>Creates a saver.</summary>
    /// <param name="folder">Folder (placeholders allowed, e.g. <c>{run_name}/checkpoints</c>).</param>
    /// <param name="filename">File name pattern, e.g. <c>ep{epoch}-ba{batch}-rank{rank}.ckpt</c>.</param>
    /// <param name="latestFilename">Name of the pointer to the newest checkpoint, or null for none.</param>
    /// <param name="saveInterval">How often to save; 1 epoch by default.</param>
    /// <param name="overwrite">Replace an existing file of the same name instead of failing.</param>
    /// <param name="numCheckpointsToKeep">Newest checkpoints of this run's name pattern to keep in the folder, across resumes (−1 for all; at least 1 otherwise).</param>
    /// <param name="weightsOnly">Save only the model weights.</param>
    /// <param name="saveBest">Also keep the best checkpoint by a monitored evaluation metric, or null.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="numCheckpointsToKeep"/> is 0 or below −1.</exception>
    /// <exception cref="ArgumentException"><paramref name="saveBest"/> has an unknown comparison or an empty monitor.</exception>
    public CheckpointSaver(
        string folder = "{run_name}/checkpoints",
        string filename = "ep{epoch}-ba{batch}-rank{rank}.ckpt",
        string? latestFilename = "latest-rank{rank}.ckpt",
        Time? saveInterval = null,
        bool overwrite = false,
        int numCheckpointsToKeep = -1,
        bool weightsOnly = false,
        SaveBestOptions? saveBest = null)
    {
        if (saveBest is not null)
        {
            ArgumentException.ThrowIfNullOrWhiteSpace(saveBest.Monitor, nameof(saveBest));
            _better = MetricComparison.For(saveBest.Monitor, saveBest.Comp);
        }

        SaveBest = saveBest;
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        ArgumentException.ThrowIfNullOrWhiteSpace(filename);
        if (numCheckpointsToKeep == 0 || numCheckpointsToKeep < -1)
        {
            throw new ArgumentOutOfRangeException(nameof(numCheckpointsToKeep), numCheckpointsToKeep, "Keep −1 (all) or at least 1 checkpoint; 0 would delete each checkpoint as soon as it is written.");
        }

        Folder = folder;
        Filename = filename;
        LatestFilename = latestFilename;
        SaveInterval = saveInterval ?? Time.FromEpoch(1);
        Overwrite = overwrite;
        NumCheckpointsToKeep = numCheckpointsToKeep;
        WeightsOnly = weightsOnly;
        _schedule = new IntervalSchedule(SaveInterval);
    }

    /// <summary>Folder pattern.</summary>
    public string Folder { get; }

    /// <summary>File name pattern.</summary>
    public string Filename { get; }

    /// <summary>Latest-pointer name pattern, or null.</summary>
    public string? LatestFilename { get; }

    /// <summary>How often checkpoints are saved.</summary>
    public Time SaveInterval { get; }

    /// <summary>Whether existing files may be replaced.</summary>
    public bool Overwrite { get; }

    /// <summary>Newest checkpoints to keep, or −1 for all.</summary>
    public int NumCheckpointsToKeep { get; }

    /// <summary>Whether only weights are saved.</summary>
    public bool WeightsOnly { get; }

    /// <summary>The best-checkpoint rule, or null when no best checkpoint is kept.</summary>
    public SaveBestOptions? SaveBest { get; }

    /// <summary>The monitored metric's best value so far (restored on resume), or null.</summary>
    public double? BestValue => _bestValue;

    /// <summary>
    /// After a round of evaluation: when the monitored metric improved on the best so far, writes the best
    /// checkpoint (same content as a regular one) over the previous best. An evaluation cut short by a stop request
    /// computes no metrics and so changes nothing.
    /// </summary>
    public override void EvalAfterAll(State state, Logger logger)
    {
        if (SaveBest is not { } best || !state.Metrics.TryGetValue($"metrics/{best.Label}/{best.Monitor}", out double value) || double.IsNaN(value))
        {
            return;
        }

        if (_bestValue is { } current && !_better!(value, current))
        {
            return;
        }

        _bestValue = value;
        string path = Path.GetFullPath(Path.Combine(PathTemplate.Expand(Folder, state), PathTemplate.Expand(best.Filename, state)));
        Checkpoint.Save(state, path, WeightsOnly);
        if (state.ProcessGroup.Rank == 0)
        {
            state.LoggerFactory.CreateLogger<CheckpointSaver>().LogInformation(
                "New best metrics/{Label}/{Monitor} = {Value} at batch {Batch}: saved {Checkpoint}.", best.Label, best.Monitor, value, state.Timestamp.Batch, path);
        }
    }

    /// <summary>The checkpoints this saver wrote in this process that still exist, oldest first (absolute paths).</summary>
    public IReadOnlyList<string> SavedCheckpoints => _saved;

    /// <summary>Every checkpoint this run wrote, including those of earlier runs restored from a checkpoint, oldest first.</summary>
    public IReadOnlyList<string> AllSavedCheckpoints => _allSaved;

    /// <inheritdoc/>
    public string StateKey => "composersharp.checkpoint_saver";

    /// <inheritdoc/>
    public override void Init(State state, Logger logger) => Directory.CreateDirectory(PathTemplate.Expand(Folder, state));

    /// <summary>
    /// Refuses to start when the folder already holds checkpoints this run would overwrite (files matching
    /// <see cref="Filename"/> from a batch past the current timestamp), unless <see cref="Overwrite"/> is set; this
    /// is Composer's check at the start of fit, so a long run fails at once rather than at its first save.
    /// Checkpoints at or before the timestamp (the ones a resumed run continues from) are not conflicts.
    /// </summary>
    /// <remarks>
    /// It also removes temporary files left by saves that a crash interrupted (<c>.NAME.ckpt.GUID.tmp</c>: a save
    /// writes one and renames it over NAME when complete), logging each. Do not start two runs on one checkpoint
    /// folder at once (the CLI's run-folder lock prevents it): one would remove the other's save in progress. With
    /// several ranks (<see cref="State.ProcessGroup"/>) only rank 0 removes them, and only rank 0 writes the
    /// checkpoint, the latest pointer and prunes old checkpoints.
    /// </remarks>
    /// <exception cref="CheckpointException">A conflicting checkpoint exists; the message names it and the options that allow overwriting.</exception>
    public override void FitStart(State state, Logger logger)
    {
        string folder = PathTemplate.Expand(Folder, state);
        if (!Directory.Exists(folder))
        {
            return;
        }

        if (state.ProcessGroup.Rank == 0)
        {
            // Distributed: rank 0 alone removes them (it alone writes checkpoints); the conflict check below runs
            // on every rank, so that all ranks fail together instead of some waiting in a collective.
            RemoveOrphanedTemporaryFiles(folder, state);
        }

        if (Overwrite)
        {
            return;
        }

        Regex pattern = FilenamePattern(state);
        foreach (string file in Directory.EnumerateFiles(folder))
        {
            Match m = pattern.Match(Path.GetFileName(file));
            if (!m.Success)
            {
                continue;
            }

            bool before = m.Groups["batch"].Success
                ? long.Parse(m.Groups["batch"].Value, CultureInfo.InvariantCulture) <= state.Timestamp.Batch
                : m.Groups["epoch"].Success && long.Parse(m.Groups["epoch"].Value, CultureInfo.InvariantCulture) <= state.Timestamp.Epoch;
            if (before)
            {
                continue;
            }

            // A resumed run (autoresume or load_path) whose folder holds a later checkpoint is typically behind its own
            // newest one (written just before a crash, before the 'latest' pointer was updated) or a copy.
            throw new CheckpointException(file, state.Timestamp.Batch > 0
                ? $"This run resumes at batch {state.Timestamp.Batch}, but the checkpoint folder '{folder}' also holds '{Path.GetFileName(file)}', " +
                  "from later in training, which this run would overwrite. To continue from that later checkpoint, load it (CLI: --load-path " +
                  $"'{file}'; API: CheckpointOptions.LoadPath); to train on from batch {state.Timestamp.Batch} and replace it, set save_overwrite " +
                  "(CLI: --save-overwrite true; API: CheckpointOptions.SaveOverwrite); or move it away."
                : $"The checkpoint folder '{folder}' already holds '{Path.GetFileName(file)}', which this run would overwrite. " +
                  "Set save_overwrite (CLI: --save-overwrite true; API: CheckpointOptions.SaveOverwrite), resume with autoresume, or use another run folder or run name.");
        }
    }

    private static void RemoveOrphanedTemporaryFiles(string folder, State state)
    {
        foreach (string temp in Directory.EnumerateFiles(folder, ".*.tmp"))
        {
            if (!Regex.IsMatch(Path.GetFileName(temp), @"^\..+\.[0-9a-f]{32}\.tmp$", RegexOptions.CultureInvariant))
            {
                continue;
            }

            long bytes = new FileInfo(temp).Length;
            File.Delete(temp);
            state.LoggerFactory.CreateLogger<CheckpointSaver>().LogWarning(
                "Removed {Temp} ({Bytes} bytes), left by a checkpoint save that did not finish (the process ended during it).", temp, bytes);
        }
    }

    /// <summary>
    /// Deletes the oldest checkpoints of this run's name pattern in <paramref name="folder"/> beyond
    /// <see cref="NumCheckpointsToKeep"/>, ordered by the batch (or epoch) in their names, so that the limit holds
    /// for the folder across resumes and crashes, not only for the saves of this process.
    /// </summary>
    private void Prune(string folder, State state)
    {
        Regex pattern = FilenamePattern(state);
        var checkpoints = new List<(long Order, string Path)>();
        foreach (string file in Directory.EnumerateFiles(folder))
        {
            Match m = pattern.Match(Path.GetFileName(file));
            if (m.Success && (m.Groups["batch"].Success || m.Groups["epoch"].Success))
            {
                long order = m.Groups["batch"].Success ? long.Parse(m.Groups["batch"].Value, CultureInfo.InvariantCulture) : long.Parse(m.Groups["epoch"].Value, CultureInfo.InvariantCulture);
                checkpoints.Add((order, Path.GetFullPath(file)));
            }
        }

        foreach ((_, string oldest) in checkpoints.OrderBy(c => c.Order).ThenBy(c => c.Path, StringComparer.Ordinal).SkipLast(NumCheckpointsToKeep))
        {
            File.Delete(oldest);
            _saved.Remove(oldest);
        }
    }

    private Regex FilenamePattern(State state)
    {
        string escaped = Regex.Escape(Filename);
        string body = Regex.Replace(escaped, @"\\\{(?<name>[a-z_]+)}", m => m.Groups["name"].Value switch
        {
            "batch" => "(?<batch>[0-9]+)",
            "epoch" => "(?<epoch>[0-9]+)",
            "run_name" => Regex.Escape(state.RunName),
            _ => "[0-9]+",
        });
        return new Regex("^" + body + "$", RegexOptions.CultureInvariant);
    }

    /// <inheritdoc/>
    public override void BatchCheckpoint(State state, Logger logger) => SaveIfDue(state, Event.BatchCheckpoint);

    /// <inheritdoc/>
    public override void EpochCheckpoint(State state, Logger logger) => SaveIfDue(state, Event.EpochCheckpoint);

    /// <inheritdoc/>
    public IReadOnlyDictionary<string, object?> StateDict() => new Dictionary<string, object?>
    {
        ["all_saved_checkpoints"] = _allSaved.ToList(),
        ["best_value"] = _bestValue,
    };

    /// <inheritdoc/>
    public void LoadStateDict(IReadOnlyDictionary<string, object?> state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (!state.TryGetValue("all_saved_checkpoints", out object? value) || value is not IEnumerable<object?> list)
        {
            throw new ArgumentException("The CheckpointSaver state has no 'all_saved_checkpoints' list.", nameof(state));
        }

        _allSaved.Clear();
        _allSaved.AddRange(list.OfType<string>());
        _bestValue = state.TryGetValue("best_value", out object? best) && best is not null
            ? Convert.ToDouble(best, CultureInfo.InvariantCulture)
            : null;
    }

    private void SaveIfDue(State state, Event e)
    {
        if (_lastCheckpointBatch == state.Timestamp.Batch || !_schedule.IsDue(state, e))
        {
            return;
        }

        Save(state);
    }

    private void Save(State state)
    {
        _lastCheckpointBatch = state.Timestamp.Batch;
        string folder = PathTemplate.Expand(Folder, state);
        string path = Path.GetFullPath(Path.Combine(folder, PathTemplate.Expand(Filename, state)));
        if (!Overwrite && File.Exists(path))
        {
            throw new CheckpointException(path, $"Checkpoint '{path}' already exists; set save_overwrite (CLI: --save-overwrite true; API: CheckpointOptions.SaveOverwrite or CheckpointSaver overwrite) to replace it, or use another folder.");
        }

        // Recorded before writing so that the checkpoint's own saver state lists it (as in Composer).
        bool added = !_allSaved.Contains(path);
        if (added)
        {
            _allSaved.Add(path);
        }

        try
        {
            Checkpoint.Save(state, path, WeightsOnly);
        }
        catch
        {
            if (added)
            {
                _allSaved.Remove(path);
            }

            throw;
        }

        _saved.Remove(path);
        _saved.Add(path);
        if (state.ProcessGroup.Rank != 0)
        {
            return; // Distributed: rank 0 writes the file, its pointer and the rotation
        }

        if (LatestFilename is not null)
        {
            CheckpointFile.WriteLatestPointer(Path.Combine(folder, PathTemplate.Expand(LatestFilename, state)), path);
        }

        state.LoggerFactory.CreateLogger<CheckpointSaver>().LogInformation("Saved checkpoint {Checkpoint}.", path);
        if (NumCheckpointsToKeep > 0)
        {
            Prune(folder, state);
        }
    }
}
