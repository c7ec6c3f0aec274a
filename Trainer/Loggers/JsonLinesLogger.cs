using System.Text;
using System.Text.Json;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Loggers;

/// <summary>
/// Appends metrics to a JSON-lines file, one object per <see cref="LogMetrics"/> call:
/// <c>{"step": 12, "time": "2025-01-01T00:00:00.000Z", "metrics": {"loss/train/total": 0.43}}</c>, and one
/// <c>{"hyperparameters": {…}}</c> object per hyperparameter call. NaN and infinities are written as the strings
/// <c>"NaN"</c>, <c>"Infinity"</c>, <c>"-Infinity"</c>. The file is opened for appending (a resumed run continues
/// it) and flushed at every BatchEnd, EvalEnd, EpochEnd and FitEnd, and on close.
/// </summary>
public sealed class JsonLinesLogger : LoggerDestination
{
    private static readonly JsonSerializerOptions Options = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };
    private readonly StreamWriter _writer;
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

    /// <inheritdoc/>
    public override void BatchEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void EvalEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void EpochEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void FitEnd(State state, Logger logger) => Flush();

    /// <inheritdoc/>
    public override void Close(State state, Logger logger)
    {
        if (_closed)
        {
            return;
        }

        _closed = true;
        _writer.Dispose();
    }

    private void Flush()
    {
        if (!_closed)
        {
            _writer.Flush();
        }
    }
}
