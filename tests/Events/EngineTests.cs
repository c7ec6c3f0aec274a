using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;

namespace ComposerSharp.Tests.Events;

/// <summary>Run order, passes, traces and failure handling of <see cref="Engine"/>, against Composer's composer/core/engine.py.</summary>
[TestFixture]
public class EngineTests
{
    private List<string> _log = null!;
    private State _state = null!;

    [SetUp]
    public void SetUp()
    {
        _log = new List<string>();
        _state = EngineHarness.NewState();
    }

    [TearDown]
    public void TearDown() => _state.Model.Dispose();

    private Engine EngineWith(IEnumerable<IAlgorithm>? algorithms = null, IEnumerable<ICallback>? callbacks = null, params ILoggerDestination[] loggers)
    {
        _state.Algorithms = (algorithms ?? Array.Empty<IAlgorithm>()).ToList();
        _state.Callbacks = (callbacks ?? Array.Empty<ICallback>()).ToList();
        return EngineHarness.NewEngine(_state, loggers);
    }

    private RecordingAlgorithm Alg(string name, Func<Event, State, bool>? match = null, Func<Event, int?>? apply = null) =>
        new(name, _log, match, apply);

    [Test]
    public void InitRunsLoggersThenCallbacksThenAlgorithms()
    {
        Engine engine = EngineWith(
            new[] { Alg("a1"), Alg("a2") },
            new[] { new RecordingCallback("c1", _log), new RecordingCallback("c2", _log) },
            new RecordingLoggerDestination("l1", _log), new RecordingLoggerDestination("l2", _log));
        engine.RunEvent(Event.Init);
        Assert.That(_log, Is.EqualTo(new[] { "log:l1", "log:l2", "cb:c1", "cb:c2", "alg:a1", "alg:a2" }));
    }

    [TestCase(Event.FitStart)]
    [TestCase(Event.BeforeForward)]
    [TestCase(Event.BatchEnd)]
    [TestCase(Event.EvalStart)]
    [TestCase(Event.PredictBatchEnd)]
    public void OtherEventsRunAlgorithmsThenCallbacksThenLoggers(Event e)
    {
        Engine engine = EngineWith(
            new[] { Alg("a1"), Alg("a2") },
            new[] { new RecordingCallback("c1", _log), new RecordingCallback("c2", _log) },
            new RecordingLoggerDestination("l1", _log));
        engine.RunEvent(e);
        Assert.That(_log, Is.EqualTo(new[] { "alg:a1", "alg:a2", "cb:c1", "cb:c2", "log:l1" }));
    }

    [Test]
    public void LowPrecisionLayerNormRunsLastAndAfterEventsRunInReverse()
    {
        Engine engine = EngineWith(new[] { Alg("a"), Alg("b"), Alg(AlgorithmPasses.LowPrecisionLayerNormName), Alg("c") });
        Assert.That(AlgorithmPasses.LowPrecisionLayerNormName, Is.EqualTo("low_precision_layernorm"));

        IReadOnlyList<Trace> init = engine.RunEvent(Event.Init);
        Assert.That(init.Select(t => t.Name), Is.EqualTo(new[] { "a", "b", "c", "low_precision_layernorm" }));
        Assert.That(_log, Is.EqualTo(new[] { "alg:a", "alg:b", "alg:c", "alg:low_precision_layernorm" }));

        _log.Clear();
        IReadOnlyList<Trace> after = engine.RunEvent(Event.AfterForward);
        Assert.That(after.Select(t => t.Name), Is.EqualTo(new[] { "low_precision_layernorm", "c", "b", "a" }));
        Assert.That(_log, Is.EqualTo(new[] { "alg:low_precision_layernorm", "alg:c", "alg:b", "alg:a" }));
        Assert.That(after.Select(t => t.Order), Is.EqualTo(new[] { 0, 1, 2, 3 }));
    }

    [Test]
    public void OnlyTheSixAfterEventsOfTheStepAreReversed()
    {
        Engine engine = EngineWith(new[] { Alg("a"), Alg("b") });
        var reversed = new[] { Event.AfterLoad, Event.AfterDataloader, Event.AfterForward, Event.AfterLoss, Event.AfterBackward, Event.AfterTrainBatch };
        foreach (Event e in EventExtensions.All)
        {
            string[] expected = reversed.Contains(e) ? new[] { "b", "a" } : new[] { "a", "b" };
            Assert.That(engine.RunEvent(e).Select(t => t.Name), Is.EqualTo(expected), e.ToComposerName());
        }
    }

