using System.Collections.Frozen;
using ComposerSharp.Events;

namespace ComposerSharp.Algorithms;

/// <summary>
/// The algorithms that ship with this library, each with the way to re-create it from the
/// <see cref="AlgorithmDescription"/> a checkpoint stores, so a Trainer can add a required-on-load algorithm that the
/// user did not pass. The name of each entry is the algorithm's own <see cref="IAlgorithm.Name"/>, read from an
/// instance, so the catalog and the algorithm cannot disagree; the CLI registers exactly these types.
/// </summary>
public static class AlgorithmCatalog
{
    private static readonly (Func<IAlgorithm> WithDefaults, Func<AlgorithmDescription, IAlgorithm> FromDescription)[] BuiltIn =
    {
        (() => new LowPrecisionLayerNorm(), LowPrecisionLayerNorm.FromDescription),
        (() => new LowPrecisionGroupNorm(), LowPrecisionGroupNorm.FromDescription),
        (() => new LowPrecisionRMSNorm(), LowPrecisionRMSNorm.FromDescription),
        (() => new GradientClipping(), GradientClipping.FromDescription),
        (() => new EMA(), EMA.FromDescription),
        (() => new LabelSmoothing(), LabelSmoothing.FromDescription),
        (() => new LayerFreezing(), LayerFreezing.FromDescription),
        (() => new SAM(), SAM.FromDescription),
        (() => new SelectiveBackprop(), SelectiveBackprop.FromDescription),
        (() => new GatedLinearUnits(), GatedLinearUnits.FromDescription),
        (() => new Alibi(), Alibi.FromDescription),
        (() => new SeqLengthWarmup(), SeqLengthWarmup.FromDescription),
        (() => new StochasticDepth(), StochasticDepth.FromDescription),
    };

    private static readonly FrozenDictionary<string, Func<AlgorithmDescription, IAlgorithm>> Factories =
        BuiltIn.ToFrozenDictionary(b => b.WithDefaults().Name, b => b.FromDescription);

    /// <summary>The algorithm types of this library, each constructible with its defaults.</summary>
    public static IReadOnlyList<Type> Types { get; } = BuiltIn.Select(b => b.WithDefaults().GetType()).ToList();

    /// <summary>The names this catalog can re-create (each the algorithm's <see cref="IAlgorithm.Name"/>).</summary>
    public static IReadOnlyCollection<string> Names => Factories.Keys;

    /// <summary>Re-creates the algorithm <paramref name="description"/> describes.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">The name is unknown (the message lists the known names) or the hyperparameters are invalid.</exception>
    public static IAlgorithm Create(AlgorithmDescription description)
    {
        ArgumentNullException.ThrowIfNull(description);
        if (!Factories.TryGetValue(description.Name, out Func<AlgorithmDescription, IAlgorithm>? factory))
        {
            throw new ArgumentException(
                $"Unknown algorithm '{description.Name}'; this library can re-create: {string.Join(", ", Factories.Keys)}.", nameof(description));
        }

        return factory(description);
    }
}
