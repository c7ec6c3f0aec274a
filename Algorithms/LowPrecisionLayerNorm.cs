using System.Collections.Frozen;
using System.Globalization;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Common behaviour of <see cref="LowPrecisionLayerNorm"/> and <see cref="LowPrecisionGroupNorm"/>: module surgery
/// at one of Init, BeforeLoad or AfterLoad; required on load (it changes the model's module classes); described by
/// its name and <c>apply_at</c>.
/// </summary>
public abstract class LowPrecisionNormAlgorithm : Algorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="ApplyAt"/> (Composer's snake_case event name).</summary>
    public const string ApplyAtKey = "apply_at";

    private static readonly FrozenSet<Event> AllowedEvents = new[] { Event.Init, Event.BeforeLoad, Event.AfterLoad }.ToFrozenSet();

    /// <summary>Creates the algorithm.</summary>
    /// <param name="applyAt">When to do the surgery: Init (default in the subclasses), BeforeLoad or AfterLoad.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="applyAt"/> is another event.</exception>
    protected LowPrecisionNormAlgorithm(Event applyAt)
    {
        if (!AllowedEvents.Contains(applyAt))
        {
            throw new ArgumentOutOfRangeException(
                nameof(applyAt), applyAt,
                $"{GetType().Name} can be applied at init, before_load or after_load, not at {applyAt.ToComposerName()}.");
        }

        ApplyAt = applyAt;
    }

    /// <summary>The event at which the surgery runs.</summary>
    public Event ApplyAt { get; }

    /// <summary>True: a checkpoint written with this algorithm holds a model whose norm modules were replaced.</summary>
    public override bool RequiredOnLoad => true;

    /// <summary>True at <see cref="ApplyAt"/>.</summary>
    public override bool Match(Event e, State state) => e == ApplyAt;

    /// <summary>
    /// Replaces the norm modules of <c>state.Model</c> for <c>state.Precision</c>, updating <c>state.Optimizers</c>;
    /// warnings and the count go to a logger from <c>state.LoggerFactory</c>, and the count is also logged as the
    /// metric <c>&lt;name&gt;/modules_replaced</c> (e.g. <c>low_precision_layernorm/modules_replaced</c>) through
    /// <paramref name="logger"/>, where run summaries read it. Returns null (no exit code).
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="state"/> or <paramref name="logger"/> is null.</exception>
    /// <exception cref="InvalidOperationException">A norm module is held where its replacement cannot go (see <see cref="ModuleSurgery.ReplaceModuleClasses"/>).</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        ILogger log = state.LoggerFactory.CreateLogger(GetType());
        ModulesReplaced = ApplySurgery(state, log);
        logger.LogMetric(Name + ModuleSurgery.ModulesReplacedMetricSuffix, ModulesReplaced.Value);
        return null;
    }

    /// <summary>How many modules the last <see cref="Apply"/> replaced (0 under fp32), or null before it ran.</summary>
    public int? ModulesReplaced { get; private set; }

    /// <summary><see cref="Algorithm.Name"/> and <c>apply_at</c> (e.g. <c>init</c>).</summary>
    public override AlgorithmDescription Describe() =>
        new(Name, new Dictionary<string, string> { [ApplyAtKey] = ApplyAt.ToComposerName() });

    /// <inheritdoc/>
    public override string ToString() => $"{Name}(apply_at={ApplyAt.ToComposerName()})";

    /// <summary>Does the surgery; returns the number of modules replaced.</summary>
    protected abstract int ApplySurgery(State state, ILogger log);

    /// <summary>Reads <c>apply_at</c> from <paramref name="description"/> after checking its name and keys.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">The name is not <paramref name="name"/>, a hyperparameter is unknown, or <c>apply_at</c> is not an event name.</exception>
    protected static Event ReadApplyAt(AlgorithmDescription description, string name)
    {
        ArgumentNullException.ThrowIfNull(description);
        if (description.Name != name)
        {
            throw new ArgumentException($"The description is of algorithm '{description.Name}', expected '{name}'.", nameof(description));
        }

        foreach (string key in description.Hyperparameters.Keys)
        {
            if (key != ApplyAtKey)
            {
                throw new ArgumentException($"Unknown hyperparameter '{key}' for {name}; expected only '{ApplyAtKey}'.", nameof(description));
            }
        }

        if (!description.Hyperparameters.TryGetValue(ApplyAtKey, out string? value))
        {
            return Event.Init;
        }

        try
        {
            return EventExtensions.Parse(value);
        }
        catch (FormatException ex)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture, $"'{ApplyAtKey}' of {name}: {ex.Message}"), nameof(description), ex);
        }
    }
}

