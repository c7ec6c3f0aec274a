using ComposerSharp.Core;
using ComposerSharp.Events;
using NUnit.Framework;

namespace ComposerSharp.Tests.Events;

/// <summary>The 40 events, their names and classification, as in Composer's composer/core/event.py.</summary>
[TestFixture]
public class EventTests
{
    // Composer's Event values, in declaration order.
    private static readonly string[] ComposerNames =
    {
        "init", "before_load", "after_load", "fit_start", "iteration_start", "epoch_start", "before_dataloader",
        "after_dataloader", "batch_start", "before_train_batch", "before_forward", "after_forward", "before_loss",
        "after_loss", "before_backward", "after_backward", "after_train_batch", "batch_end", "batch_checkpoint",
        "epoch_end", "epoch_checkpoint", "iteration_end", "iteration_checkpoint", "fit_end", "eval_before_all",
        "eval_start", "eval_batch_start", "eval_before_forward", "eval_after_forward", "eval_batch_end", "eval_end",
        "eval_after_all", "eval_standalone_start", "eval_standalone_end", "predict_start", "predict_batch_start",
        "predict_before_forward", "predict_after_forward", "predict_batch_end", "predict_end",
    };

    [Test]
    public void FortyEventsInComposersOrderWithSnakeCaseNames()
    {
        Assert.That(EventExtensions.All, Has.Count.EqualTo(40));
        Assert.That(EventExtensions.All.Select(e => e.ToComposerName()), Is.EqualTo(ComposerNames));
        Assert.That(EventExtensions.All, Is.EqualTo(Enum.GetValues<Event>()));
        Assert.That(Event.BeforeForward.ToComposerName(), Is.EqualTo("before_forward"));
    }

    [TestCase("before_forward", Event.BeforeForward)]
    [TestCase("BEFORE_FORWARD", Event.BeforeForward)]
    [TestCase("BeforeForward", Event.BeforeForward)]
    [TestCase("  eval_After_Forward ", Event.EvalAfterForward)]
    [TestCase("init", Event.Init)]
    [TestCase("PREDICT_END", Event.PredictEnd)]
    public void ParseIsCaseInsensitive(string name, Event expected)
    {
        Assert.That(EventExtensions.Parse(name), Is.EqualTo(expected));
        Assert.That(EventExtensions.TryParse(name, out Event e), Is.True);
        Assert.That(e, Is.EqualTo(expected));
    }

    [Test]
    public void EveryComposerNameParsesBackToItsEvent()
    {
        foreach (Event e in EventExtensions.All)
        {
            Assert.That(EventExtensions.Parse(e.ToComposerName().ToUpperInvariant()), Is.EqualTo(e));
        }
    }

    [TestCase("before forward")]
    [TestCase("b_e_f_o_r_e_forward")]
    [TestCase("training_start")]
    [TestCase("")]
    public void UnknownNamesAreRejectedQuotingTheInput(string name)
    {
        Assert.That(EventExtensions.TryParse(name, out _), Is.False);
        var ex = Assert.Throws<FormatException>(() => EventExtensions.Parse(name));
        Assert.That(ex!.Message, Does.StartWith($"'{name}' is not an event name").And.Contain("before_forward"));
    }

    [Test]
    public void BeforeAndAfterClassificationMatchesComposer()
    {
        var before = new[]
        {
            Event.BeforeLoad, Event.FitStart, Event.IterationStart, Event.EpochStart, Event.BeforeDataloader,
            Event.BatchStart, Event.BeforeTrainBatch, Event.BeforeForward, Event.BeforeLoss, Event.BeforeBackward,
            Event.EvalBeforeAll, Event.EvalStart, Event.EvalBatchStart, Event.EvalBeforeForward, Event.PredictStart,
            Event.PredictBatchStart, Event.PredictBeforeForward, Event.EvalStandaloneStart,
        };
        var after = new[]
        {
            Event.AfterLoad, Event.IterationEnd, Event.EpochEnd, Event.BatchEnd, Event.AfterDataloader,
            Event.AfterTrainBatch, Event.AfterForward, Event.AfterLoss, Event.AfterBackward, Event.EvalAfterAll,
            Event.EvalEnd, Event.EvalBatchEnd, Event.EvalAfterForward, Event.FitEnd, Event.PredictEnd,
            Event.PredictBatchEnd, Event.PredictAfterForward, Event.EvalStandaloneEnd,
        };
        Assert.That(EventExtensions.All.Where(e => e.IsBeforeEvent()), Is.EquivalentTo(before));
        Assert.That(EventExtensions.All.Where(e => e.IsAfterEvent()), Is.EquivalentTo(after));
        // Init and the four checkpoint events belong to no pair.
        Assert.That(
            EventExtensions.All.Where(e => !e.IsBeforeEvent() && !e.IsAfterEvent()),
            Is.EquivalentTo(new[] { Event.Init, Event.BatchCheckpoint, Event.EpochCheckpoint, Event.IterationCheckpoint }));
    }

    [Test]
    public void EvalAndPredictClassificationMatchesComposer()
    {
        Assert.That(EventExtensions.All.Where(e => e.IsEval()), Is.EqualTo(EventExtensions.All.Skip(24).Take(10)));
        Assert.That(EventExtensions.All.Where(e => e.IsPredict()), Is.EqualTo(EventExtensions.All.Skip(34)));
        Assert.That(Event.EvalStandaloneStart.IsEval(), Is.True);
        Assert.That(Event.AfterForward.IsEval() || Event.AfterForward.IsPredict(), Is.False);
    }

