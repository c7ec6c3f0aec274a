using Microsoft.Extensions.Logging;

namespace ComposerSharp.Events;

/// <summary>
/// A record of one algorithm at one event (Composer's <c>Trace</c>): whether it ran, its exit code and its position
/// in the run order.
/// </summary>
/// <param name="Name">Algorithm name.</param>
/// <param name="Event">The event.</param>
/// <param name="ExitCode">What <see cref="IAlgorithm.Apply"/> returned; null when it did not run or returned null.</param>
/// <param name="Order">0-based position in the order the algorithms were considered at this event.</param>
/// <param name="Run">True when <see cref="IAlgorithm.Match"/> returned true and the algorithm was applied.</param>
public sealed record Trace(string Name, Event Event, int? ExitCode, int Order, bool Run);

/// <summary>
/// An algorithm pass reorders (or filters) the algorithms before they run at an event (Composer's
/// <c>composer.core.passes</c>). Passes run in registration order, each on the previous one's result.
/// </summary>
public delegate IReadOnlyList<IAlgorithm> AlgorithmPass(IReadOnlyList<IAlgorithm> algorithms, Event e);

/// <summary>Composer's default algorithm passes.</summary>
public static class AlgorithmPasses
{
    /// <summary>Name of the algorithm that <see cref="SortLowPrecisionLayerNormLast"/> moves to the back.</summary>
    public const string LowPrecisionLayerNormName = "low_precision_layernorm";

    /// <summary>Name of the algorithm that <see cref="SortLowPrecisionGroupNormLast"/> moves to the back.</summary>
    public const string LowPrecisionGroupNormName = "low_precision_groupnorm";

    /// <summary>The events whose algorithm order is reversed by <see cref="SetFiloOrder"/>.</summary>
    public static IReadOnlySet<Event> FiloEvents { get; } = new HashSet<Event>
    {
        Event.AfterLoad, Event.AfterDataloader, Event.AfterForward, Event.AfterLoss, Event.AfterBackward, Event.AfterTrainBatch,
    };

    /// <summary>Moves the algorithms matching <paramref name="predicate"/> to the back, keeping relative order otherwise.</summary>
    public static IReadOnlyList<IAlgorithm> SortToBack(IReadOnlyList<IAlgorithm> algorithms, Func<IAlgorithm, bool> predicate) =>
        algorithms.Where(a => !predicate(a)).Concat(algorithms.Where(predicate)).ToList();

    /// <summary>Moves the algorithms matching <paramref name="predicate"/> to the front, keeping relative order otherwise.</summary>
    public static IReadOnlyList<IAlgorithm> SortToFront(IReadOnlyList<IAlgorithm> algorithms, Func<IAlgorithm, bool> predicate) =>
        algorithms.Where(predicate).Concat(algorithms.Where(a => !predicate(a))).ToList();

