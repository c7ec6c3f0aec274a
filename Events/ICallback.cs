using ComposerSharp.Core;

namespace ComposerSharp.Events;

/// <summary>
/// A callback observes training without changing it (Composer's <c>composer.core.Callback</c>,
/// composer/core/callback.py): the <see cref="Engine"/> calls <see cref="RunEvent"/> at every event, after the
/// algorithms (before them at <see cref="Event.Init"/>). Implement this interface directly to handle every event in
/// one method, or derive from <see cref="Callback"/> and override one method per event.
/// </summary>
public interface ICallback
{
    /// <summary>Handles <paramref name="e"/>.</summary>
    void RunEvent(Event e, State state, Logger logger);

    /// <summary>Called once when the Trainer closes (flush files, release handles). Must be safe to call after a failure.</summary>
    void Close(State state, Logger logger);
}

/// <summary>
/// A callback whose state is saved in checkpoints and restored on resume (Composer's callback
/// <c>state_dict</c>/<c>load_state_dict</c>). Values must be JSON-serialisable (numbers, strings, bools, lists, dictionaries).
/// </summary>
public interface IStatefulCallback : ICallback
{
    /// <summary>A key unique among the Trainer's callbacks under which the state is stored; the type name by default.</summary>
    string StateKey => GetType().FullName ?? GetType().Name;

    /// <summary>The state to store.</summary>
    IReadOnlyDictionary<string, object?> StateDict();

    /// <summary>Restores what <see cref="StateDict"/> returned (after a JSON round trip: numbers arrive as <c>double</c> or <c>long</c>).</summary>
    /// <exception cref="ArgumentException">The state is not one this callback wrote.</exception>
    void LoadStateDict(IReadOnlyDictionary<string, object?> state);
}

/// <summary>Base class for callbacks with one overridable method per <see cref="Event"/>, all no-ops by default.</summary>
public abstract class Callback : ICallback
{
    /// <summary>Dispatches <paramref name="e"/> to the method of the same name.</summary>
    public virtual void RunEvent(Event e, State state, Logger logger)
    {
        switch (e)
        {
            case Event.Init: Init(state, logger); break;
            case Event.BeforeLoad: BeforeLoad(state, logger); break;
            case Event.AfterLoad: AfterLoad(state, logger); break;
            case Event.FitStart: FitStart(state, logger); break;
            case Event.IterationStart: IterationStart(state, logger); break;
            case Event.EpochStart: EpochStart(state, logger); break;
            case Event.BeforeDataloader: BeforeDataloader(state, logger); break;
            case Event.AfterDataloader: AfterDataloader(state, logger); break;
            case Event.BatchStart: BatchStart(state, logger); break;
            case Event.BeforeTrainBatch: BeforeTrainBatch(state, logger); break;
            case Event.BeforeForward: BeforeForward(state, logger); break;
            case Event.AfterForward: AfterForward(state, logger); break;
            case Event.BeforeLoss: BeforeLoss(state, logger); break;
            case Event.AfterLoss: AfterLoss(state, logger); break;
            case Event.BeforeBackward: BeforeBackward(state, logger); break;
            case Event.AfterBackward: AfterBackward(state, logger); break;
            case Event.AfterTrainBatch: AfterTrainBatch(state, logger); break;
            case Event.BatchEnd: BatchEnd(state, logger); break;
            case Event.BatchCheckpoint: BatchCheckpoint(state, logger); break;
            case Event.EpochEnd: EpochEnd(state, logger); break;
            case Event.EpochCheckpoint: EpochCheckpoint(state, logger); break;
            case Event.IterationEnd: IterationEnd(state, logger); break;
            case Event.IterationCheckpoint: IterationCheckpoint(state, logger); break;
            case Event.FitEnd: FitEnd(state, logger); break;
            case Event.EvalBeforeAll: EvalBeforeAll(state, logger); break;
            case Event.EvalStart: EvalStart(state, logger); break;
            case Event.EvalBatchStart: EvalBatchStart(state, logger); break;
            case Event.EvalBeforeForward: EvalBeforeForward(state, logger); break;
            case Event.EvalAfterForward: EvalAfterForward(state, logger); break;
            case Event.EvalBatchEnd: EvalBatchEnd(state, logger); break;
            case Event.EvalEnd: EvalEnd(state, logger); break;
            case Event.EvalAfterAll: EvalAfterAll(state, logger); break;
            case Event.EvalStandaloneStart: EvalStandaloneStart(state, logger); break;
            case Event.EvalStandaloneEnd: EvalStandaloneEnd(state, logger); break;
            case Event.PredictStart: PredictStart(state, logger); break;
            case Event.PredictBatchStart: PredictBatchStart(state, logger); break;
            case Event.PredictBeforeForward: PredictBeforeForward(state, logger); break;
            case Event.PredictAfterForward: PredictAfterForward(state, logger); break;
            case Event.PredictBatchEnd: PredictBatchEnd(state, logger); break;
            case Event.PredictEnd: PredictEnd(state, logger); break;
            default: throw new ArgumentOutOfRangeException(nameof(e), e, "Unknown event.");
        }
    }