    [Test]
    public void SelectiveBackpropRunsFirstByDefaultAndGroupNormIsNotMoved()
    {
        Engine engine = EngineWith(new[]
        {
            Alg("a"), Alg(AlgorithmPasses.LowPrecisionLayerNormName), Alg(AlgorithmPasses.LowPrecisionGroupNormName), Alg(AlgorithmPasses.SelectiveBackpropName),
        });
        Assert.That(
            engine.RunEvent(Event.AfterDataloader).Select(t => t.Name),
            Is.EqualTo(new[] { "low_precision_layernorm", "low_precision_groupnorm", "a", "selective_backprop" }));
        Assert.That(
            engine.OrderFor(Event.Init).Select(a => a.Name),
            Is.EqualTo(new[] { "selective_backprop", "a", "low_precision_groupnorm", "low_precision_layernorm" }));
    }

    [Test]
    public void UserPassesRunAfterTheDefaultsOrAtTheirIndex()
    {
        Engine engine = EngineWith(new[] { Alg("a"), Alg("b"), Alg(AlgorithmPasses.LowPrecisionLayerNormName), Alg("c") });

        // Appended: sees the defaults' result and moves "b" to the front of it.
        engine.RegisterPass((algs, _) => AlgorithmPasses.SortToFront(algs, x => x.Name == "b"));
        Assert.That(engine.RunEvent(Event.AfterForward).Select(t => t.Name), Is.EqualTo(new[] { "b", "low_precision_layernorm", "c", "a" }));
        Assert.That(engine.RunEvent(Event.Init).Select(t => t.Name), Is.EqualTo(new[] { "b", "a", "c", "low_precision_layernorm" }));

        // Inserted first: its order is then overridden by the defaults that follow it.
        var seen = new List<string>();
        engine.RegisterPass(
            (algs, _) =>
            {
                seen.AddRange(algs.Select(x => x.Name));
                return AlgorithmPasses.SortToFront(algs, x => x.Name == AlgorithmPasses.LowPrecisionLayerNormName);
            },
            index: 0);
        Assert.That(engine.Passes, Has.Count.EqualTo(AlgorithmPasses.Defaults.Count + 2));
        Assert.That(engine.RunEvent(Event.Init).Select(t => t.Name), Is.EqualTo(new[] { "b", "a", "c", "low_precision_layernorm" }));
        Assert.That(seen, Is.EqualTo(new[] { "a", "b", "low_precision_layernorm", "c" }), "a pass at index 0 sees the state's order");

        Assert.Throws<ArgumentOutOfRangeException>(() => engine.RegisterPass((algs, _) => algs, index: 7));
        Assert.Throws<ArgumentNullException>(() => engine.RegisterPass(null!));
    }

    [Test]
    public void PassesSeeOnlyTheAlgorithmsThatMatched()
    {
        Engine engine = EngineWith(new[] { Alg("a"), Alg("only_at_init", (e, _) => e == Event.Init), Alg("c") });
        var seen = new List<string[]>();
        engine.RegisterPass((algs, _) =>
        {
            seen.Add(algs.Select(x => x.Name).ToArray());
            return algs;
        });
        engine.RunEvent(Event.Init);
        engine.RunEvent(Event.BatchStart);
        Assert.That(seen[0], Is.EqualTo(new[] { "a", "only_at_init", "c" }));
        Assert.That(seen[1], Is.EqualTo(new[] { "a", "c" }));
    }

    [Test]
    public void EveryAlgorithmIsMatchedBeforeAnyIsApplied()
    {
        // As in Composer, "b" is asked before "a" runs, so a change "a" makes does not make "b" match this event.
        bool flag = false;
        Engine engine = EngineWith(new[]
        {
            Alg("a", apply: _ => { flag = true; return null; }),
            Alg("b", match: (_, _) => flag),
        });
        Assert.That(engine.RunEvent(Event.BatchStart).Select(t => t.Name), Is.EqualTo(new[] { "a" }));
        Assert.That(engine.RunEvent(Event.BatchEnd).Select(t => t.Name), Is.EqualTo(new[] { "a", "b" }));
    }

