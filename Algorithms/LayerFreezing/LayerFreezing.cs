using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Interop;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's LayerFreezing: at every <see cref="Event.EpochEnd"/> freezes the earliest layers of the model, a
/// fraction that grows linearly from 0 at <see cref="FreezeStart"/> (a fraction of the max duration) to
/// <see cref="FreezeLevel"/> at the end of training. Frozen parameters stop requiring gradients and are removed from
/// the optimizers' parameter groups, their optimizer state dropped, so neither momentum nor weight decay moves them.
/// Method card: Algorithms/LayerFreezing/README.md. Source: Composer's composer/algorithms/layer_freezing; Brock et
/// al., "FreezeOut" (2017) and Raghu et al., "SVCCA" / freeze training (2017).
/// </summary>
/// <remarks>
/// Layers are the model's leaf modules that own parameters, in registration (depth-first) order; the last one (the
/// head) is never frozen, as in Composer. The frozen depth is checkpoint state: a resumed run re-freezes the same
/// layers before the optimizer state is loaded, so it continues exactly (Composer warns that its checkpoints cannot).
/// </remarks>
public sealed class LayerFreezing : Algorithm, IStatefulAlgorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="FreezeStart"/>.</summary>
    public const string FreezeStartKey = "freeze_start";

    /// <summary>The hyperparameter holding <see cref="FreezeLevel"/>.</summary>
    public const string FreezeLevelKey = "freeze_level";

    /// <summary>Creates the algorithm (Composer's <c>LayerFreezing(freeze_start, freeze_level)</c>).</summary>
    /// <param name="freezeStart">Fraction of training in [0, 1) before freezing begins. Default 0.5.</param>
    /// <param name="freezeLevel">Fraction of layers in [0, 1] frozen at the end of training. Default 1.0.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public LayerFreezing(double freezeStart = 0.5, double freezeLevel = 1.0)
    {
        if (!(freezeStart >= 0 && freezeStart < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(freezeStart), freezeStart, "freeze_start must be a fraction of training in [0, 1).");
        }

        if (!(freezeLevel >= 0 && freezeLevel <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(freezeLevel), freezeLevel, "freeze_level must be a fraction of layers in [0, 1].");
        }

        FreezeStart = freezeStart;
        FreezeLevel = freezeLevel;
    }

    /// <summary>Fraction of training before freezing begins.</summary>
    public double FreezeStart { get; }

    /// <summary>Fraction of layers frozen at the end of training.</summary>
    public double FreezeLevel { get; }

    /// <summary>How many layers are frozen now.</summary>
    public int LayersFrozen { get; private set; }

    /// <summary><c>layer_freezing</c>.</summary>
    public override string Name => "layer_freezing";

    /// <summary>True at EpochEnd.</summary>
    public override bool Match(Event e, State state) => e == Event.EpochEnd;

    /// <summary>
    /// Freezes the layers due at the elapsed duration and logs <c>layer_freezing/layers_frozen</c> and
    /// <c>layer_freezing/percentage_frozen</c>. Returns null.
    /// </summary>
    /// <exception cref="InvalidOperationException">The state has no max duration.</exception>
    /// <exception cref="NotSupportedException">An optimizer that keeps its parameters in native code.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        double elapsed = state.ElapsedDuration?.Value
            ?? throw new InvalidOperationException("LayerFreezing needs a max duration to know the fraction of training elapsed.");
        (int depth, double fraction) = FreezeLayers(state.Model, state.Optimizers, elapsed, FreezeStart, FreezeLevel);
        if (depth > LayersFrozen)
        {
            state.LoggerFactory.CreateLogger<LayerFreezing>().LogInformation(
                "Layer freezing (freeze_start={FreezeStart}, freeze_level={FreezeLevel}) froze {Depth} layers, {Percentage:0.#} % of the schedule's layers.",
                FreezeStart, FreezeLevel, depth, fraction * 100);
        }

        LayersFrozen = Math.Max(LayersFrozen, depth);
        logger.LogMetrics(new Dictionary<string, double>
        {
            ["layer_freezing/layers_frozen"] = depth,
            ["layer_freezing/percentage_frozen"] = fraction,
        });
        return null;
    }

    /// <summary><c>layers_frozen</c>.</summary>
    public AlgorithmState StateDict() =>
        new(new Dictionary<string, object?> { ["layers_frozen"] = (long)LayersFrozen }, new Dictionary<string, Tensor>());

    /// <summary>Freezes the saved number of layers of <paramref name="state"/>'s model again (before the optimizer state is loaded).</summary>
    /// <exception cref="ArgumentException">No integer <c>layers_frozen</c>, or more than the model has.</exception>
    public void LoadStateDict(AlgorithmState saved, State state)
    {
        ArgumentNullException.ThrowIfNull(saved);
        ArgumentNullException.ThrowIfNull(state);
        if (!saved.Values.TryGetValue("layers_frozen", out object? v) || v is not (long or double))
        {
            throw new ArgumentException($"The layer_freezing state has no number 'layers_frozen' (got {v ?? "nothing"}).", nameof(saved));
        }

        int depth = (int)Convert.ToInt64(v, CultureInfo.InvariantCulture);
        IReadOnlyList<nn.Module> layers = Layers(state.Model);
        if (depth < 0 || depth > Math.Max(0, layers.Count - 1))
        {
            throw new ArgumentException($"The checkpoint froze {depth} layers, but this model has {layers.Count} (the last is never frozen).", nameof(saved));
        }

        Freeze(layers.Take(depth), state.Optimizers);
        LayersFrozen = depth;
    }

    /// <summary><c>freeze_start</c> and <c>freeze_level</c> (round-trip format).</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [FreezeStartKey] = FreezeStart.ToString("R", CultureInfo.InvariantCulture),
        [FreezeLevelKey] = FreezeLevel.ToString("R", CultureInfo.InvariantCulture),
    });

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Name}(freeze_start={FreezeStart:R}, freeze_level={FreezeLevel:R})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or a value that does not parse.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public static LayerFreezing FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, "layer_freezing", FreezeStartKey, FreezeLevelKey);
        return new LayerFreezing(reader.Double(FreezeStartKey, 0.5), reader.Double(FreezeLevelKey, 1.0));
    }

    /// <summary>
    /// The functional form (Composer's <c>freeze_layers</c>): freezes the first ⌊f · (L − 1)⌋ of the model's L layers,
    /// f = <see cref="FreezeSchedule"/>(<paramref name="currentDuration"/>), removing their parameters from
    /// <paramref name="optimizers"/> (and dropping their state). Layers frozen before stay frozen.
    /// </summary>
    /// <param name="model">The model, changed in place (requires_grad, grads).</param>
    /// <param name="optimizers">The optimizers, whose parameter groups lose the frozen parameters.</param>
    /// <param name="currentDuration">Fraction of training elapsed, in [0, 1].</param>
    /// <param name="freezeStart">Fraction of training before freezing begins.</param>
    /// <param name="freezeLevel">Fraction of layers frozen at the end.</param>
    /// <returns>The number of layers frozen by the schedule now, and the schedule's fraction f.</returns>
    /// <exception cref="NotSupportedException">An optimizer that keeps its parameters in native code holds a parameter to freeze.</exception>
    public static (int LayersFrozen, double Fraction) FreezeLayers(nn.Module model, IEnumerable<optim.Optimizer> optimizers, double currentDuration, double freezeStart = 0.5, double freezeLevel = 1.0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizers);
        IReadOnlyList<nn.Module> layers = Layers(model);
        double fraction = FreezeSchedule(currentDuration, freezeStart, freezeLevel);
        int depth = (int)(fraction * Math.Max(0, layers.Count - 1));
        Freeze(layers.Take(depth), optimizers.ToList());
        return (depth, fraction);
    }

    /// <summary>
    /// Composer's linear schedule: 0 up to <paramref name="freezeStart"/>, then
    /// <paramref name="freezeLevel"/> · (d − start) / (1 − start) at elapsed fraction d.
    /// </summary>
    public static double FreezeSchedule(double currentDuration, double freezeStart, double freezeLevel) =>
        currentDuration <= freezeStart ? 0.0 : freezeLevel * (currentDuration - freezeStart) / (1.0 - freezeStart);

    /// <summary>
    /// The model's layers as Composer counts them: leaf modules owning parameters, depth-first in registration order.
    /// For a <see cref="TransformerModel"/> the backbone's layers come first (embeddings, blocks in order), then the
    /// head's: TorchSharp registers a subclass's fields (the head) before its base class's (the backbone), the reverse
    /// of the order of computation that "early layers" means.
    /// </summary>
    public static IReadOnlyList<nn.Module> Layers(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var layers = new List<nn.Module>();
        if (model is TransformerModel transformer)
        {
            Collect(transformer.Backbone, layers);
            var rest = new List<nn.Module>();
            Collect(model, rest);
            layers.AddRange(rest.Where(m => !layers.Any(l => ReferenceEquals(l, m))));
            return layers;
        }

        Collect(model, layers);
        return layers;

        static void Collect(nn.Module module, List<nn.Module> into)
        {
            List<nn.Module> children = module.children().ToList();
            if (children.Count == 0)
            {
                if (module.parameters().Any())
                {
                    into.Add(module);
                }

                return;
            }

            foreach (nn.Module child in children)
            {
                Collect(child, into);
            }
        }
    }

    private static void Freeze(IEnumerable<nn.Module> layers, IList<optim.Optimizer> optimizers)
    {
        foreach (nn.Module layer in layers)
        {
            foreach (Parameter p in layer.parameters())
            {
                if (!p.requires_grad)
                {
                    continue;
                }

                RemoveFromOptimizers(p, optimizers);
                p.requires_grad = false;
                p.grad = null;
            }
        }
    }

    /// <summary>Removes <paramref name="p"/> from every parameter group and disposes its per-parameter optimizer state (Composer's <c>_remove_param_from_optimizers</c>).</summary>
    private static void RemoveFromOptimizers(Parameter p, IList<optim.Optimizer> optimizers)
    {
        foreach (optim.Optimizer wrapper in optimizers)
        {
            optim.Optimizer optimizer = wrapper is IClosureOptimizer closure ? closure.BaseOptimizer : wrapper;
            if (optimizer is not OptimizerHelper helper)
            {
                if (optimizer.parameters().Any(q => q.Handle == p.Handle))
                {
                    throw new NotSupportedException(
                        $"LayerFreezing cannot remove a parameter from a {optimizer.GetType().Name}, which keeps its parameters in native code; use a managed TorchSharp optimizer (SGD, Adam, AdamW, ...).");
                }

                continue;
            }

            foreach (ParamGroup group in TorchSharpInternals.ParameterGroups(optimizer))
            {
                if (group.Parameters.Any(q => q.Handle == p.Handle))
                {
                    group.Parameters = group.Parameters.Where(q => q.Handle != p.Handle).ToList();
                }
            }

            var state = TorchSharpInternals.OptimizerStates(helper);
            if (state.TryGetValue(p.Handle, out OptimizerState? old))
            {
                state.Remove(p.Handle);
                (old as IDisposable)?.Dispose();
            }
        }
    }
}
