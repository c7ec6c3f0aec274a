using ComposerSharp.Core;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Events;

/// <summary>
/// A record of one algorithm run at one event (Composer's <c>Trace</c>): its name, the event, its exit code and its
/// position in the run order. As in Composer, the engine returns traces only for algorithms whose
/// <see cref="IAlgorithm.Match"/> returned true, so <see cref="Run"/> is true for every trace it produces.
/// </summary>
/// <param name="Name">Algorithm name.</param>
/// <param name="Event">The event.</param>
/// <param name="ExitCode">What <see cref="IAlgorithm.Apply"/> returned (null when it returned null).</param>
/// <param name="Order">0-based position among the algorithms that ran at this event, after the passes.</param>
/// <param name="Run">True when the algorithm was applied.</param>
public sealed record Trace(string Name, Event Event, int? ExitCode, int Order, bool Run);

/// <summary>
/// An algorithm pass reorders (or filters) the algorithms that matched an event before they run (Composer's
/// <c>composer.core.passes</c>). Passes run in registration order, each on the previous one's result.
/// A pass must depend only on its arguments, as Composer's do: the engine reuses the order the passes gave for an
/// event as long as the same algorithms match it and no pass is registered.
/// </summary>
public delegate IReadOnlyList<IAlgorithm> AlgorithmPass(IReadOnlyList<IAlgorithm> algorithms, Event e);

/// <summary>Composer's default algorithm passes (composer/core/passes.py) and helpers to write new ones.</summary>
public static class AlgorithmPasses
{
    /// <summary>Name of the algorithm that <see cref="SortLowPrecisionLayerNormLast"/> moves to the back.</summary>
    public const string LowPrecisionLayerNormName = "low_precision_layernorm";

    /// <summary>Name of the algorithm that <see cref="SortLowPrecisionGroupNormLast"/> moves to the back.</summary>
    public const string LowPrecisionGroupNormName = "low_precision_groupnorm";

    /// <summary>Name of the algorithm that <see cref="SortSelectiveBackpropFirst"/> moves to the front.</summary>
    public const string SelectiveBackpropName = "selective_backprop";

    /// <summary>
    /// The events whose algorithm order is reversed by <see cref="SetFiloOrder"/>: those whose Composer member name
    /// starts with <c>AFTER_</c> (the eval and predict "after forward" events start with <c>EVAL_</c>/<c>PREDICT_</c>
    /// and are not reversed).
    /// </summary>
    public static IReadOnlySet<Event> FiloEvents { get; } = new HashSet<Event>
    {
        Event.AfterLoad, Event.AfterDataloader, Event.AfterForward, Event.AfterLoss, Event.AfterBackward, Event.AfterTrainBatch,
    };

    /// <summary>Moves the algorithms matching <paramref name="predicate"/> to the back, keeping relative order otherwise (a stable sort).</summary>
    public static IReadOnlyList<IAlgorithm> SortToBack(IReadOnlyList<IAlgorithm> algorithms, Func<IAlgorithm, bool> predicate) =>
        algorithms.Where(a => !predicate(a)).Concat(algorithms.Where(predicate)).ToList();

    /// <summary>Moves the algorithms matching <paramref name="predicate"/> to the front, keeping relative order otherwise (a stable sort).</summary>
    public static IReadOnlyList<IAlgorithm> SortToFront(IReadOnlyList<IAlgorithm> algorithms, Func<IAlgorithm, bool> predicate) =>
        algorithms.Where(predicate).Concat(algorithms.Where(a => !predicate(a))).ToList();

