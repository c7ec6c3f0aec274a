namespace ComposerSharp.Core;

/// <summary>
/// Where a training run is: counters of iterations, epochs, batches, samples and tokens, in total and within the
/// current epoch/iteration, and wall-clock totals. Immutable; the Trainer replaces <see cref="State.Timestamp"/>
/// with <see cref="ToNextBatch"/> after each optimizer step (before BatchEnd) and <see cref="ToNextEpoch"/> at the
/// end of each epoch. Mirrors Composer's <c>composer.core.Timestamp</c> (composer/core/time.py).
/// </summary>
public sealed record Timestamp
{
    /// <summary>Completed iterations.</summary>
    public long Iteration { get; init; }

    /// <summary>Completed epochs.</summary>
    public long Epoch { get; init; }

    /// <summary>Completed batches (optimizer steps).</summary>
    public long Batch { get; init; }

    /// <summary>Samples trained on.</summary>
    public long Sample { get; init; }

    /// <summary>Tokens trained on.</summary>
    public long Token { get; init; }

    /// <summary>Completed epochs in the current iteration.</summary>
    public long EpochInIteration { get; init; }

    /// <summary>Tokens trained on in the current iteration.</summary>
    public long TokenInIteration { get; init; }

    /// <summary>Completed batches in the current epoch.</summary>
    public long BatchInEpoch { get; init; }

    /// <summary>Samples trained on in the current epoch.</summary>
    public long SampleInEpoch { get; init; }

    /// <summary>Tokens trained on in the current epoch.</summary>
    public long TokenInEpoch { get; init; }

    /// <summary>Wall-clock time spent training, summed over batches.</summary>
    public TimeSpan TotalWallClock { get; init; }

    /// <summary>Wall-clock time of the current iteration.</summary>
    public TimeSpan IterationWallClock { get; init; }

    /// <summary>Wall-clock time of the current epoch.</summary>
    public TimeSpan EpochWallClock { get; init; }

    /// <summary>Wall-clock time of the last batch.</summary>
    public TimeSpan BatchWallClock { get; init; }

    /// <summary>
    /// The timestamp after one more batch of <paramref name="samples"/> samples and <paramref name="tokens"/> tokens
    /// that took <paramref name="duration"/> (Composer's <c>to_next_batch</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A count or the duration is negative.</exception>
    public Timestamp ToNextBatch(long samples = 0, long tokens = 0, TimeSpan duration = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(samples);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        CheckDuration(duration);

        return this with
        {
            Batch = Batch + 1,
            BatchInEpoch = BatchInEpoch + 1,
            Sample = Sample + samples,
            SampleInEpoch = SampleInEpoch + samples,
            Token = Token + tokens,
            TokenInEpoch = TokenInEpoch + tokens,
            TokenInIteration = TokenInIteration + tokens,
            TotalWallClock = TotalWallClock + duration,
            IterationWallClock = IterationWallClock + duration,
            EpochWallClock = EpochWallClock + duration,
            BatchWallClock = duration,
        };
    }

    /// <summary>
    /// The timestamp at the start of the next epoch: epoch counters advance, the in-epoch counters and the epoch
    /// and batch wall clocks reset, and <paramref name="duration"/> (time spent after the last batch, e.g. on
    /// epoch-end evaluation; zero by default) is added to the total and iteration wall clocks (Composer's
    /// <c>to_next_epoch(duration)</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="duration"/> is negative.</exception>
    public Timestamp ToNextEpoch(TimeSpan duration = default)
    {
        CheckDuration(duration);
        return this with
        {
            Epoch = Epoch + 1,
            EpochInIteration = EpochInIteration + 1,
            BatchInEpoch = 0,
            SampleInEpoch = 0,
            TokenInEpoch = 0,
            TotalWallClock = TotalWallClock + duration,
            IterationWallClock = IterationWallClock + duration,
            EpochWallClock = TimeSpan.Zero,
            BatchWallClock = TimeSpan.Zero,
        };
    }

    /// <summary>
    /// The timestamp at the start of the next iteration: the iteration counter advances; the in-iteration and
    /// in-epoch counters and the iteration, epoch and batch wall clocks reset; <paramref name="duration"/> (zero by
    /// default) is added to the total wall clock (Composer's <c>to_next_iteration(duration)</c>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="duration"/> is negative.</exception>
    public Timestamp ToNextIteration(TimeSpan duration = default)
    {
        CheckDuration(duration);
        return this with
        {
            Iteration = Iteration + 1,
            EpochInIteration = 0,
            TokenInIteration = 0,
            BatchInEpoch = 0,
            SampleInEpoch = 0,
            TokenInEpoch = 0,
            TotalWallClock = TotalWallClock + duration,
            IterationWallClock = TimeSpan.Zero,
            EpochWallClock = TimeSpan.Zero,
            BatchWallClock = TimeSpan.Zero,
        };
    }

    /// <summary>The counter for <paramref name="unit"/> as a <see cref="Time"/>; seconds are whole seconds of <see cref="TotalWallClock"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="unit"/> is <see cref="TimeUnit.Duration"/>, which needs the max duration (see <see cref="State.ElapsedDuration"/>).</exception>
    public Time Get(TimeUnit unit) => unit switch
    {
        TimeUnit.Iteration => Time.FromIteration(Iteration),
        TimeUnit.Epoch => Time.FromEpoch(Epoch),
        TimeUnit.Batch => Time.FromBatch(Batch),
        TimeUnit.Sample => Time.FromSample(Sample),
        TimeUnit.Token => Time.FromToken(Token),
        TimeUnit.Second => Time.FromSecond((long)TotalWallClock.TotalSeconds),
        _ => throw new ArgumentException($"A timestamp has no '{unit.Suffix()}' counter; a duration fraction needs the max duration (State.ElapsedDuration).", nameof(unit)),
    };

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit equals <paramref name="t"/> (Composer's <c>timestamp == time</c>).</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator ==(Timestamp ts, Time t) => ts.Get(t.Unit) == t;

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit differs from <paramref name="t"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator !=(Timestamp ts, Time t) => ts.Get(t.Unit) != t;

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit has reached <paramref name="t"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator >=(Timestamp ts, Time t) => ts.Get(t.Unit) >= t;

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit has not reached <paramref name="t"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator <(Timestamp ts, Time t) => ts.Get(t.Unit) < t;

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit is past <paramref name="t"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator >(Timestamp ts, Time t) => ts.Get(t.Unit) > t;

    /// <summary>True when this timestamp's counter in <paramref name="t"/>'s unit is at most <paramref name="t"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="t"/> is in <c>dur</c>.</exception>
    public static bool operator <=(Timestamp ts, Time t) => ts.Get(t.Unit) <= t;

    private static void CheckDuration(TimeSpan duration)
    {
        if (duration < TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(duration), duration, "Wall-clock time cannot be negative.");
        }
    }
}