    /// <summary>
    /// Runs LowPrecisionLayerNorm after every other algorithm, so that LayerNorms that other algorithms add by
    /// surgery are converted too (Composer's <c>sort_low_precision_layernorm_last</c>).
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SortLowPrecisionLayerNormLast(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        SortToBack(algorithms, a => a.Name == LowPrecisionLayerNormName);

    /// <summary>Runs LowPrecisionGroupNorm after every other algorithm (as for LayerNorm).</summary>
    public static IReadOnlyList<IAlgorithm> SortLowPrecisionGroupNormLast(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        SortToBack(algorithms, a => a.Name == LowPrecisionGroupNormName);

    /// <summary>
    /// Reverses the order at the "after" events of the training step (AfterLoad, AfterDataloader, AfterForward,
    /// AfterLoss, AfterBackward, AfterTrainBatch), so that algorithms unwind first-in-last-out around the step
    /// (Composer's <c>set_filo_order</c>).
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SetFiloOrder(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        FiloEvents.Contains(e) ? algorithms.Reverse().ToList() : algorithms;

    /// <summary>The default passes, in the order the engine applies them.</summary>
    public static IReadOnlyList<AlgorithmPass> Defaults { get; } = new AlgorithmPass[]
    {
        SortLowPrecisionLayerNormLast,
        SortLowPrecisionGroupNormLast,
        SetFiloOrder,
    };
}

/// <summary>
/// Runs algorithms, callbacks and loggers at each <see cref="Event"/> (Composer's <c>composer.core.Engine</c>,
/// composer/core/engine.py). At <see cref="Event.Init"/> the order is loggers, then other callbacks, then algorithms
/// (so loggers can record what surgery did); at every other event it is algorithms, then other callbacks, then
/// loggers. Algorithm order comes from the <see cref="Passes"/>.
/// </summary>
public sealed class Engine : IDisposable
{
    private readonly List<AlgorithmPass> _passes = new(AlgorithmPasses.Defaults);
    private readonly List<Trace> _traces = new();
    private readonly ILogger _log;

    /// <summary>Creates an engine over <paramref name="state"/>'s algorithms and callbacks.</summary>
    /// <exception cref="ArgumentNullException">A required argument is null.</exception>
    public Engine(State state, Logger logger)
    {
        State = state ?? throw new ArgumentNullException(nameof(state));
        Logger = logger ?? throw new ArgumentNullException(nameof(logger));
        _log = state.LoggerFactory.CreateLogger<Engine>();
    }

    /// <summary>The state passed to every algorithm and callback.</summary>
    public State State { get; }

    /// <summary>The logger passed to every algorithm and callback.</summary>
    public Logger Logger { get; }

    /// <summary>The passes applied, in order, to the algorithm list at each event.</summary>
    public IReadOnlyList<AlgorithmPass> Passes => _passes;

    /// <summary>Every trace recorded so far, in the order algorithms were considered.</summary>
    public IReadOnlyList<Trace> Traces => _traces;

    /// <summary>Whether <see cref="Close"/> has been called.</summary>
    public bool IsClosed { get; private set; }

    /// <summary>When true, every trace is also kept in <see cref="Traces"/> (off by default so that long runs do not grow memory; <see cref="RunEvent"/> always returns them).</summary>
    public bool KeepTraces { get; set; }

    /// <summary>
    /// Adds a pass at <paramref name="index"/> (−1, the default, appends it after the defaults, as Composer's
    /// <c>register_pass</c> does).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside −1 … <c>Passes.Count</c>.</exception>
    public void RegisterPass(AlgorithmPass pass, int index = -1)
    {
        ArgumentNullException.ThrowIfNull(pass);
        if (index == -1)
        {
            _passes.Add(pass);
            return;
        }

        if (index < 0 || index > _passes.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"Pass index must be -1 or between 0 and {_passes.Count}.");
        }

        _passes.Insert(index, pass);
    }

    /// <summary>The order in which the algorithms would run at <paramref name="e"/>.</summary>
    public IReadOnlyList<IAlgorithm> OrderFor(Event e)
    {
        IReadOnlyList<IAlgorithm> algorithms = State.Algorithms as IReadOnlyList<IAlgorithm> ?? State.Algorithms.ToList();
        foreach (AlgorithmPass pass in _passes)
        {
            algorithms = pass(algorithms, e);
        }

        return algorithms;
    }

    /// <summary>Runs everything registered for <paramref name="e"/> and returns the algorithm traces of this event.</summary>
    /// <exception cref="InvalidOperationException">The engine is closed.</exception>
    /// <exception cref="AlgorithmException">An algorithm threw; the message names it and the event.</exception>
    public IReadOnlyList<Trace> RunEvent(Event e)
    {
        if (IsClosed)
        {
            throw new InvalidOperationException($"The engine is closed and cannot run event '{e.ToComposerName()}'.");
        }

        IReadOnlyList<Trace> traces;
        if (e == Event.Init)
        {
            RunLoggers(e);
            RunCallbacks(e);
            traces = RunAlgorithms(e);
        }
        else
        {
            traces = RunAlgorithms(e);
            RunCallbacks(e);
            RunLoggers(e);
        }

        return traces;
    }

    /// <summary>
    /// Closes every callback and logger (each once, even if another throws; the first exception is rethrown
    /// afterwards) and refuses further events.
    /// </summary>
    public void Close()
    {
        if (IsClosed)
        {
            return;
        }

        IsClosed = true;
        Exception? first = null;
        foreach (ICallback callback in State.Callbacks.Concat(Logger.Destinations).Distinct())
        {
            try
            {
                callback.Close(State, Logger);
            }
            catch (Exception ex)
            {
                _log.LogError(ex, "Callback {Callback} failed to close.", callback.GetType().Name);
                first ??= ex;
            }
        }

        if (first is not null)
        {
            throw first;
        }
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => Close();

    private IReadOnlyList<Trace> RunAlgorithms(Event e)
    {
        if (State.Algorithms.Count == 0)
        {
            return Array.Empty<Trace>();
        }

        IReadOnlyList<IAlgorithm> order = OrderFor(e);
        var traces = new Trace[order.Count];
        for (int i = 0; i < order.Count; i++)
        {
            IAlgorithm algorithm = order[i];
            bool run;
            int? exitCode = null;
            try
            {
                run = algorithm.Match(e, State);
                if (run)
                {
                    exitCode = algorithm.Apply(e, State, Logger);
                }
            }
            catch (Exception ex) when (ex is not AlgorithmException)
            {
                throw new AlgorithmException(algorithm.Name, e, ex);
            }

            traces[i] = new Trace(algorithm.Name, e, exitCode, i, run);
        }

        if (KeepTraces)
        {
            _traces.AddRange(traces);
        }

        return traces;
    }

    private void RunCallbacks(Event e)
    {
        foreach (ICallback callback in State.Callbacks)
        {
            if (callback is not ILoggerDestination)
            {
                callback.RunEvent(e, State, Logger);
            }
        }
    }

    private void RunLoggers(Event e)
    {
        foreach (ILoggerDestination destination in Logger.Destinations)
        {
            destination.RunEvent(e, State, Logger);
        }
    }
}