    [Test]
    public void TracesRecordWhichAlgorithmRanAtWhichEventWithItsExitCode()
    {
        Engine engine = EngineWith(new[]
        {
            Alg("seven", apply: e => e == Event.Init ? 7 : 3),
            Alg("silent"),
            Alg("epoch_only", match: (e, _) => e == Event.EpochEnd, apply: _ => 0),
        });
        engine.KeepTraces = true;

        IReadOnlyList<Trace> init = engine.RunEvent(Event.Init);
        Assert.That(init, Is.EqualTo(new[]
        {
            new Trace("seven", Event.Init, 7, 0, true),
            new Trace("silent", Event.Init, null, 1, true),
        }));

        IReadOnlyList<Trace> epochEnd = engine.RunEvent(Event.EpochEnd);
        Assert.That(epochEnd, Is.EqualTo(new[]
        {
            new Trace("seven", Event.EpochEnd, 3, 0, true),
            new Trace("silent", Event.EpochEnd, null, 1, true),
            new Trace("epoch_only", Event.EpochEnd, 0, 2, true),
        }));
        Assert.That(engine.Traces, Is.EqualTo(init.Concat(epochEnd)));
    }

    [Test]
    public void TracesAreNotKeptUnlessAskedAndEventsWithoutMatchesGiveNone()
    {
        Engine engine = EngineWith(new[] { Alg("late", match: (e, _) => e == Event.FitEnd) });
        Assert.That(engine.RunEvent(Event.FitStart), Is.Empty);
        Assert.That(engine.RunEvent(Event.FitEnd), Has.Count.EqualTo(1));
        Assert.That(engine.Traces, Is.Empty);
    }

    [Test]
    public void ClosedEngineRefusesEvents()
    {
        Engine engine = EngineWith(new[] { Alg("a") }, new[] { new RecordingCallback("c", _log) });
        engine.RunEvent(Event.Init);
        engine.Close();
        Assert.That(engine.IsClosed, Is.True);
        var ex = Assert.Throws<InvalidOperationException>(() => engine.RunEvent(Event.FitStart));
        Assert.That(ex!.Message, Does.Contain("closed").And.Contain("fit_start"));
        Assert.That(_log, Is.EqualTo(new[] { "cb:c", "alg:a" }), "nothing ran after close");
    }

    [Test]
    public void CloseClosesEveryCallbackAndLoggerOnceAndKeepsGoingAfterAFailure()
    {
        var failing = new RecordingCallback("failing", _log) { ThrowOnClose = new IOException("disk full") };
        var after = new RecordingCallback("after", _log);
        var logger = new RecordingLoggerDestination("l", _log);
        Engine engine = EngineWith(callbacks: new ICallback[] { failing, after, logger }, loggers: logger);

        Assert.DoesNotThrow(() => engine.Dispose());
        engine.Close();
        Assert.That((failing.Closes, after.Closes, logger.Closes), Is.EqualTo((1, 1, 1)));
        Assert.That(engine.CloseErrors, Has.Count.EqualTo(1));
        Assert.That(engine.CloseErrors[0].Message, Is.EqualTo("disk full"));
    }

    [Test]
    public void AnAlgorithmExceptionIsWrappedNamingTheAlgorithmAndTheEvent()
    {
        var boom = new InvalidOperationException("no LayerNorm found");
        Engine engine = EngineWith(new[] { Alg("fine"), Alg("exploder", apply: e => e == Event.AfterForward ? throw boom : null) });
        engine.RunEvent(Event.BeforeForward);

        var ex = Assert.Throws<AlgorithmException>(() => engine.RunEvent(Event.AfterForward));
        Assert.That(ex!.Message, Does.Contain("'exploder'").And.Contain("'after_forward'").And.Contain("no LayerNorm found"));
        Assert.That(ex.InnerException, Is.SameAs(boom));
        Assert.That((ex.AlgorithmName, ex.Event), Is.EqualTo(("exploder", Event.AfterForward)));
    }

    [Test]
    public void AMatchExceptionIsWrappedToo()
    {
        Engine engine = EngineWith(new[] { Alg("picky", match: (e, s) => s.Batch!.NumSamples > 0) });
        var ex = Assert.Throws<AlgorithmException>(() => engine.RunEvent(Event.AfterDataloader));
        Assert.That(ex!.Message, Does.Contain("'picky'").And.Contain("'after_dataloader'"));
        Assert.That(ex.InnerException, Is.InstanceOf<NullReferenceException>());
    }

    [Test]
    public void EventsThatNeedADataloaderOrMaxDurationRefuseToRunWithout()
    {
        Engine engine = EngineWith(new[] { Alg("a") });
        _state.Dataloader = null;
        _state.MaxDuration = null;
        foreach (Event e in new[] { Event.Init, Event.BeforeLoad, Event.AfterLoad, Event.EvalStandaloneStart, Event.EvalStandaloneEnd })
        {
            Assert.DoesNotThrow(() => engine.RunEvent(e), e.ToComposerName());
        }

        var noLoader = Assert.Throws<InvalidOperationException>(() => engine.RunEvent(Event.FitStart));
        Assert.That(noLoader!.Message, Does.Contain("State.Dataloader").And.Contain("fit_start"));

        _state.Dataloader = new CountOnlyDataLoader();
        Assert.DoesNotThrow(() => engine.RunEvent(Event.EvalStart), "eval events need no max duration");
        Assert.DoesNotThrow(() => engine.RunEvent(Event.PredictStart), "predict events need no max duration");
        var noMax = Assert.Throws<InvalidOperationException>(() => engine.RunEvent(Event.BatchStart));
        Assert.That(noMax!.Message, Does.Contain("State.MaxDuration").And.Contain("batch_start"));
    }

