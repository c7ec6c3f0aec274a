using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's SAM algorithm: at <see cref="Event.AfterLoad"/> wraps every optimizer of the state in a
/// <see cref="SAMOptimizer"/>, which the Trainer steps with a closure that re-runs the batch's forward and backward.
/// Method card: Algorithms/SAM/README.md. Source: Composer's composer/algorithms/sam; Foret et al., ICLR 2021.
/// </summary>
/// <remarks>
/// Wrapping after the load means a checkpoint's optimizer state goes into the base optimizers, and checkpoints save
/// the base optimizers' state (<see cref="IClosureOptimizer"/>), so runs with SAM resume (Composer's cannot without
/// <c>load_weights_only</c>). The interval's phase comes from the batch count, so it survives a resume too.
/// Not supported with <c>amp_fp16</c> (its loss scaling would need a closure-aware scaler): a clear error.
/// </remarks>
public sealed class SAM : Algorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="Rho"/>.</summary>
    public const string RhoKey = "rho";

    /// <summary>The hyperparameter holding <see cref="Epsilon"/>.</summary>
    public const string EpsilonKey = "epsilon";

    /// <summary>The hyperparameter holding <see cref="Interval"/>.</summary>
    public const string IntervalKey = "interval";

    /// <summary>Creates the algorithm (Composer's <c>SAM(rho, epsilon, interval)</c>).</summary>
    /// <param name="rho">ρ ≥ 0, the neighbourhood radius. Default 0.05.</param>
    /// <param name="epsilon">ε &gt; 0 added to the gradient norm. Default 1e-12.</param>
    /// <param name="interval">A SAM step every <paramref name="interval"/> steps (≥ 1). Default 1.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public SAM(double rho = 0.05, double epsilon = 1e-12, int interval = 1)
    {
        Check(rho, epsilon, interval);
        Rho = rho;
        Epsilon = epsilon;
        Interval = interval;
    }

    /// <summary>ρ, the neighbourhood radius.</summary>
    public double Rho { get; }

    /// <summary>ε, added to the gradient norm.</summary>
    public double Epsilon { get; }

    /// <summary>Every how many steps a SAM step is taken.</summary>
    public int Interval { get; }

    /// <summary><c>sam</c>.</summary>
    public override string Name => "sam";

    /// <summary>True at AfterLoad.</summary>
    public override bool Match(Event e, State state) => e == Event.AfterLoad;

    /// <summary>Wraps each optimizer not yet wrapped. Returns null.</summary>
    /// <exception cref="InvalidOperationException">The precision is amp_fp16.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Precision == Precision.AmpFp16)
        {
            throw new InvalidOperationException("SAM does not support amp_fp16: its loss scaling needs a closure-aware gradient scaler. Use amp_bf16 or fp32.");
        }

        for (int i = 0; i < state.Optimizers.Count; i++)
        {
            if (state.Optimizers[i] is not IClosureOptimizer)
            {
                state.Optimizers[i] = new SAMOptimizer(state.Optimizers[i], Rho, Epsilon, Interval, state.Timestamp.Batch);
            }
        }

        return null;
    }

    /// <summary><c>rho</c>, <c>epsilon</c> (round-trip format) and <c>interval</c>.</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [RhoKey] = Rho.ToString("R", CultureInfo.InvariantCulture),
        [EpsilonKey] = Epsilon.ToString("R", CultureInfo.InvariantCulture),
        [IntervalKey] = Interval.ToString(CultureInfo.InvariantCulture),
    });

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Name}(rho={Rho:R}, epsilon={Epsilon:R}, interval={Interval})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or a value that does not parse.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public static SAM FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, "sam", RhoKey, EpsilonKey, IntervalKey);
        long interval = reader.Long(IntervalKey, 1);
        if (interval is < 1 or > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(description), interval, "interval must be a whole number of steps ≥ 1.");
        }

        return new SAM(reader.Double(RhoKey, 0.05), reader.Double(EpsilonKey, 1e-12), (int)interval);
    }

    /// <summary>Checks SAM's hyperparameters.</summary>
    /// <exception cref="ArgumentOutOfRangeException">ρ negative or not finite, ε not positive, interval below 1.</exception>
    internal static void Check(double rho, double epsilon, int interval)
    {
        if (!(rho >= 0) || double.IsInfinity(rho))
        {
            throw new ArgumentOutOfRangeException(nameof(rho), rho, "rho must be a finite number ≥ 0.");
        }

        if (!(epsilon > 0) || double.IsInfinity(epsilon))
        {
            throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "epsilon must be a finite number > 0.");
        }

        if (interval < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(interval), interval, "interval must be a whole number of steps ≥ 1.");
        }
    }
}
