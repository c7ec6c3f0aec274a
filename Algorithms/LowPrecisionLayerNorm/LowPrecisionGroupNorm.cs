using System.Collections.Frozen;
using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

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