/// <summary>
/// Composer's LowPrecisionLayerNorm: on <see cref="LowPrecisionNormAlgorithm.ApplyAt"/> (Init by default) replaces
/// every <c>LayerNorm</c> of the model with an <see cref="LPLayerNorm"/>, so layer normalisation runs in the
/// autocast dtype (BFloat16 under <c>amp_bf16</c>, Float16 under <c>amp_fp16</c>) on CPU and CUDA. No
/// hyperparameters: each layer keeps its normalized shape, eps and parameter objects. Source: Composer's
/// composer/algorithms/low_precision_layernorm and its method card.
/// </summary>
/// <remarks>
/// Under <c>fp32</c> it changes nothing and logs a warning; a model without LayerNorm gets a warning; it logs the
/// number replaced and warns about TorchSharp's native transformer modules, whose LayerNorms it cannot reach. Its
/// name is <see cref="AlgorithmPasses.LowPrecisionLayerNormName"/>, which the engine's default pass runs after
/// every other algorithm, so LayerNorms added by earlier algorithms at Init are converted too.
/// </remarks>
public sealed class LowPrecisionLayerNorm : LowPrecisionNormAlgorithm
{
    /// <summary>Creates the algorithm.</summary>
    /// <param name="applyAt">Init (default), BeforeLoad or AfterLoad.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="applyAt"/> is another event.</exception>
    public LowPrecisionLayerNorm(Event applyAt = Event.Init)
        : base(applyAt)
    {
    }

    /// <summary><c>low_precision_layernorm</c>.</summary>
    public override string Name => AlgorithmPasses.LowPrecisionLayerNormName;

    /// <summary>Re-creates the algorithm from what <see cref="LowPrecisionNormAlgorithm.Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown hyperparameter, or a bad <c>apply_at</c>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><c>apply_at</c> is not init, before_load or after_load.</exception>
    public static LowPrecisionLayerNorm FromDescription(AlgorithmDescription description) =>
        new(ReadApplyAt(description, AlgorithmPasses.LowPrecisionLayerNormName));

    /// <inheritdoc/>
    protected override int ApplySurgery(State state, ILogger log) =>
        Functional.ApplyLowPrecisionLayerNorm(state.Model, state.Precision, state.Optimizers, log);
}

/// <summary>
/// Composer's LowPrecisionGroupNorm: the same as <see cref="LowPrecisionLayerNorm"/> for <c>GroupNorm</c>, replaced
/// by <see cref="LPGroupNorm"/>. Source: Composer's composer/algorithms/low_precision_groupnorm.
/// </summary>
public sealed class LowPrecisionGroupNorm : LowPrecisionNormAlgorithm
{
    /// <summary>Creates the algorithm.</summary>
    /// <param name="applyAt">Init (default), BeforeLoad or AfterLoad.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="applyAt"/> is another event.</exception>
    public LowPrecisionGroupNorm(Event applyAt = Event.Init)
        : base(applyAt)
    {
    }

    /// <summary><c>low_precision_groupnorm</c>.</summary>
    public override string Name => AlgorithmPasses.LowPrecisionGroupNormName;

    /// <summary>Re-creates the algorithm from what <see cref="LowPrecisionNormAlgorithm.Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown hyperparameter, or a bad <c>apply_at</c>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><c>apply_at</c> is not init, before_load or after_load.</exception>
    public static LowPrecisionGroupNorm FromDescription(AlgorithmDescription description) =>
        new(ReadApplyAt(description, AlgorithmPasses.LowPrecisionGroupNormName));

    /// <inheritdoc/>
    protected override int ApplySurgery(State state, ILogger log) =>
        Functional.ApplyLowPrecisionGroupNorm(state.Model, state.Precision, state.Optimizers, log);
}
