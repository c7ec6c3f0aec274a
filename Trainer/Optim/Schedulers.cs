using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Optim;

/// <summary>
/// Conversion of a scheduler's <see cref="Time"/> lengths into counts the timestamp can be compared with, as in
/// Composer's <c>_convert_time</c> (composer/optim/scheduler.py): <c>ep</c> becomes batches through the training
/// dataloader's length; <c>dur</c> becomes a fraction of the max duration (in batches when the max duration is in
/// epochs); <c>ba</c>, <c>sp</c> and <c>tok</c> stay as they are; <c>sec</c> is refused.
/// </summary>
public static class SchedulerTime
{
    /// <summary>Converts <paramref name="time"/> for <paramref name="state"/>.</summary>
    /// <exception cref="ArgumentException"><paramref name="time"/> is in <c>sec</c> or <c>iter</c>.</exception>
    /// <exception cref="InvalidOperationException">No max duration is set, or an <c>ep</c>/<c>dur</c> conversion needs the training dataloader's length and it is unknown.</exception>
    public static Time Convert(Time time, State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (time.Unit is TimeUnit.Second or TimeUnit.Iteration)
        {
            throw new ArgumentException($"Scheduler time '{time}' is not allowed; use 'ba', 'sp', 'tok', 'ep' or 'dur'.", nameof(time));
        }

        Time max = state.MaxDuration
            ?? throw new InvalidOperationException("Schedulers need the max duration (State.MaxDuration), and it is not set.");
        if (time.Unit == TimeUnit.Duration)
        {
            if (max.Unit == TimeUnit.Epoch)
            {
                return Time.FromBatch((long)(time.Value * BatchesPerEpoch(state, time) * max.Value));
            }

            return new Time(Math.Floor(time.Value * max.Value), max.Unit);
        }

        if (time.Unit == TimeUnit.Epoch)
        {
            return Time.FromBatch((long)time.Value * BatchesPerEpoch(state, time));
        }

        return time;
    }

    private static long BatchesPerEpoch(State state, Time time) =>
        state.TrainDataloader?.BatchesPerEpoch
        ?? throw new InvalidOperationException($"Scheduler time '{time}' needs the training dataloader's length (batches per epoch), which is unknown.");

    /// <summary>The state's counter in <paramref name="unit"/> as a double.</summary>
    internal static double Now(State state, TimeUnit unit) => state.Timestamp.Get(unit).Value;

    /// <summary>
    /// Where a warmup-then-decay schedule stands: during warmup, the fraction t / t_warmup of the warmup done;
    /// afterwards, the fraction min(1, (t − t_warmup) / (t_max − t_warmup)) of the decay done (0 when
    /// t_max ≤ t_warmup, so a warmup as long as the run never divides by zero).
    /// </summary>
    /// <exception cref="InvalidOperationException">The warmup and t_max convert to different units (Composer's rule).</exception>
    internal static (bool InWarmup, double Fraction) WarmupProgress(Time tWarmup, Time tMax, State state)
    {
        Time warmup = Convert(tWarmup, state);
        Time max = Convert(tMax, state);
        if (warmup.Unit != max.Unit)
        {
            throw new InvalidOperationException(
                $"Warmup {warmup} and t_max {max} are in different units ({warmup.Unit.Suffix()} vs {max.Unit.Suffix()}); give them in the same unit.");
        }

        double now = Now(state, warmup.Unit);
        if (now < warmup.Value)
        {
            return (true, now / warmup.Value);
        }

        return (false, max.Value > warmup.Value ? Math.Min(1.0, (now - warmup.Value) / (max.Value - warmup.Value)) : 0.0);
    }

    /// <summary>Composer's cosine annealing from 1 (x = 0) to <paramref name="minY"/> (x = 1).</summary>
    internal static double CosineAnneal(double x, double minY) => minY + (1 - minY) * (1 + Math.Cos(x * Math.PI)) / 2;
}

