using ComposerSharp.Core;

namespace ComposerSharp.Events;

/// <summary>
/// The points in the training loop at which the <see cref="Engine"/> runs algorithms, callbacks and loggers.
/// The members and their order are those of MosaicML Composer's <c>composer.core.Event</c>
/// (composer/core/event.py); <see cref="EventExtensions.ToComposerName"/> gives Composer's snake_case value.
/// </summary>
/// <remarks>
/// A training run raises, in order:
/// <code>
/// Init, BeforeLoad, AfterLoad, FitStart
/// for each iteration: IterationStart
///   for each epoch: EpochStart
///     for each batch: BeforeDataloader, AfterDataloader, BatchStart, BeforeTrainBatch,
///       for each microbatch: BeforeForward, AfterForward, BeforeLoss, AfterLoss, BeforeBackward, AfterBackward
///       AfterTrainBatch, BatchEnd, BatchCheckpoint
///     EpochEnd, EpochCheckpoint
///   IterationEnd, IterationCheckpoint      (when State.IterationLength is set, as in Composer)
/// FitEnd
/// </code>
/// A run without an iteration length is one iteration that never ends (Composer's default): IterationStart is raised
/// once and IterationEnd/IterationCheckpoint not at all. With <see cref="State.IterationLength"/> = N epochs, an
/// iteration ends after every Nth epoch.
/// Evaluation raises EvalBeforeAll, EvalStart, per batch EvalBatchStart, EvalBeforeForward, EvalAfterForward,
/// EvalBatchEnd, then EvalEnd, EvalAfterAll. Prediction raises the six Predict events.
/// </remarks>
public enum Event
{
    /// <summary>Raised once at the end of the Trainer's constructor, before any checkpoint is loaded; module surgery happens here.</summary>
    Init,
    /// <summary>Before a checkpoint is loaded (raised whether or not one is).</summary>
    BeforeLoad,
    /// <summary>After a checkpoint is loaded (raised whether or not one is).</summary>
    AfterLoad,
    /// <summary>At the start of <c>Fit</c>.</summary>
    FitStart,
    /// <summary>At the start of an iteration (a group of epochs; one iteration unless configured otherwise).</summary>
    IterationStart,
    /// <summary>At the start of each epoch (not when resuming mid-epoch).</summary>
    EpochStart,
    /// <summary>Before each request of the next batch from the dataloader, and once more when it is exhausted.</summary>
    BeforeDataloader,
    /// <summary>After a batch was taken from the dataloader; algorithms may transform <see cref="State.Batch"/> here.</summary>
    AfterDataloader,
    /// <summary>At the start of each batch.</summary>
    BatchStart,
    /// <summary>Before the forward/backward passes of a batch.</summary>
    BeforeTrainBatch,
    /// <summary>Before the model's forward pass on a microbatch.</summary>
    BeforeForward,
    /// <summary>After the model's forward pass on a microbatch; <see cref="State.Outputs"/> is set.</summary>
    AfterForward,
    /// <summary>Before the loss of a microbatch is computed.</summary>
    BeforeLoss,
    /// <summary>After the loss of a microbatch is computed; <see cref="State.Loss"/> is set.</summary>
    AfterLoss,
    /// <summary>Before the backward pass of a microbatch.</summary>
    BeforeBackward,
    /// <summary>After the backward pass of a microbatch.</summary>
    AfterBackward,
    /// <summary>After all microbatches of a batch; gradients are accumulated (and unscaled under fp16), before the optimizer step.</summary>
    AfterTrainBatch,
    /// <summary>At the end of each batch, after the optimizer and scheduler steps and after the timestamp has advanced.</summary>
    BatchEnd,
    /// <summary>After <see cref="BatchEnd"/> and any evaluation; checkpoints are saved here.</summary>
    BatchCheckpoint,
    /// <summary>At the end of each epoch.</summary>
    EpochEnd,
    /// <summary>After <see cref="EpochEnd"/> and any evaluation; checkpoints are saved here.</summary>
    EpochCheckpoint,
    /// <summary>At the end of an iteration: after the EpochCheckpoint of the epoch that completes <see cref="State.IterationLength"/> (not raised without one).</summary>
    IterationEnd,
    /// <summary>After <see cref="IterationEnd"/>; checkpoints may be saved here.</summary>
    IterationCheckpoint,
    /// <summary>At the end of <c>Fit</c>.</summary>
    FitEnd,
    /// <summary>Before any evaluation dataloader is run.</summary>
    EvalBeforeAll,
    /// <summary>At the start of evaluating one dataloader.</summary>
    EvalStart,
    /// <summary>At the start of each evaluation batch.</summary>
    EvalBatchStart,
    /// <summary>Before the forward pass of an evaluation batch.</summary>
    EvalBeforeForward,
    /// <summary>After the forward pass of an evaluation batch.</summary>
    EvalAfterForward,
    /// <summary>At the end of each evaluation batch.</summary>
    EvalBatchEnd,
    /// <summary>At the end of evaluating one dataloader.</summary>
    EvalEnd,
    /// <summary>After every evaluation dataloader has been run.</summary>
    EvalAfterAll,
    /// <summary>At the start of <c>Trainer.Eval()</c> called outside of <c>Fit</c>.</summary>
    EvalStandaloneStart,
    /// <summary>At the end of <c>Trainer.Eval()</c> called outside of <c>Fit</c>.</summary>
    EvalStandaloneEnd,
    /// <summary>At the start of <c>Predict</c>.</summary>
    PredictStart,
    /// <summary>At the start of each prediction batch.</summary>
    PredictBatchStart,
    /// <summary>Before the forward pass of a prediction batch.</summary>
    PredictBeforeForward,
    /// <summary>After the forward pass of a prediction batch.</summary>
    PredictAfterForward,
    /// <summary>At the end of each prediction batch.</summary>
    PredictBatchEnd,
    /// <summary>At the end of <c>Predict</c>.</summary>
    PredictEnd,
}

