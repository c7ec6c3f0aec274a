using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's GatedLinearUnits: at Init, replaces the feed-forward block of every transformer block with a gated
/// linear unit, <c>wo(act(x·W_gated) ⊙ x·W_non_gated)</c> (Shazeer 2020, "GLU Variants Improve Transformer";
/// Dauphin et al. 2017 for the GLU). Method card: README.md beside this file. Source: Composer's
/// composer/algorithms/gated_linear_units (options <c>act_fn</c>, <c>gated_layer_bias</c>, <c>non_gated_layer_bias</c>).
/// </summary>
/// <remarks>
/// Required on load: a checkpoint written with it holds the gated modules. In post-LN blocks the LayerNorm after the
/// feed-forward residual add is rebuilt (as Composer's <c>BERTGatedFFOutput</c> brings its own LayerNorm); the engine's
/// default pass runs LowPrecisionLayerNorm after every other algorithm at Init, so that new LayerNorm is converted too
/// whatever order the algorithms were given in.
/// </remarks>
public sealed class GatedLinearUnits : Algorithm
{
    /// <summary>The registered name.</summary>
    public const string AlgorithmName = "gated_linear_units";

    private const string ActFnKey = "act_fn";
    private const string GatedLayerBiasKey = "gated_layer_bias";
    private const string NonGatedLayerBiasKey = "non_gated_layer_bias";

    /// <summary>Creates the algorithm (Composer's constructor; YAML keys <c>act_fn</c>, <c>gated_layer_bias</c>, <c>non_gated_layer_bias</c>).</summary>
    /// <param name="actFn">The activation of the gate: gelu, gelu_tanh, relu or silu; null keeps the model's own (Composer: the existing <c>intermediate_act_fn</c>).</param>
    /// <param name="gatedLayerBias">Whether the gated projection has a bias (Composer default false).</param>
    /// <param name="nonGatedLayerBias">Whether the non-gated projection has a bias (Composer default false).</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="actFn"/> is not a defined value.</exception>
    public GatedLinearUnits(GluActivation? actFn = null, bool gatedLayerBias = false, bool nonGatedLayerBias = false)
    {
        if (actFn is { } a && !Enum.IsDefined(a))
        {
            throw new ArgumentOutOfRangeException(nameof(actFn), actFn, "Expected gelu, gelu_tanh, relu or silu.");
        }

        ActFn = actFn;
        GatedLayerBias = gatedLayerBias;
        NonGatedLayerBias = nonGatedLayerBias;
    }

    /// <summary><c>gated_linear_units</c>.</summary>
    public override string Name => AlgorithmName;

    /// <summary>The gate's activation, or null for the model's own.</summary>
    public GluActivation? ActFn { get; }

    /// <summary>Whether the gated projection has a bias.</summary>
    public bool GatedLayerBias { get; }

    /// <summary>Whether the non-gated projection has a bias.</summary>
    public bool NonGatedLayerBias { get; }

    /// <summary>True: the model's module classes change.</summary>
    public override bool RequiredOnLoad => true;

    /// <summary>How many feed-forward blocks the last <see cref="Apply"/> replaced, or null before it ran.</summary>
    public int? ModulesReplaced { get; private set; }

    /// <summary>True at Init.</summary>
    public override bool Match(Event e, State state) => e == Event.Init;

    /// <summary>Does the surgery on <c>state.Model</c> and <c>state.Optimizers</c>; logs <c>gated_linear_units/modules_replaced</c>.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">No <c>act_fn</c> and the blocks' activations differ.</exception>
    /// <exception cref="InvalidOperationException">A block is held where its replacement cannot go.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        ModulesReplaced = Functional.ApplyGatedLinearUnits(
            state.Model, state.Optimizers, ActFn, GatedLayerBias, NonGatedLayerBias, state.LoggerFactory.CreateLogger<GatedLinearUnits>());
        logger.LogMetric(Name + ModuleSurgery.ModulesReplacedMetricSuffix, ModulesReplaced.Value);
        return null;
    }

    /// <summary>Name and the three options (<c>act_fn</c> only when set).</summary>
    public override AlgorithmDescription Describe()
    {
        var h = new Dictionary<string, string>
        {
            [GatedLayerBiasKey] = HyperparameterReader.Text(GatedLayerBias),
            [NonGatedLayerBiasKey] = HyperparameterReader.Text(NonGatedLayerBias),
        };
        if (ActFn is { } a)
        {
            h[ActFnKey] = HyperparameterReader.SnakeName(a);
        }

        return new AlgorithmDescription(Name, h);
    }

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown key or a malformed value.</exception>
    public static GatedLinearUnits FromDescription(AlgorithmDescription description)
    {
        var r = new HyperparameterReader(description, AlgorithmName, ActFnKey, GatedLayerBiasKey, NonGatedLayerBiasKey);
        return new GatedLinearUnits(r.Enum<GluActivation>(ActFnKey), r.Bool(GatedLayerBiasKey, false), r.Bool(NonGatedLayerBiasKey, false));
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Name}(act_fn={(ActFn is { } a ? HyperparameterReader.SnakeName(a) : "model")}, gated_layer_bias={HyperparameterReader.Text(GatedLayerBias)}, non_gated_layer_bias={HyperparameterReader.Text(NonGatedLayerBias)})";
}
