using ComposerSharp.Events;
using NUnit.Framework;

namespace ComposerSharp.Tests.Events;

/// <summary>
/// The engine keeps the passes' order per event and reuses it: these tests check that the reused order and traces
/// are always those a fresh compilation would give when the matching algorithms, the state's algorithm list, the
/// registered passes or the exit codes change between runs of the same event.
/// </summary>
[TestFixture]
public class EnginePlanTests
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

    private RecordingAlgorithm Alg(string name, Func<Event, State, bool>? match = null, Func<Event, int?>? apply = null) =>
        new(name, _log, match, apply);
}