/// <summary>Classification and naming of <see cref="Event"/> values, following Composer's <c>Event</c> properties.</summary>
public static class EventExtensions
{
    private static readonly string[] Names = BuildNames();

    private static readonly HashSet<Event> BeforeEvents = new()
    {
        Event.BeforeLoad, Event.FitStart, Event.IterationStart, Event.EpochStart, Event.BeforeDataloader,
        Event.BatchStart, Event.BeforeTrainBatch, Event.BeforeForward, Event.BeforeLoss, Event.BeforeBackward,
        Event.EvalBeforeAll, Event.EvalStart, Event.EvalBatchStart, Event.EvalBeforeForward,
        Event.EvalStandaloneStart, Event.PredictStart, Event.PredictBatchStart, Event.PredictBeforeForward,
    };

    private static readonly HashSet<Event> AfterEvents = new()
    {
        Event.AfterLoad, Event.FitEnd, Event.IterationEnd, Event.EpochEnd, Event.AfterDataloader,
        Event.BatchEnd, Event.AfterTrainBatch, Event.AfterForward, Event.AfterLoss, Event.AfterBackward,
        Event.EvalAfterAll, Event.EvalEnd, Event.EvalBatchEnd, Event.EvalAfterForward,
        Event.EvalStandaloneEnd, Event.PredictEnd, Event.PredictBatchEnd, Event.PredictAfterForward,
    };

    /// <summary>All 40 events in Composer's order.</summary>
    public static IReadOnlyList<Event> All { get; } = Enum.GetValues<Event>();

    /// <summary>Composer's snake_case name of the event, e.g. <c>before_forward</c> for <see cref="Event.BeforeForward"/>.</summary>
    public static string ToComposerName(this Event e) => Names[(int)e];

    /// <summary>True for events that open a phase (Composer's <c>is_before_event</c>), e.g. FitStart, BeforeForward.</summary>
    public static bool IsBeforeEvent(this Event e) => BeforeEvents.Contains(e);

    /// <summary>True for events that close a phase (Composer's <c>is_after_event</c>), e.g. FitEnd, AfterForward.</summary>
    public static bool IsAfterEvent(this Event e) => AfterEvents.Contains(e);

    /// <summary>True for the evaluation events (names starting with <c>eval_</c>), standalone ones included.</summary>
    public static bool IsEval(this Event e) => Names[(int)e].StartsWith("eval_", StringComparison.Ordinal);

    /// <summary>True for the six prediction events (names starting with <c>predict_</c>).</summary>
    public static bool IsPredict(this Event e) => Names[(int)e].StartsWith("predict_", StringComparison.Ordinal);

    /// <summary>
    /// The name without its before/after/start/end markers, shared by the two events of a pair (Composer's
    /// <c>canonical_name</c>): <c>epoch</c> for EpochStart and EpochEnd, <c>forward</c> for BeforeForward and AfterForward.
    /// </summary>
    public static string CanonicalName(this Event e) => Names[(int)e]
        .Replace("before_", string.Empty, StringComparison.Ordinal)
        .Replace("after_", string.Empty, StringComparison.Ordinal)
        .Replace("_start", string.Empty, StringComparison.Ordinal)
        .Replace("_end", string.Empty, StringComparison.Ordinal);

    /// <summary>
    /// Parses an event name, case-insensitively, either as Composer's snake_case value (<c>before_forward</c>,
    /// which also covers Composer's member name <c>BEFORE_FORWARD</c>) or as the C# member name (<c>BeforeForward</c>).
    /// Surrounding white space is ignored.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="name"/> is null.</exception>
    /// <exception cref="FormatException">The name matches no event; the message quotes it and lists the accepted names.</exception>
    public static Event Parse(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (TryParse(name, out Event e))
        {
            return e;
        }

        throw new FormatException($"'{name}' is not an event name; expected one of: {string.Join(", ", Names)}.");
    }

    /// <summary>Non-throwing form of <see cref="Parse"/>.</summary>
    public static bool TryParse(string? name, out Event e)
    {
        e = default;
        if (string.IsNullOrWhiteSpace(name))
        {
            return false;
        }

        string key = name.Trim();
        foreach (Event candidate in All)
        {
            if (string.Equals(Names[(int)candidate], key, StringComparison.OrdinalIgnoreCase) ||
                string.Equals(candidate.ToString(), key, StringComparison.OrdinalIgnoreCase))
            {
                e = candidate;
                return true;
            }
        }

        return false;
    }

    private static string[] BuildNames()
    {
        Event[] values = Enum.GetValues<Event>();
        var names = new string[values.Length];
        foreach (Event v in values)
        {
            var sb = new System.Text.StringBuilder();
            string s = v.ToString();
            for (int i = 0; i < s.Length; i++)
            {
                if (char.IsUpper(s[i]) && i > 0)
                {
                    sb.Append('_');
                }

                sb.Append(char.ToLowerInvariant(s[i]));
            }

            names[(int)v] = sb.ToString();
        }

        return names;
    }
}
