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
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter (and config key) holding <see cref="Kernel"/>: <c>default</c>, <c>fused</c> or <c>libtorch</c>.</summary>
    public const string KernelKey = "kernel";

    /// <summary>Creates the algorithm.</summary>
    /// <param name="applyAt">Init (default), BeforeLoad or AfterLoad.</param>
    /// <param name="kernel">
    /// The CPU kernel of the <see cref="LPLayerNorm"/>s under BFloat16 autocast (config key <c>kernel</c>): Default (the
    /// fused C# kernel when the CPU has AVX2), Fused, or Libtorch (libtorch's <c>layer_norm</c>, for comparison).
    /// ComposerSharp's addition; Composer has no such choice (its GPU path is PyTorch's kernel).
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="applyAt"/> is another event, or <paramref name="kernel"/> is not a defined value.</exception>
    public LowPrecisionLayerNorm(Event applyAt = Event.Init, LayerNormKernel kernel = LayerNormKernel.Default)
        : base(applyAt)
    {
        if (!Enum.IsDefined(kernel))
        {
            throw new ArgumentOutOfRangeException(nameof(kernel), kernel, "Expected default, fused or libtorch.");
        }

        Kernel = kernel;
    }

    /// <summary><c>low_precision_layernorm</c>.</summary>
    public override string Name => AlgorithmPasses.LowPrecisionLayerNormName;

    /// <summary>The CPU kernel the replacements use under BFloat16 autocast.</summary>
    public LayerNormKernel Kernel { get; }

    /// <summary><c>apply_at</c>, and <c>kernel</c> when it is not the default.</summary>
    public override AlgorithmDescription Describe()
    {
        AlgorithmDescription d = base.Describe();
        if (Kernel == LayerNormKernel.Default)
        {
            return d;
        }

        var hyperparameters = d.Hyperparameters.ToDictionary(kv => kv.Key, kv => kv.Value);
        hyperparameters[KernelKey] = Algorithm.ToSnakeCase(Kernel.ToString());
        return new AlgorithmDescription(d.Name, hyperparameters);
    }

    /// <inheritdoc/>
    public override string ToString() => Kernel == LayerNormKernel.Default
        ? base.ToString()
        : $"{Name}(apply_at={ApplyAt.ToComposerName()}, kernel={Algorithm.ToSnakeCase(Kernel.ToString())})";

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown hyperparameter, a bad <c>apply_at</c> or <c>kernel</c>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><c>apply_at</c> is not init, before_load or after_load.</exception>
    public static LowPrecisionLayerNorm FromDescription(AlgorithmDescription description)
    {
        Event applyAt = ReadApplyAt(description, AlgorithmPasses.LowPrecisionLayerNormName, KernelKey);
        LayerNormKernel kernel = LayerNormKernel.Default;
        if (description.Hyperparameters.TryGetValue(KernelKey, out string? value))
        {
            kernel = value.Trim().ToLowerInvariant() switch
            {
                "default" => LayerNormKernel.Default,
                "fused" => LayerNormKernel.Fused,
                "libtorch" => LayerNormKernel.Libtorch,
                _ => throw new ArgumentException($"'{KernelKey}' of {AlgorithmPasses.LowPrecisionLayerNormName} is '{value}'; expected default, fused or libtorch.", nameof(description)),
            };
        }

        return new LowPrecisionLayerNorm(applyAt, kernel);
    }

    /// <inheritdoc/>
    protected override int ApplySurgery(State state, ILogger log) =>
        Functional.ApplyLowPrecisionLayerNorm(state.Model, state.Precision, state.Optimizers, log, Kernel);
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