/// <summary>
/// Multiplies the learning rate by <see cref="Alpha"/> until <see cref="TMax"/>, then by 1 (Composer's
/// <c>ConstantScheduler</c>). Factor = α while t &lt; t_max, else 1.
/// </summary>
public sealed class ConstantScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="alpha">Multiplier while t &lt; t_max (≥ 0).</param>
    /// <param name="tMax">How long α applies; the whole run (<c>1dur</c>) by default.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alpha"/> is negative or not finite.</exception>
    public ConstantScheduler(double alpha = 1.0, Time? tMax = null)
    {
        Alpha = CheckFactor(alpha, nameof(alpha));
        TMax = tMax ?? Time.FromDuration(1);
    }

    /// <summary>Multiplier while t &lt; t_max.</summary>
    public double Alpha { get; }

    /// <summary>How long α applies.</summary>
    public Time TMax { get; }

    /// <inheritdoc/>
    public double Factor(State state)
    {
        Time tMax = SchedulerTime.Convert(TMax, state);
        return state.Timestamp < tMax ? Alpha : 1.0;
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"ConstantScheduler(alpha={Alpha}, t_max={TMax})");

    internal static double CheckFactor(double value, string name)
    {
        if (!double.IsFinite(value) || value < 0)
        {
            throw new ArgumentOutOfRangeException(name, value, $"'{name}' must be a finite number ≥ 0.");
        }

        return value;
    }
}

/// <summary>
/// Decays the learning rate by <see cref="Gamma"/> every <see cref="StepSize"/> (Composer's <c>StepScheduler</c>,
/// PyTorch's <c>StepLR</c>): factor = γ^floor(t / step_size), counted over the whole run (not per epoch). With step
/// <c>4ba</c> and γ = 0.5 the batches 0…5 get 1, 1, 1, 1, 0.5, 0.5.
/// </summary>
public sealed class StepScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="stepSize">Period of the decay (&gt; 0).</param>
    /// <param name="gamma">Multiplier per period (≥ 0).</param>
    /// <exception cref="ArgumentOutOfRangeException">A zero step size or a negative gamma.</exception>
    public StepScheduler(Time stepSize, double gamma = 0.1)
    {
        if (stepSize.Value <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(stepSize), stepSize.ToString(), "The step size must be greater than zero.");
        }

        StepSize = stepSize;
        Gamma = ConstantScheduler.CheckFactor(gamma, nameof(gamma));
    }

    /// <summary>Period of the decay.</summary>
    public Time StepSize { get; }

    /// <summary>Multiplier per period.</summary>
    public double Gamma { get; }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">The step size converts to zero (e.g. <c>0.01dur</c> of a short run).</exception>
    public double Factor(State state)
    {
        Time step = SchedulerTime.Convert(StepSize, state);
        if (step.Value <= 0)
        {
            throw new InvalidOperationException($"Step size {StepSize} converts to {step} for max duration {state.MaxDuration}; it must be at least one unit.");
        }

        double steps = Math.Floor(SchedulerTime.Now(state, step.Unit) / step.Value);
        return Math.Pow(Gamma, steps);
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"StepScheduler(step_size={StepSize}, gamma={Gamma})");
}

/// <summary>
/// Multiplies the learning rate by <see cref="Gamma"/> at each milestone (Composer's <c>MultiStepScheduler</c>,
/// PyTorch's <c>MultiStepLR</c>): factor = γ^(number of milestones reached).
/// </summary>
public sealed class MultiStepScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="milestones">Times at which the rate is multiplied by γ (at least one).</param>
    /// <param name="gamma">Multiplier per milestone (≥ 0).</param>
    /// <exception cref="ArgumentException">No milestones.</exception>
    public MultiStepScheduler(IEnumerable<Time> milestones, double gamma = 0.1)
    {
        ArgumentNullException.ThrowIfNull(milestones);
        Milestones = milestones.ToArray();
        if (Milestones.Count == 0)
        {
            throw new ArgumentException("A multi-step schedule needs at least one milestone.", nameof(milestones));
        }

        Gamma = ConstantScheduler.CheckFactor(gamma, nameof(gamma));
    }

    /// <summary>The milestones.</summary>
    public IReadOnlyList<Time> Milestones { get; }

    /// <summary>Multiplier per milestone.</summary>
    public double Gamma { get; }

    /// <inheritdoc/>
    public double Factor(State state)
    {
        double factor = 1.0;
        foreach (Time milestone in Milestones)
        {
            if (state.Timestamp >= SchedulerTime.Convert(milestone, state))
            {
                factor *= Gamma;
            }
        }

        return factor;
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"MultiStepScheduler(milestones=[{string.Join(", ", Milestones)}], gamma={Gamma})");
}

