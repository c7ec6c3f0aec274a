using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models.Decoders;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// LowPrecisionRMSNorm: on <see cref="LowPrecisionNormAlgorithm.ApplyAt"/> (Init by default) replaces every
/// <see cref="RMSNorm"/> of the model (e.g. the norms of <see cref="LlamaForCausalLM"/>) with an
/// <see cref="LPRMSNorm"/>, so RMS normalisation runs in the autocast dtype (BFloat16 under <c>amp_bf16</c>, Float16
/// under <c>amp_fp16</c>). Source: llm-foundry's <c>LPRMSNorm</c> (llmfoundry/models/layers/norm.py, selected there by
/// <c>norm_type: low_precision_rmsnorm</c>), applied by surgery as Composer's LowPrecisionLayerNorm does. No
/// hyperparameters; each norm keeps its eps and its weight <c>Parameter</c> object.
/// </summary>
/// <remarks>Under <c>fp32</c> it changes nothing and logs a warning; a model without RMSNorm gets a warning. It touches no LayerNorm (that is <see cref="LowPrecisionLayerNorm"/>'s job).</remarks>
public sealed class LowPrecisionRMSNorm : LowPrecisionNormAlgorithm
{
    /// <summary>The algorithm's name and config key, <c>low_precision_rmsnorm</c> (llm-foundry's norm_type name).</summary>
    public const string AlgorithmName = "low_precision_rmsnorm";

    /// <summary>Creates the algorithm.</summary>
    /// <param name="applyAt">Init (default), BeforeLoad or AfterLoad.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="applyAt"/> is another event.</exception>
    public LowPrecisionRMSNorm(Event applyAt = Event.Init)
        : base(applyAt)
    {
    }

    /// <summary><c>low_precision_rmsnorm</c>.</summary>
    public override string Name => AlgorithmName;

    /// <summary>Re-creates the algorithm from what <see cref="LowPrecisionNormAlgorithm.Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown hyperparameter, or a bad <c>apply_at</c>.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><c>apply_at</c> is not init, before_load or after_load.</exception>
    public static LowPrecisionRMSNorm FromDescription(AlgorithmDescription description) =>
        new(ReadApplyAt(description, AlgorithmName));

    /// <inheritdoc/>
    protected override int ApplySurgery(State state, ILogger log) =>
        Functional.ApplyLowPrecisionRMSNorm(state.Model, state.Precision, state.Optimizers, log);
}

public static partial class Functional
{
    /// <summary>
    /// Replaces every <see cref="RMSNorm"/> below <paramref name="model"/> with an <see cref="LPRMSNorm"/> that takes
    /// over its weight, with the same rules as <see cref="ApplyLowPrecisionLayerNorm"/> (nothing under fp32, with a warning).
    /// </summary>
    /// <param name="model">The model; changed in place by <see cref="ModuleSurgery.ReplaceModuleClasses"/>.</param>
    /// <param name="precision">The run's precision.</param>
    /// <param name="optimizers">Optimizers built on the model (the parameters are reused, so they need no change).</param>
    /// <param name="logger">Receives the warnings and the count; none when null.</param>
    /// <returns>The number of distinct <see cref="RMSNorm"/> modules replaced.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself an <see cref="RMSNorm"/>.</exception>
    /// <exception cref="InvalidOperationException">An <see cref="RMSNorm"/> is held where its replacement cannot go (a field declared as <see cref="RMSNorm"/>).</exception>
    public static int ApplyLowPrecisionRMSNorm(
        nn.Module model,
        Precision precision,
        IEnumerable<optim.Optimizer>? optimizers = null,
        ILogger? logger = null) =>
        ApplyLowPrecisionNorm<RMSNorm>(model, precision, optimizers, logger, "LowPrecisionRMSNorm", n => new LPRMSNorm(n), System.Collections.Immutable.ImmutableArray<Type>.Empty);
}