    /// <inheritdoc/>
    public virtual void Close(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.Init"/>.</summary>
    public virtual void Init(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeLoad"/>.</summary>
    public virtual void BeforeLoad(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterLoad"/>.</summary>
    public virtual void AfterLoad(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.FitStart"/>.</summary>
    public virtual void FitStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.IterationStart"/>.</summary>
    public virtual void IterationStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EpochStart"/>.</summary>
    public virtual void EpochStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeDataloader"/>.</summary>
    public virtual void BeforeDataloader(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterDataloader"/>.</summary>
    public virtual void AfterDataloader(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BatchStart"/>.</summary>
    public virtual void BatchStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeTrainBatch"/>.</summary>
    public virtual void BeforeTrainBatch(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeForward"/>.</summary>
    public virtual void BeforeForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterForward"/>.</summary>
    public virtual void AfterForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeLoss"/>.</summary>
    public virtual void BeforeLoss(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterLoss"/>.</summary>
    public virtual void AfterLoss(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BeforeBackward"/>.</summary>
    public virtual void BeforeBackward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterBackward"/>.</summary>
    public virtual void AfterBackward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.AfterTrainBatch"/>.</summary>
    public virtual void AfterTrainBatch(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BatchEnd"/>.</summary>
    public virtual void BatchEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.BatchCheckpoint"/>.</summary>
    public virtual void BatchCheckpoint(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EpochEnd"/>.</summary>
    public virtual void EpochEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EpochCheckpoint"/>.</summary>
    public virtual void EpochCheckpoint(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.IterationEnd"/>.</summary>
    public virtual void IterationEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.IterationCheckpoint"/>.</summary>
    public virtual void IterationCheckpoint(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.FitEnd"/>.</summary>
    public virtual void FitEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalBeforeAll"/>.</summary>
    public virtual void EvalBeforeAll(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalStart"/>.</summary>
    public virtual void EvalStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalBatchStart"/>.</summary>
    public virtual void EvalBatchStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalBeforeForward"/>.</summary>
    public virtual void EvalBeforeForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalAfterForward"/>.</summary>
    public virtual void EvalAfterForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalBatchEnd"/>.</summary>
    public virtual void EvalBatchEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalEnd"/>.</summary>
    public virtual void EvalEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalAfterAll"/>.</summary>
    public virtual void EvalAfterAll(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalStandaloneStart"/>.</summary>
    public virtual void EvalStandaloneStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.EvalStandaloneEnd"/>.</summary>
    public virtual void EvalStandaloneEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictStart"/>.</summary>
    public virtual void PredictStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictBatchStart"/>.</summary>
    public virtual void PredictBatchStart(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictBeforeForward"/>.</summary>
    public virtual void PredictBeforeForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictAfterForward"/>.</summary>
    public virtual void PredictAfterForward(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictBatchEnd"/>.</summary>
    public virtual void PredictBatchEnd(State state, Logger logger)
    {
    }

    /// <summary>Called at <see cref="Event.PredictEnd"/>.</summary>
    public virtual void PredictEnd(State state, Logger logger)
    {
    }
}