    [Test]
    public void LoggerDestinationsAmongTheCallbacksRunAsLoggersOnce()
    {
        var shared = new RecordingLoggerDestination("shared", _log);
        var onlyInCallbacks = new RecordingLoggerDestination("cbs", _log);
        Engine engine = EngineWith(
            callbacks: new ICallback[] { onlyInCallbacks, new RecordingCallback("c", _log), shared },
            loggers: shared);
        engine.RunEvent(Event.BatchEnd);
        Assert.That(_log, Is.EqualTo(new[] { "cb:c", "log:shared", "log:cbs" }));
        _log.Clear();
        engine.RunEvent(Event.Init);
        Assert.That(_log, Is.EqualTo(new[] { "log:shared", "log:cbs", "cb:c" }));
    }

    [Test]
    public void LoggerStampsMetricsWithTheBatchCount()
    {
        var dest = new RecordingLoggerDestination("d", _log);
        var logger = new Logger(_state, new[] { dest });
        _state.Timestamp = _state.Timestamp.ToNextBatch(4).ToNextBatch(4);
        logger.LogMetric("loss/train/total", 0.5);
        logger.LogMetric("lr", 0.1, step: 9);
        Assert.That(dest.Metrics, Is.EqualTo(new[] { ("loss/train/total", 0.5, 2L), ("lr", 0.1, 9L) }));
    }

    [Test]
    public void AlgorithmBaseNamesAndDescriptions()
    {
        Assert.That(Algorithm.ToSnakeCase("SelectiveBackprop"), Is.EqualTo("selective_backprop"));
        Assert.That(Algorithm.ToSnakeCase("LowPrecisionLayerNorm"), Is.EqualTo("low_precision_layer_norm"));
        Assert.That(Algorithm.ToSnakeCase("EMA"), Is.EqualTo("ema"));
        Assert.That(Algorithm.ToSnakeCase("GLUBlock"), Is.EqualTo("glu_block"));

        var d1 = new AlgorithmDescription("x", new Dictionary<string, string> { ["alpha"] = "0.1" });
        var d2 = new AlgorithmDescription("x", new Dictionary<string, string> { ["alpha"] = "0.1" });
        var d3 = new AlgorithmDescription("x", new Dictionary<string, string> { ["alpha"] = "0.2" });
        Assert.That(d1, Is.EqualTo(d2));
        Assert.That(d1, Is.Not.EqualTo(d3));
        Assert.That(new AlgorithmDescription("x"), Is.Not.EqualTo(d1));
    }