    [TestCase(Event.EpochStart, "epoch")]
    [TestCase(Event.EpochEnd, "epoch")]
    [TestCase(Event.BeforeForward, "forward")]
    [TestCase(Event.AfterTrainBatch, "train_batch")]
    [TestCase(Event.EvalBeforeForward, "eval_forward")]
    [TestCase(Event.BatchCheckpoint, "batch_checkpoint")]
    public void CanonicalNameDropsPairMarkers(Event e, string canonical) =>
        Assert.That(e.CanonicalName(), Is.EqualTo(canonical));

    [Test]
    public void CallbackBaseDispatchesEveryEventToTheMethodOfTheSameName()
    {
        var probe = new DispatchProbe();
        foreach (Event e in EventExtensions.All)
        {
            probe.RunEvent(e, null!, null!);
        }

        Assert.That(probe.Calls, Is.EqualTo(EventExtensions.All.Select(e => e.ToString())));
    }

    private sealed class DispatchProbe : Callback
    {
        public List<string> Calls { get; } = new();

        public override void Init(State state, Logger logger) => Calls.Add(nameof(Init));

        public override void BeforeLoad(State state, Logger logger) => Calls.Add(nameof(BeforeLoad));

        public override void AfterLoad(State state, Logger logger) => Calls.Add(nameof(AfterLoad));

        public override void FitStart(State state, Logger logger) => Calls.Add(nameof(FitStart));

        public override void IterationStart(State state, Logger logger) => Calls.Add(nameof(IterationStart));

        public override void EpochStart(State state, Logger logger) => Calls.Add(nameof(EpochStart));

        public override void BeforeDataloader(State state, Logger logger) => Calls.Add(nameof(BeforeDataloader));

        public override void AfterDataloader(State state, Logger logger) => Calls.Add(nameof(AfterDataloader));

        public override void BatchStart(State state, Logger logger) => Calls.Add(nameof(BatchStart));

        public override void BeforeTrainBatch(State state, Logger logger) => Calls.Add(nameof(BeforeTrainBatch));

        public override void BeforeForward(State state, Logger logger) => Calls.Add(nameof(BeforeForward));

        public override void AfterForward(State state, Logger logger) => Calls.Add(nameof(AfterForward));

        public override void BeforeLoss(State state, Logger logger) => Calls.Add(nameof(BeforeLoss));

        public override void AfterLoss(State state, Logger logger) => Calls.Add(nameof(AfterLoss));

        public override void BeforeBackward(State state, Logger logger) => Calls.Add(nameof(BeforeBackward));

        public override void AfterBackward(State state, Logger logger) => Calls.Add(nameof(AfterBackward));

        public override void AfterTrainBatch(State state, Logger logger) => Calls.Add(nameof(AfterTrainBatch));

        public override void BatchEnd(State state, Logger logger) => Calls.Add(nameof(BatchEnd));

        public override void BatchCheckpoint(State state, Logger logger) => Calls.Add(nameof(BatchCheckpoint));

        public override void EpochEnd(State state, Logger logger) => Calls.Add(nameof(EpochEnd));

        public override void EpochCheckpoint(State state, Logger logger) => Calls.Add(nameof(EpochCheckpoint));

        public override void IterationEnd(State state, Logger logger) => Calls.Add(nameof(IterationEnd));

        public override void IterationCheckpoint(State state, Logger logger) => Calls.Add(nameof(IterationCheckpoint));

        public override void FitEnd(State state, Logger logger) => Calls.Add(nameof(FitEnd));

        public override void EvalBeforeAll(State state, Logger logger) => Calls.Add(nameof(EvalBeforeAll));

        public override void EvalStart(State state, Logger logger) => Calls.Add(nameof(EvalStart));

        public override void EvalBatchStart(State state, Logger logger) => Calls.Add(nameof(EvalBatchStart));

        public override void EvalBeforeForward(State state, Logger logger) => Calls.Add(nameof(EvalBeforeForward));

        public override void EvalAfterForward(State state, Logger logger) => Calls.Add(nameof(EvalAfterForward));

        public override void EvalBatchEnd(State state, Logger logger) => Calls.Add(nameof(EvalBatchEnd));

        public override void EvalEnd(State state, Logger logger) => Calls.Add(nameof(EvalEnd));

        public override void EvalAfterAll(State state, Logger logger) => Calls.Add(nameof(EvalAfterAll));

        public override void EvalStandaloneStart(State state, Logger logger) => Calls.Add(nameof(EvalStandaloneStart));

        public override void EvalStandaloneEnd(State state, Logger logger) => Calls.Add(nameof(EvalStandaloneEnd));

        public override void PredictStart(State state, Logger logger) => Calls.Add(nameof(PredictStart));

        public override void PredictBatchStart(State state, Logger logger) => Calls.Add(nameof(PredictBatchStart));

        public override void PredictBeforeForward(State state, Logger logger) => Calls.Add(nameof(PredictBeforeForward));

        public override void PredictAfterForward(State state, Logger logger) => Calls.Add(nameof(PredictAfterForward));

        public override void PredictBatchEnd(State state, Logger logger) => Calls.Add(nameof(PredictBatchEnd));

        public override void PredictEnd(State state, Logger logger) => Calls.Add(nameof(PredictEnd));
    }
}
