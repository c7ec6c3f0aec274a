using System.Collections.Frozen;
using System.Globalization;
using ComposerSharp.Core;
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
    /// <param name="description">The stored description.</param>
    /// <param name="name">The algorithm's name.</param>
    /// <param name="otherKeys">Hyperparameters besides <c>apply_at</c> the subclass reads itself.</param>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">The name is not <paramref name="name"/>, a hyperparameter is unknown, or <c>apply_at</c> is not an event name.</exception>
    protected static Event ReadApplyAt(AlgorithmDescription description, string name, params string[] otherKeys)
    {
        ArgumentNullException.ThrowIfNull(description);
        if (description.Name != name)
        {
            throw new ArgumentException($"The description is of algorithm '{description.Name}', expected '{name}'.", nameof(description));
        }

        foreach (string key in description.Hyperparameters.Keys)
        {
            if (key != ApplyAtKey && Array.IndexOf(otherKeys, key) < 0)
            {
                throw new ArgumentException(
                    $"Unknown hyperparameter '{key}' for {name}; expected only {string.Join(" or ", otherKeys.Prepend(ApplyAtKey).Select(k => $"'{k}'"))}.", nameof(description));
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