/// <summary>
/// Linear warmup from 0 to <see cref="AlphaI"/> over <see cref="TWarmup"/>, then linear change to
/// <see cref="AlphaF"/> at <see cref="TMax"/> (Composer's <c>LinearWithWarmupScheduler</c>; the warmup of Goyal et al.,
/// "Accurate, Large Minibatch SGD", 2017). During warmup factor = α_i · t / t_warmup; afterwards
/// factor = α_i + (α_f − α_i) · min(1, (t − t_warmup) / (t_max − t_warmup)), and α_i when t_max ≤ t_warmup, so a
/// warmup as long as the run never divides by zero: warmup <c>10ba</c> with max duration <c>10ba</c> gives
/// 0, 0.1, …, 0.9 for batches 0…9.
/// </summary>
public sealed class LinearWithWarmupScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="tWarmup">Warmup length (in <c>ba</c>, <c>sp</c>, <c>tok</c>, <c>ep</c> or <c>dur</c>).</param>
    /// <param name="alphaI">Factor at the end of warmup.</param>
    /// <param name="alphaF">Factor at <paramref name="tMax"/>.</param>
    /// <param name="tMax">End of the linear phase; the whole run (<c>1dur</c>) by default.</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative or non-finite factor.</exception>
    public LinearWithWarmupScheduler(Time tWarmup, double alphaI = 1.0, double alphaF = 0.0, Time? tMax = null)
    {
        TWarmup = tWarmup;
        AlphaI = ConstantScheduler.CheckFactor(alphaI, nameof(alphaI));
        AlphaF = ConstantScheduler.CheckFactor(alphaF, nameof(alphaF));
        TMax = tMax ?? Time.FromDuration(1);
    }

    /// <summary>Warmup length.</summary>
    public Time TWarmup { get; }

    /// <summary>Factor at the end of warmup.</summary>
    public double AlphaI { get; }

    /// <summary>Factor at <see cref="TMax"/>.</summary>
    public double AlphaF { get; }

    /// <summary>End of the linear phase.</summary>
    public Time TMax { get; }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">Warmup and t_max convert to different units.</exception>
    public double Factor(State state)
    {
        (bool inWarmup, double fraction) = SchedulerTime.WarmupProgress(TWarmup, TMax, state);
        return inWarmup ? AlphaI * fraction : AlphaI + fraction * (AlphaF - AlphaI);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"LinearWithWarmupScheduler(t_warmup={TWarmup}, alpha_i={AlphaI}, alpha_f={AlphaF}, t_max={TMax})");
}

/// <summary>
/// Linear warmup from 0 to 1 over <see cref="TWarmup"/>, then cosine decay to <see cref="AlphaF"/> at
/// <see cref="TMax"/> (Composer's <c>CosineAnnealingWithWarmupScheduler</c>; cosine annealing from Loshchilov and
/// Hutter, "SGDR", ICLR 2017). After warmup, factor = α_f + (1 − α_f) · (1 + cos(π · x)) / 2 with
/// x = min(1, (t − t_warmup) / (t_max − t_warmup)) (x = 0 when t_max ≤ t_warmup).
/// </summary>
public sealed class CosineAnnealingWithWarmupScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="tWarmup">Warmup length.</param>
    /// <param name="tMax">End of the decay; the whole run (<c>1dur</c>) by default.</param>
    /// <param name="alphaF">Final factor.</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative or non-finite factor.</exception>
    public CosineAnnealingWithWarmupScheduler(Time tWarmup, Time? tMax = null, double alphaF = 0.0)
    {
        TWarmup = tWarmup;
        TMax = tMax ?? Time.FromDuration(1);
        AlphaF = ConstantScheduler.CheckFactor(alphaF, nameof(alphaF));
    }

    /// <summary>Warmup length.</summary>
    public Time TWarmup { get; }

    /// <summary>End of the decay.</summary>
    public Time TMax { get; }

    /// <summary>Final factor.</summary>
    public double AlphaF { get; }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">Warmup and t_max convert to different units.</exception>
    public double Factor(State state)
    {
        (bool inWarmup, double fraction) = SchedulerTime.WarmupProgress(TWarmup, TMax, state);
        return inWarmup ? fraction : SchedulerTime.CosineAnneal(fraction, AlphaF);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"CosineAnnealingWithWarmupScheduler(t_warmup={TWarmup}, t_max={TMax}, alpha_f={AlphaF})");
}