    /// <summary>
    /// Runs SelectiveBackprop before every other algorithm, so that it ranks examples by a loss no other algorithm
    /// has changed yet (Composer's <c>sort_selective_backprop_first</c>).
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SortSelectiveBackpropFirst(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        SortToFront(algorithms, a => a.Name == SelectiveBackpropName);

    /// <summary>
    /// Runs LowPrecisionLayerNorm after every other algorithm, so that LayerNorms that other algorithms add by
    /// surgery are converted too (Composer's <c>sort_low_precision_layernorm_last</c>).
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SortLowPrecisionLayerNormLast(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        SortToBack(algorithms, a => a.Name == LowPrecisionLayerNormName);

    /// <summary>
    /// Runs LowPrecisionGroupNorm after every other algorithm (as for LayerNorm). Not a default pass: Composer has
    /// no such pass; register it with <see cref="Engine.RegisterPass"/> when wanted.
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SortLowPrecisionGroupNormLast(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        SortToBack(algorithms, a => a.Name == LowPrecisionGroupNormName);

    /// <summary>
    /// Reverses the order at the "after" events of the training step (AfterLoad, AfterDataloader, AfterForward,
    /// AfterLoss, AfterBackward, AfterTrainBatch), so that algorithms unwind first-in-last-out around the step
    /// (Composer's <c>set_filo_order</c>). <c>_start</c>/<c>_end</c> events keep their order.
    /// </summary>
    public static IReadOnlyList<IAlgorithm> SetFiloOrder(IReadOnlyList<IAlgorithm> algorithms, Event e) =>
        FiloEvents.Contains(e) ? algorithms.Reverse().ToList() : algorithms;

    /// <summary>The default passes, in the order the engine applies them (Composer's defaults, less its loss-interpolation warning).</summary>
    public static IReadOnlyList<AlgorithmPass> Defaults { get; } = new AlgorithmPass[]
    {
        SortSelectiveBackpropFirst,
        SortLowPrecisionLayerNormLast,
        SetFiloOrder,
    };
}

/// <summary>
/// Runs algorithms, callbacks and loggers at each <see cref="Event"/> (Composer's <c>composer.core.Engine</c>,
/// composer/core/engine.py). At <see cref="Event.Init"/> the order is loggers, then other callbacks, then algorithms
/// (so loggers can record what surgery did); at every other event it is algorithms, then other callbacks, then
/// loggers. At each event the engine first asks every algorithm, in <see cref="State.Algorithms"/> order, whether it
/// <see cref="IAlgorithm.Match"/>es; the <see cref="Passes"/> then order the matching ones, which are applied in that
/// order.
/// </summary>
/// <remarks>
/// Loggers are the <see cref="Logger"/>'s destinations plus any <see cref="ILoggerDestination"/> in
/// <see cref="State.Callbacks"/>; each runs once per event. Like Composer's engine, it requires
/// <see cref="State.Dataloader"/> at every event except Init, BeforeLoad, AfterLoad, EvalStandaloneStart and
/// EvalStandaloneEnd, and <see cref="State.MaxDuration"/> at every training event after AfterLoad.
/// Composer's check that a callback is not still open from a previous trainer needs process-wide state and is
/// not done here.
/// Dispatch allocates nothing in the steady state of a training loop: the passes' order is kept per event and
/// reused while the same algorithms match (passes depend only on their arguments), traces of algorithms that
/// return no exit code are reused, and loggers are found without building collections.
/// </remarks>
public sealed class Engine : IDisposable
{
    private static readonly HashSet<Event> EventsWithoutDataloader = new()
    {
        Event.Init, Event.BeforeLoad, Event.AfterLoad, Event.EvalStandaloneStart, Event.EvalStandaloneEnd,
    };

    private readonly List<AlgorithmPass> _passes = new(AlgorithmPasses.Defaults);
    private readonly List<Trace> _traces = new();
    private readonly EventPlan?[] _plans = new EventPlan?[Enum.GetValues<Event>().Length];
    private readonly List<IAlgorithm> _matched = new();
    private int _passesVersion;
    private readonly List<Exception> _closeErrors = new();
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

    /// <summary>The passes applied, in order, to the matching algorithms at each event.</summary>
    public IReadOnlyList<AlgorithmPass> Passes => _passes;

    /// <summary>Every trace recorded so far while <see cref="KeepTraces"/> was on, in run order.</summary>
    public IReadOnlyList<Trace> Traces => _traces;

    /// <summary>Whether <see cref="Close"/> has been called.</summary>
    public bool IsClosed { get; private set; }

    /// <summary>The exceptions thrown by callbacks' <see cref="ICallback.Close"/> during <see cref="Close"/> (empty when all closed cleanly).</summary>
    public IReadOnlyList<Exception> CloseErrors => _closeErrors;

    /// <summary>When true, every trace is also kept in <see cref="Traces"/> (off by default so that long runs do not grow memory; <see cref="RunEvent"/> always returns them).</summary>
    public bool KeepTraces { get; set; }

    /// <summary>
    /// Adds a pass at <paramref name="index"/> (−1, the default, appends it after the defaults, as Composer's
    /// <c>register_pass</c> does).
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="pass"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside −1 … <c>Passes.Count</c>.</exception>
    public void RegisterPass(AlgorithmPass pass, int index = -1)
    {
        ArgumentNullException.ThrowIfNull(pass);
        if (index == -1)
        {
            _passes.Add(pass);
            _passesVersion++;
            return;
        }

        if (index < 0 || index > _passes.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"Pass index must be -1 or between 0 and {_passes.Count}.");
        }

        _passes.Insert(index, pass);
        _passesVersion++;
    }

    /// <summary>
    /// The order in which the algorithms would run at <paramref name="e"/> if all of them matched: the passes applied
    /// to <see cref="State.Algorithms"/>.
    /// </summary>
    public IReadOnlyList<IAlgorithm> OrderFor(Event e) => Compile(State.Algorithms.ToList(), e);

    /// <summary>Runs everything registered for <paramref name="e"/> and returns the traces of the algorithms that ran.</summary>
    /// <exception cref="InvalidOperationException">
    /// The engine is closed; or <see cref="State.Dataloader"/> or <see cref="State.MaxDuration"/> is not set at an event that needs it.
    /// </exception>
    /// <exception cref="AlgorithmException">An algorithm's Match or Apply threw; the message names it and the event.</exception>
    public IReadOnlyList<Trace> RunEvent(Event e)
    {
        if (IsClosed)
        {
            throw new InvalidOperationException($"The engine is closed and cannot run event '{e.ToComposerName()}'; create a new engine (or trainer).");
        }

        CheckStateFor(e);
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
    /// Closes every callback and logger, each once, and refuses further events. As in Composer, an exception from a
    /// callback's <see cref="ICallback.Close"/> does not stop the others and is not rethrown (so closing in a
    /// <c>finally</c> never hides the exception that ended training): it is logged as an error and kept in
    /// <see cref="CloseErrors"/>. Calling it again does nothing.
    /// </summary>
    public void Close()
    {
        if (IsClosed)
        {
            return;
        }

        IsClosed = true;
        foreach (ICallback callback in State.Callbacks.Concat(Logger.Destinations).Distinct(ReferenceEqualityComparer.Instance).Cast<ICallback>())
        {
            try
            {
                callback.Close(State, Logger);
            }
            catch (Exception ex)
            {
                _log.LogError(ex, "Callback {Callback} failed to close.", callback.GetType().Name);
                _closeErrors.Add(ex);
            }
        }
    }

    /// <summary>Same as <see cref="Close"/>.</summary>
    public void Dispose() => Close();

    private void CheckStateFor(Event e)
    {
        if (!EventsWithoutDataloader.Contains(e) && State.Dataloader is null)
        {
            throw new InvalidOperationException(
                $"State.Dataloader must be set before event '{e.ToComposerName()}'; only init, before_load, after_load, eval_standalone_start and eval_standalone_end run without one.");
        }

        if (e is not (Event.Init or Event.BeforeLoad or Event.AfterLoad) && !e.IsEval() && !e.IsPredict() && State.MaxDuration is null)
        {
            throw new InvalidOperationException(
                $"State.MaxDuration must be set before training event '{e.ToComposerName()}'.");
        }
    }

    private IReadOnlyList<IAlgorithm> Compile(IReadOnlyList<IAlgorithm> algorithms, Event e)
    {
        foreach (AlgorithmPass pass in _passes)
        {
            algorithms = pass(algorithms, e);
        }

        return algorithms;
    }

    private IReadOnlyList<Trace> RunAlgorithms(Event e)
    {
        IList<IAlgorithm> algorithms = State.Algorithms;
        if (algorithms.Count == 0)
        {
            return Array.Empty<Trace>();
        }

        // As in Composer: every algorithm is asked first, in the state's order, then the passes order the matches.
        _matched.Clear();
        for (int i = 0; i < algorithms.Count; i++)
        {
            IAlgorithm algorithm = algorithms[i];
            bool match;
            try
            {
                match = algorithm.Match(e, State);
            }
            catch (Exception ex) when (ex is not AlgorithmException)
            {
                throw new AlgorithmException(algorithm.Name, e, ex);
            }

            if (match)
            {
                _matched.Add(algorithm);
            }
        }

        if (_matched.Count == 0)
        {
            return Array.Empty<Trace>();
        }

        EventPlan plan = PlanFor(e);
        IAlgorithm[] order = plan.Order;
        Trace[]? traces = null;
        for (int i = 0; i < order.Length; i++)
        {
            IAlgorithm algorithm = order[i];
            int? exitCode;
            try
            {
                exitCode = algorithm.Apply(e, State, Logger);
            }
            catch (Exception ex) when (ex is not AlgorithmException)
            {
                throw new AlgorithmException(algorithm.Name, e, ex);
            }

            Trace trace = exitCode is null ? plan.NullExitTraces[i] : new Trace(algorithm.Name, e, exitCode, i, Run: true);
            if (traces is null && exitCode is not null)
            {
                // From the first exit code on, this event's traces differ from the reused ones: copy those so far.
                traces = new Trace[order.Length];
                Array.Copy(plan.NullExitTraces, traces, i);
            }

            if (traces is not null)
            {
                traces[i] = trace;
            }

            if (KeepTraces)
            {
                _traces.Add(trace);
            }
        }

        if (_log.IsEnabled(LogLevel.Debug))
        {
            // Composer's engine logs each event's trace at debug level too; here one line an event, in run order.
            _log.LogDebug("Algorithms at {Event}: {Order}", e.ToComposerName(), string.Join(", ", order.Select(a => a.Name)));
        }

        return traces ?? plan.NullExitTraceList;
    }

    /// <summary>
    /// The run order of the algorithms in <see cref="_matched"/> at <paramref name="e"/>: the one kept from the last
    /// time this event ran when the same algorithms matched and no pass was registered since, else compiled anew.
    /// The order is copied into the plan, so an algorithm that raises an event from <c>Apply</c> cannot disturb it.
    /// </summary>
    private EventPlan PlanFor(Event e)
    {
        EventPlan? plan = _plans[(int)e];
        if (plan is not null && plan.PassesVersion == _passesVersion && plan.Matches(_matched))
        {
            return plan;
        }

        IAlgorithm[] matched = _matched.ToArray();
        IAlgorithm[] order = Compile(matched, e).ToArray();
        var traces = new Trace[order.Length];
        for (int i = 0; i < order.Length; i++)
        {
            traces[i] = new Trace(order[i].Name, e, null, i, Run: true);
        }

        plan = new EventPlan(matched, order, traces, _passesVersion);
        _plans[(int)e] = plan;
        return plan;
    }

    private void RunCallbacks(Event e)
    {
        IList<ICallback> callbacks = State.Callbacks;
        for (int i = 0; i < callbacks.Count; i++)
        {
            ICallback callback = callbacks[i];
            if (callback is not ILoggerDestination)
            {
                callback.RunEvent(e, State, Logger);
            }
        }
    }

    /// <summary>
    /// Runs each logger once, in order: the Logger's destinations, then the logger destinations among the callbacks
    /// (each distinct object once; the lists are short, so repeats are found by scanning instead of building a set).
    /// </summary>
    private void RunLoggers(Event e)
    {
        IReadOnlyList<ILoggerDestination> destinations = Logger.Destinations;
        for (int i = 0; i < destinations.Count; i++)
        {
            if (!Contains(destinations, destinations[i], i))
            {
                destinations[i].RunEvent(e, State, Logger);
            }
        }

        IList<ICallback> callbacks = State.Callbacks;
        for (int i = 0; i < callbacks.Count; i++)
        {
            if (callbacks[i] is not ILoggerDestination destination || Contains(destinations, destination, destinations.Count))
            {
                continue;
            }

            bool seen = false;
            for (int j = 0; j < i && !seen; j++)
            {
                seen = ReferenceEquals(callbacks[j], destination);
            }

            if (!seen)
            {
                destination.RunEvent(e, State, Logger);
            }
        }
    }

    /// <summary>Whether <paramref name="item"/> is among the first <paramref name="count"/> elements of <paramref name="list"/> (by reference).</summary>
    private static bool Contains(IReadOnlyList<ILoggerDestination> list, ILoggerDestination item, int count)
    {
        for (int i = 0; i < count; i++)
        {
            if (ReferenceEquals(list[i], item))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The compiled order of one event: the algorithms that matched (in the state's order), the order the passes
    /// gave them, the traces of that order for algorithms that return no exit code, and the pass-list version.
    /// </summary>
    private sealed class EventPlan
    {
        public EventPlan(IAlgorithm[] matched, IAlgorithm[] order, Trace[] nullExitTraces, int passesVersion)
        {
            Matched = matched;
            Order = order;
            NullExitTraces = nullExitTraces;
            NullExitTraceList = Array.AsReadOnly(nullExitTraces);
            PassesVersion = passesVersion;
        }

        public IAlgorithm[] Matched { get; }

        public IAlgorithm[] Order { get; }

        public Trace[] NullExitTraces { get; }

        public IReadOnlyList<Trace> NullExitTraceList { get; }

        public int PassesVersion { get; }

        public bool Matches(List<IAlgorithm> matched)
        {
            if (matched.Count != Matched.Length)
            {
                return false;
            }

            for (int i = 0; i < Matched.Length; i++)
            {
                if (!ReferenceEquals(matched[i], Matched[i]))
                {
                    return false;
                }
            }

            return true;
        }
    }
}
