using System.Text;
using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Appends metrics to a JSON-lines file, one object per <see cref="LogMetrics"/> call:
/// <c>{"step": 12, "time": "2025-01-01T00:00:00.000Z", "metrics": {"loss/train/total": 0.43}}</c>, and one
/// <c>{"hyperparameters": {…}}</c> object per hyperparameter call. NaN and infinities are written as the strings
/// <c>"NaN"</c>, <c>"Infinity"</c>, <c>"-Infinity"</c>. The file is opened for appending (a resumed run continues
/// it) and flushed at every BatchEnd, EvalEnd, EpochEnd and FitEnd, and on close. When a run resumes from a
/// checkpoint of batch k, the lines an earlier process logged after step k (work lost with it) are removed at
/// FitStart, so every step appears once.
/// </summary>
public sealed class JsonLinesLogger : LoggerDestination, IDisposable
{
    // The relaxed encoder writes '+', quotes and non-ASCII text as they are ("0.1.0+65abed2", not "0.1.0\u002B65abed2"):
    // the file is read by tools and people, never embedded in HTML.
    private static readonly JsonSerializerOptions Options = new()
    {
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };
    private StreamWriter _writer;
    private bool _closed;

    /// <summary>Opens (creating folders as needed) <paramref name="path"/> for appending.</summary>
    public JsonLinesLogger(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        Path = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(Path)!);
        _writer = new StreamWriter(new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
    }

    /// <summary>The file (absolute path).</summary>
    public string Path { get; }

    /// <inheritdoc/>
    public override void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        if (_closed)
        {
            return;
        }

        var line = new Dictionary<string, object?>
        {
            ["step"] = step,
            ["time"] = DateTimeOffset.UtcNow,
            ["metrics"] = metrics,
        };
        _writer.WriteLine(JsonSerializer.Serialize(line, Options));
    }

    /// <inheritdoc/>
    public override void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
        if (_closed)
        {
            return;
        }

        _writer.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object?> { ["hyperparameters"] = hyperparameters }, Options));
    }

    /// <summary>On a resumed run (timestamp past batch 0), drops the earlier processes' lines logged after the resumed batch.</summary>
    public override void FitStart(State state, Logger logger)
    {
        long resumedAt = state.Timestamp.Batch;
        if (_closed || resumedAt == 0)
        {
            return;
        }

        _writer.Dispose();
        string[] lines = File.ReadAllLines(Path);
        string[] kept = lines.Where(l => Parse(l) is not { } entry || LoggedBeforeResumeAt(entry.Step, entry.Names, resumedAt)).ToArray();
        if (kept.Length != lines.Length)
        {
            string temp = Path + ".rewrite.tmp";
            File.WriteAllLines(temp, kept, new UTF8Encoding(false));
            File.Move(temp, Path, overwrite: true);
        }

        _writer = new StreamWriter(new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false));
    }

    /// <summary>
    /// Whether metrics logged at <paramref name="step"/> belong to the part of a run that a checkpoint of batch
    /// <paramref name="resumedBatch"/> contains. The loss and time metrics of the batch with index k are logged at
    /// step k (before the timestamp advances), evaluations after batch k at step k: so everything before step k,
    /// and at step k the evaluation metrics (<c>metrics/…</c> except <c>metrics/train/…</c>), which ran before the
    /// checkpoint event; the rest of step k and everything later is redone by the resumed run.
    /// </summary>
    /// <param name="step">The logged step.</param>
    /// <param name="metricNames">The names logged in that call.</param>
    /// <param name="resumedBatch">The batch the run resumed at.</param>
    public static bool LoggedBeforeResumeAt(long step, IEnumerable<string> metricNames, long resumedBatch) =>
        step < resumedBatch ||
        (step == resumedBatch && metricNames.All(n => n.StartsWith("metrics/", StringComparison.Ordinal) && !n.StartsWith("metrics/train/", StringComparison.Ordinal)));

    /// <summary>The step and metric names of a metrics line, or null for a hyperparameters line or one that is not JSON.</summary>
    private static (long Step, string[] Names)? Parse(string line)
    {
        try
        {
            using var doc = JsonDocument.Parse(line);
            JsonElement root = doc.RootElement;
            return root.TryGetProperty("step", out JsonElement step) && step.TryGetInt64(out long value) && root.TryGetProperty("metrics", out JsonElement metrics) && metrics.ValueKind == JsonValueKind.Object
                ? (value, metrics.EnumerateObject().Select(m => m.Name).ToArray())
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void FitEnd(State state, Logger logger) => Flush();

    /// <summary>Flushes and closes the file, as <see cref="Close"/> does at the end of a run; idempotent.</summary>
    public void Dispose()
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        _writer.Dispose();
    }

    /// <inheritdoc/>
    public override void Close(State state, Logger logger) => Dispose();

    private void Flush()
    {
        if (!_closed)
        {
            _writer.Flush();
        }
    }
}