    // The engine keeps the passes' order per event and reuses it: the reused order and traces must always be those a
    // fresh compilation would give when the matches, the state's algorithms, the passes or the exit codes change.
    [Test]
    public void AnAlgorithmThatStartsMatchingIsOrderedByThePasses()
    {
        bool lpMatches = false;
        _state.Algorithms = new List<IAlgorithm>
        {
            Alg(AlgorithmPasses.LowPrecisionLayerNormName, (_, _) => lpMatches), Alg("a"), Alg("b"),
        };
        Engine engine = EngineHarness.NewEngine(_state);

        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "a", "b" }));
        lpMatches = true;
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "a", "b", AlgorithmPasses.LowPrecisionLayerNormName }));
        Assert.That(Names(engine.RunEvent(Event.AfterForward)), Is.EqualTo(new[] { AlgorithmPasses.LowPrecisionLayerNormName, "b", "a" }), "FILO at an after event");
        lpMatches = false;
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "a", "b" }));
        Assert.That(_log, Is.EqualTo(new[] { "alg:a", "alg:b", "alg:a", "alg:b", "alg:" + AlgorithmPasses.LowPrecisionLayerNormName, "alg:" + AlgorithmPasses.LowPrecisionLayerNormName, "alg:b", "alg:a", "alg:a", "alg:b" }));
    }

    [Test]
    public void ReplacingOrReorderingTheStateAlgorithmsIsSeen()
    {
        RecordingAlgorithm a = Alg("a"), b = Alg("b"), c = Alg("c");
        _state.Algorithms = new List<IAlgorithm> { a, b };
        Engine engine = EngineHarness.NewEngine(_state);
        Assert.That(Names(engine.RunEvent(Event.BatchEnd)), Is.EqualTo(new[] { "a", "b" }));

        _state.Algorithms = new List<IAlgorithm> { b, a };
        Assert.That(Names(engine.RunEvent(Event.BatchEnd)), Is.EqualTo(new[] { "b", "a" }));

        _state.Algorithms.Add(c);
        Assert.That(Names(engine.RunEvent(Event.BatchEnd)), Is.EqualTo(new[] { "b", "a", "c" }));

        _state.Algorithms[2] = Alg("d");
        Assert.That(Names(engine.RunEvent(Event.BatchEnd)), Is.EqualTo(new[] { "b", "a", "d" }));
    }

    [Test]
    public void PassesRunAgainOnlyWhenTheMatchOrThePassListChanges()
    {
        bool bMatches = true;
        _state.Algorithms = new List<IAlgorithm> { Alg("a"), Alg("b", (_, _) => bMatches) };
        Engine engine = EngineHarness.NewEngine(_state);
        int calls = 0;
        engine.RegisterPass((algs, _) =>
        {
            calls++;
            return algs.Reverse().ToList();
        });

        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "b", "a" }));
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "b", "a" }));
        Assert.That(calls, Is.EqualTo(1), "same event, same matches: the order is reused");

        Assert.That(Names(engine.RunEvent(Event.BatchEnd)), Is.EqualTo(new[] { "b", "a" }));
        Assert.That(calls, Is.EqualTo(2), "another event compiles its own order");

        bMatches = false;
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "a" }));
        Assert.That(calls, Is.EqualTo(3), "a different match set compiles again");

        engine.RegisterPass((algs, _) => algs.Concat(algs).ToList());
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "a", "a" }), "a newly registered pass applies at once");
        Assert.That(calls, Is.EqualTo(4));
    }

    [Test]
    public void TracesCarryEachRunsExitCodes()
    {
        int run = 0;
        _state.Algorithms = new List<IAlgorithm>
        {
            Alg("a"),
            Alg("b", apply: _ => run == 1 ? 7 : null),
            Alg("c", apply: _ => run == 2 ? -1 : null),
        };
        Engine engine = EngineHarness.NewEngine(_state);
        engine.KeepTraces = true;
        var expected = new List<IReadOnlyList<Trace>>();
        for (run = 0; run < 4; run++)
        {
            IReadOnlyList<Trace> traces = engine.RunEvent(Event.BatchStart);
            int?[] codes = { null, run == 1 ? 7 : null, run == 2 ? -1 : null };
            var want = new[] { "a", "b", "c" }.Select((n, i) => new Trace(n, Event.BatchStart, codes[i], i, Run: true)).ToArray();
            Assert.That(traces, Is.EqualTo(want), $"run {run}");
            expected.Add(want);
        }

        Assert.That(engine.Traces, Is.EqualTo(expected.SelectMany(t => t).ToArray()));
    }

    [Test]
    public void ReturnedTracesCannotBeChangedByTheCaller()
    {
        _state.Algorithms = new List<IAlgorithm> { Alg("a") };
        Engine engine = EngineHarness.NewEngine(_state);
        IReadOnlyList<Trace> first = engine.RunEvent(Event.BatchStart);
        Assert.That(first, Is.Not.InstanceOf<Trace[]>(), "a reused trace list is read-only");
        Assert.That(engine.RunEvent(Event.BatchStart), Is.EqualTo(new[] { new Trace("a", Event.BatchStart, null, 0, Run: true) }));
    }

    [Test]
    public void AnAlgorithmThatRaisesAnEventFromApplyDoesNotDisturbTheOuterOrder()
    {
        Engine? engine = null;
        _state.Algorithms = new List<IAlgorithm>
        {
            Alg("outer", (e, _) => e == Event.BatchStart, _ =>
            {
                engine!.RunEvent(Event.BatchEnd);
                return null;
            }),
            Alg("inner", (e, _) => e == Event.BatchEnd),
            Alg("second", (e, _) => e == Event.BatchStart),
        };
        engine = EngineHarness.NewEngine(_state);
        Assert.That(Names(engine.RunEvent(Event.BatchStart)), Is.EqualTo(new[] { "outer", "second" }));
        Assert.That(_log, Is.EqualTo(new[] { "alg:outer", "alg:inner", "alg:second" }));
    }

    private static string[] Names(IReadOnlyList<Trace> traces) => traces.Select(t => t.Name).ToArray();
}
