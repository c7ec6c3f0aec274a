using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Optim;

/// <summary>
/// Composer's <c>LinearScheduler</c> (composer/optim/scheduler.py), YAML <c>linear_decay</c>: the factor goes linearly
/// from <c>alpha_i</c> to <c>alpha_f</c> over <c>t_max</c>, <c>α_i + (α_f − α_i)·min(1, t/t_max)</c>, then stays at <c>alpha_f</c>.
/// </summary>
public sealed class LinearScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="alphaI">The factor at time 0, ≥ 0.</param>
    /// <param name="alphaF">The factor at <paramref name="tMax"/>, ≥ 0.</param>
    /// <param name="tMax">The end of the decay (default <c>1dur</c>).</param>
    /// <exception cref="ArgumentOutOfRangeException">A factor negative or not finite.</exception>
    public LinearScheduler(double alphaI = 1.0, double alphaF = 0.0, Time? tMax = null)
    {
        AlphaI = ConstantScheduler.CheckFactor(alphaI, nameof(alphaI));
        AlphaF = ConstantScheduler.CheckFactor(alphaF, nameof(alphaF));
        TMax = tMax ?? Time.FromDuration(1);
    }

    /// <summary>The initial factor.</summary>
    public double AlphaI { get; }

    /// <summary>The final factor.</summary>
    public double AlphaF { get; }

    /// <summary>The end of the decay.</summary>
    public Time TMax { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state (its timestamp and max duration).</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set, or an epoch time has no dataloader length.</exception>
    public double Factor(State state)
    {
        Time tMax = SchedulerTime.Convert(TMax, state);
        double frac = Math.Min(1.0, SchedulerTime.Now(state, tMax.Unit) / tMax.Value);
        return AlphaI + ((AlphaF - AlphaI) * frac);
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"LinearScheduler(alpha_i={AlphaI}, alpha_f={AlphaF}, t_max={TMax})");
}

/// <summary>
/// Composer's <c>ExponentialScheduler</c> (composer/optim/scheduler.py), YAML <c>exponential</c>:
/// <c>γ^(t / decay_period)</c>, <c>t</c> in the period's unit.
/// </summary>
public sealed class ExponentialScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="gamma">The factor per period, ≥ 0.</param>
    /// <param name="decayPeriod">The period (default <c>1ep</c>), &gt; 0.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gamma"/> negative, or the period not positive.</exception>
    public ExponentialScheduler(double gamma, Time? decayPeriod = null)
    {
        Gamma = ConstantScheduler.CheckFactor(gamma, nameof(gamma));
        DecayPeriod = decayPeriod ?? Time.FromEpoch(1);
        if (DecayPeriod.Value <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(decayPeriod), DecayPeriod.ToString(), "The decay period must be greater than zero.");
        }
    }

    /// <summary>The factor per period.</summary>
    public double Gamma { get; }

    /// <summary>The period.</summary>
    public Time DecayPeriod { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set, or an epoch time has no dataloader length.</exception>
    public double Factor(State state)
    {
        Time period = SchedulerTime.Convert(DecayPeriod, state);
        return Math.Pow(Gamma, SchedulerTime.Now(state, period.Unit) / period.Value);
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"ExponentialScheduler(gamma={Gamma}, decay_period={DecayPeriod})");
}

