using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;

namespace ComposerSharp.Tests.Events;

/// <summary>An algorithm that writes "alg:name" to a shared log when applied.</summary>
internal sealed class RecordingAlgorithm : IAlgorithm
{
    private readonly List<string> _log;
    private readonly Func<Event, State, bool> _match;
    private readonly Func<Event, int?> _apply;

    public RecordingAlgorithm(string name, List<string> log, Func<Event, State, bool>? match = null, Func<Event, int?>? apply = null)
    {
        Name = name;
        _log = log;
        _match = match ?? ((_, _) => true);
        _apply = apply ?? (_ => null);
    }

    public string Name { get; }

    public bool RequiredOnLoad => false;

    public bool Match(Event e, State state) => _match(e, state);

    public int? Apply(Event e, State state, Logger logger)
    {
        _log.Add("alg:" + Name);
        return _apply(e);
    }

    public AlgorithmDescription Describe() => new(Name);
}

/// <summary>A callback that writes "cb:name" to a shared log at every event and counts its closes.</summary>
internal class RecordingCallback : ICallback
{
    private readonly List<string> _log;
    private readonly string _prefix;

    public RecordingCallback(string name, List<string> log, string prefix = "cb")
    {
        Name = name;
        _log = log;
        _prefix = prefix;
    }

    public string Name { get; }

    public int Closes { get; private set; }

    public Exception? ThrowOnClose { get; init; }

    public void RunEvent(Event e, State state, Logger logger) => _log.Add($"{_prefix}:{Name}");

    public void Close(State state, Logger logger)
    {
        Closes++;
        if (ThrowOnClose is not null)
        {
            throw ThrowOnClose;
        }
    }
}

/// <summary>A logger destination that writes "log:name" to a shared log at every event.</summary>
internal sealed class RecordingLoggerDestination : RecordingCallback, ILoggerDestination
{
    public RecordingLoggerDestination(string name, List<string> log)
        : base(name, log, "log")
    {
    }

    public List<(string Name, double Value, long Step)> Metrics { get; } = new();

    public void LogMetrics(IReadOnlyDictionary<string, double> metrics, long step)
    {
        foreach ((string name, double value) in metrics)
        {
            Metrics.Add((name, value, step));
        }
    }

    public void LogHyperparameters(IReadOnlyDictionary<string, object?> hyperparameters)
    {
    }
}

/// <summary>A dataloader with a fixed number of batches per epoch that yields no tensors (the engine only checks that one is set).</summary>
internal sealed class CountOnlyDataLoader : IDataLoader
{
    public long? BatchesPerEpoch => 3;

    public long? SamplesPerEpoch => 12;

    public IEnumerable<Batch> GetEpoch(long epoch, long skipBatches = 0) => Array.Empty<Batch>();
}

/// <summary>Builds a state (tiny Linear model, 1ep max duration, a dataloader) and an engine over it.</summary>
internal static class EngineHarness
{
    public static State NewState() => new(torch.nn.Linear(2, 2))
    {
        MaxDuration = Time.Parse("1ep"),
        Dataloader = new CountOnlyDataLoader(),
        DataloaderLabel = "train",
    };

    public static Engine NewEngine(State state, params ILoggerDestination[] loggers) => new(state, new Logger(state, loggers));
}
