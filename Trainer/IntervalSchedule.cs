using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training;

/// <summary>
/// Decides at which events a periodic action (evaluation, checkpointing) is due, with the rule of Composer's
/// <c>create_interval_scheduler</c> (composer/utils/misc.py): an interval in <c>ep</c> is checked at the epoch event,
/// one in <c>ba</c>, <c>sp</c>, <c>tok</c> or <c>dur</c> at the batch event; it is due when the counter crossed a
/// multiple of the interval between <see cref="State.PreviousTimestamp"/> and <see cref="State.Timestamp"/>. With
/// <c>includeEndOfTraining</c> it is also due at a final event once the whole max duration has elapsed, unless it
/// already ran at this batch. An interval of 0 (e.g. <c>0ep</c>) is never due.
/// </summary>
/// <remarks>
/// For evaluation the interval events are BatchEnd/EpochEnd and the final event is FitEnd; for checkpoints they are
/// BatchCheckpoint/EpochCheckpoint, which are also the final events. The instance remembers the last batch at which
/// it fired, so use one instance per consumer.
/// </remarks>
public sealed class IntervalSchedule
{
    private readonly bool _includeEndOfTraining;
    private readonly IReadOnlySet<Event> _finalEvents;
    private readonly Event _intervalEvent;
    private long _lastBatchSeen = -1;

    /// <summary>Creates a schedule.</summary>
    /// <param name="interval">The period, in <c>ep</c>, <c>ba</c>, <c>sp</c>, <c>tok</c> or <c>dur</c> (a fraction of the max duration).</param>
    /// <param name="checkpointEvents">True to use BatchCheckpoint/EpochCheckpoint as interval events, false for BatchEnd/EpochEnd.</param>
    /// <param name="finalEvents">Events at which the end of training triggers; BatchCheckpoint and EpochCheckpoint when null.</param>
    /// <param name="includeEndOfTraining">Also due at a final event once the max duration has elapsed.</param>
    /// <exception cref="ArgumentException">The interval is in <c>iter</c> or <c>sec</c>, which this schedule does not support.</exception>
    public IntervalSchedule(Time interval, bool checkpointEvents = true, IEnumerable<Event>? finalEvents = null, bool includeEndOfTraining = true)
    {
        Interval = interval;
        _includeEndOfTraining = includeEndOfTraining;
        _finalEvents = new HashSet<Event>(finalEvents ?? new[] { Event.BatchCheckpoint, Event.EpochCheckpoint });
        _intervalEvent = interval.Unit switch
        {
            TimeUnit.Epoch => checkpointEvents ? Event.EpochCheckpoint : Event.EpochEnd,
            TimeUnit.Batch or TimeUnit.Sample or TimeUnit.Token or TimeUnit.Duration => checkpointEvents ? Event.BatchCheckpoint : Event.BatchEnd,
            _ => throw new ArgumentException(
                $"Interval '{interval}' is not supported; use 'ep', 'ba', 'sp', 'tok' or 'dur' (e.g. \"1ep\", \"100ba\", \"0.25dur\").", nameof(interval)),
        };
    }

    /// <summary>The period.</summary>
    public Time Interval { get; }

    /// <summary>Whether the action is due at <paramref name="e"/>.</summary>
    /// <exception cref="InvalidOperationException">A <c>dur</c> interval with no max duration or a training dataloader of unknown length.</exception>
    public bool IsDue(State state, Event e)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (Interval.Value <= 0)
        {
            return false;
        }

        if (state.PreviousTimestamp is not { } previous)
        {
            return false;
        }

        Time? elapsed = state.ElapsedDuration;
        if (_includeEndOfTraining && _finalEvents.Contains(e) && elapsed is { } el && el.Value >= 1.0 && state.Timestamp.Batch != _lastBatchSeen)
        {
            return true;
        }

        if (e != _intervalEvent)
        {
            return false;
        }

        if (Interval.Unit != TimeUnit.Duration)
        {
            double before = previous.Get(Interval.Unit).Value;
            double now = state.Timestamp.Get(Interval.Unit).Value;
            if (Math.Floor(before / Interval.Value) != Math.Floor(now / Interval.Value))
            {
                _lastBatchSeen = state.Timestamp.Batch;
                return true;
            }

            return false;
        }

        Time max = state.MaxDuration
            ?? throw new InvalidOperationException($"Interval '{Interval}' is a fraction of the max duration, but no max duration is set.");
        bool due;
        switch (max.Unit)
        {
            case TimeUnit.Epoch:
                long batchesPerEpoch = state.TrainDataloader?.BatchesPerEpoch
                    ?? throw new InvalidOperationException($"Interval '{Interval}' needs a training dataloader of known length when the max duration is in epochs.");
                long every = (long)Math.Ceiling(max.Value * Interval.Value * batchesPerEpoch);
                due = every > 0 && state.Timestamp.Batch % every == 0;
                break;
            case TimeUnit.Batch:
                long everyBatch = (long)Math.Ceiling(max.Value * Interval.Value);
                due = everyBatch > 0 && state.Timestamp.Batch % everyBatch == 0;
                break;
            default:
                double per = Math.Ceiling(max.Value * Interval.Value);
                double prev = previous.Get(max.Unit).Value;
                double cur = state.Timestamp.Get(max.Unit).Value;
                due = per > 0 && Math.Floor(prev / per) != Math.Floor(cur / per);
                break;
        }

        if (due)
        {
            _lastBatchSeen = state.Timestamp.Batch;
        }

        return due;
    }
}