/// <summary>
/// Composer's <c>PolynomialWithWarmupScheduler</c> (composer/optim/scheduler.py), YAML <c>polynomial_decay_with_warmup</c>:
/// linear warmup from 0 to 1 over <c>t_warmup</c>, then <c>α_f + (1 − α_f)·(1 − τ)^power</c> with
/// <c>τ = min(1, (t − t_warmup)/(t_max − t_warmup))</c>. With <c>t_warmup</c> 0 it is Composer's <c>PolynomialScheduler</c>
/// (YAML <c>polynomial</c>, whose fraction is clamped to 1 here).
/// </summary>
public sealed class PolynomialWithWarmupScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="tWarmup">The warmup (<c>0ba</c> for none).</param>
    /// <param name="power">The exponent (Composer's default 2).</param>
    /// <param name="tMax">The end of the decay (default <c>1dur</c>).</param>
    /// <param name="alphaF">The final factor, ≥ 0.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alphaF"/> negative, or <paramref name="power"/> not finite.</exception>
    public PolynomialWithWarmupScheduler(Time tWarmup, double power = 2.0, Time? tMax = null, double alphaF = 0.0)
    {
        TWarmup = tWarmup;
        Power = double.IsFinite(power) ? power : throw new ArgumentOutOfRangeException(nameof(power), power, "'power' must be finite.");
        TMax = tMax ?? Time.FromDuration(1);
        AlphaF = ConstantScheduler.CheckFactor(alphaF, nameof(alphaF));
    }

    /// <summary>The warmup.</summary>
    public Time TWarmup { get; }

    /// <summary>The exponent.</summary>
    public double Power { get; }

    /// <summary>The end of the decay.</summary>
    public Time TMax { get; }

    /// <summary>The final factor.</summary>
    public double AlphaF { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set, or warmup and t_max are in different units.</exception>
    public double Factor(State state)
    {
        (bool inWarmup, double fraction) = SchedulerTime.WarmupProgress(TWarmup, TMax, state);
        return inWarmup ? fraction : AlphaF + ((1 - AlphaF) * Math.Pow(1 - fraction, Power));
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"PolynomialWithWarmupScheduler(t_warmup={TWarmup}, power={Power}, t_max={TMax}, alpha_f={AlphaF})");
}

/// <summary>Composer's <c>PolynomialScheduler</c> (composer/optim/scheduler.py), YAML <c>polynomial</c>: <see cref="PolynomialWithWarmupScheduler"/> without warmup.</summary>
public sealed class PolynomialScheduler : IScheduler
{
    private readonly PolynomialWithWarmupScheduler _inner;

    /// <summary>Creates the schedule.</summary>
    /// <param name="power">The exponent.</param>
    /// <param name="tMax">The end of the decay (default <c>1dur</c>).</param>
    /// <param name="alphaF">The final factor, ≥ 0.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alphaF"/> negative, or <paramref name="power"/> not finite.</exception>
    public PolynomialScheduler(double power, Time? tMax = null, double alphaF = 0.0) =>
        _inner = new PolynomialWithWarmupScheduler(Time.FromDuration(0), power, tMax, alphaF);

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set.</exception>
    public double Factor(State state) => _inner.Factor(state);

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"PolynomialScheduler(power={_inner.Power}, t_max={_inner.TMax}, alpha_f={_inner.AlphaF})");
}

/// <summary>
/// Composer's <c>ConstantWithWarmupScheduler</c> (composer/optim/scheduler.py), YAML <c>constant_with_warmup</c>:
/// <c>α·t/t_warmup</c> during the warmup, then <see cref="ConstantScheduler"/>'s <c>α</c> until <c>t_max</c> and 1 after.
/// </summary>
public sealed class ConstantWithWarmupScheduler : IScheduler
{
    private readonly ConstantScheduler _after;

    /// <summary>Creates the schedule.</summary>
    /// <param name="tWarmup">The warmup.</param>
    /// <param name="alpha">The constant factor, ≥ 0.</param>
    /// <param name="tMax">The end of the constant part (default <c>1dur</c>).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alpha"/> negative or not finite.</exception>
    public ConstantWithWarmupScheduler(Time tWarmup, double alpha = 1.0, Time? tMax = null)
    {
        TWarmup = tWarmup;
        _after = new ConstantScheduler(alpha, tMax);
    }

    /// <summary>The warmup.</summary>
    public Time TWarmup { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set.</exception>
    public double Factor(State state)
    {
        Time warmup = SchedulerTime.Convert(TWarmup, state);
        double now = SchedulerTime.Now(state, warmup.Unit);
        return now < warmup.Value ? _after.Alpha * now / warmup.Value : _after.Factor(state);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"ConstantWithWarmupScheduler(t_warmup={TWarmup}, alpha={_after.Alpha}, t_max={_after.TMax})");
}

/// <summary>
/// Composer's <c>MultiStepWithWarmupScheduler</c> (composer/optim/scheduler.py), YAML <c>multistep_with_warmup</c>:
/// linear warmup from 0 to 1 over <c>t_warmup</c>, then <see cref="MultiStepScheduler"/>.
/// </summary>
public sealed class MultiStepWithWarmupScheduler : IScheduler
{
    private readonly MultiStepScheduler _after;

    /// <summary>Creates the schedule.</summary>
    /// <param name="tWarmup">The warmup.</param>
    /// <param name="milestones">The times at which the factor is multiplied by <paramref name="gamma"/> (at least one).</param>
    /// <param name="gamma">The factor per milestone, ≥ 0.</param>
    /// <exception cref="ArgumentException">No milestone.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="gamma"/> negative or not finite.</exception>
    public MultiStepWithWarmupScheduler(Time tWarmup, IEnumerable<Time> milestones, double gamma = 0.1)
    {
        TWarmup = tWarmup;
        _after = new MultiStepScheduler(milestones, gamma);
    }

    /// <summary>The warmup.</summary>
    public Time TWarmup { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set.</exception>
    public double Factor(State state)
    {
        Time warmup = SchedulerTime.Convert(TWarmup, state);
        double now = SchedulerTime.Now(state, warmup.Unit);
        return now < warmup.Value ? now / warmup.Value : _after.Factor(state);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"MultiStepWithWarmupScheduler(t_warmup={TWarmup}, milestones=[{string.Join(", ", _after.Milestones)}], gamma={_after.Gamma})");
}

/// <summary>
/// Composer's <c>CosineAnnealingWarmRestartsScheduler</c> (composer/optim/scheduler.py; Loshchilov &amp; Hutter 2017,
/// "SGDR: Stochastic Gradient Descent with Warm Restarts"), YAML <c>cosine_warmrestart</c>: cosine annealing from 1 to
/// <c>alpha_f</c> over intervals of length <c>t_0</c>, <c>⌊t_mult·t_0⌋</c>, …, restarting at 1 at each interval's end.
/// </summary>
public sealed class CosineAnnealingWarmRestartsScheduler : IScheduler
{
    /// <summary>Creates the schedule.</summary>
    /// <param name="t0">The first interval, &gt; 0.</param>
    /// <param name="tMult">The growth of each interval over the previous one (its length truncated to an integer), ≥ 1 recommended.</param>
    /// <param name="alphaF">The factor at each interval's end, ≥ 0.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="alphaF"/> negative, or <paramref name="tMult"/> not finite and positive.</exception>
    public CosineAnnealingWarmRestartsScheduler(Time t0, double tMult = 1.0, double alphaF = 0.0)
    {
        T0 = t0;
        TMult = double.IsFinite(tMult) && tMult > 0 ? tMult : throw new ArgumentOutOfRangeException(nameof(tMult), tMult, "'t_mult' must be a finite number > 0.");
        AlphaF = ConstantScheduler.CheckFactor(alphaF, nameof(alphaF));
    }

    /// <summary>The first interval.</summary>
    public Time T0 { get; }

    /// <summary>The interval growth.</summary>
    public double TMult { get; }

    /// <summary>The factor at each interval's end.</summary>
    public double AlphaF { get; }

    /// <summary>The learning-rate factor at <paramref name="state"/>'s time.</summary>
    /// <param name="state">The training state.</param>
    /// <returns>The factor.</returns>
    /// <exception cref="InvalidOperationException">The max duration is not set, or the interval decays to 0 (Composer's error).</exception>
    public double Factor(State state)
    {
        Time t0 = SchedulerTime.Convert(T0, state);
        double now = SchedulerTime.Now(state, t0.Unit);
        double length = t0.Value, end = t0.Value;
        while (end <= now)
        {
            if (length == 0)
            {
                throw new InvalidOperationException("Interval between restarts for cosine annealing/warm restarts scheduler has decayed to 0.");
            }

            length = Math.Floor(TMult * length);
            end += length;
        }

        return SchedulerTime.CosineAnneal((now - (end - length)) / length, AlphaF);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"CosineAnnealingWarmRestartsScheduler(t_0={T0}, t_mult={TMult}, alpha_f={AlphaF})");
}
