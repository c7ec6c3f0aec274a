using System.Collections.Immutable;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// The algorithms' functional forms, for a plain TorchSharp training loop without the Trainer (Composer's
/// <c>composer.functional</c>). Use them with the autocast scope of the event core, e.g.
/// <c>using (Precision.AmpBf16.Enter(DeviceType.CPU)) { loss = ...; }</c>.
/// </summary>
public static partial class Functional
{
    /// <summary>
    /// TorchSharp's built-in modules that run in libtorch's C++ code, so their internal modules (the LayerNorms of the
    /// transformer layers) cannot be reached by surgery.
    /// </summary>
    internal static readonly ImmutableArray<Type> NativeModuleTypes = ImmutableArray.Create(
        typeof(TransformerEncoderLayer), typeof(TransformerEncoder), typeof(TransformerDecoderLayer), typeof(TransformerDecoder),
        typeof(Transformer), typeof(MultiheadAttention));

    /// <summary>
    /// Replaces every TorchSharp <c>LayerNorm</c> below <paramref name="model"/> with an <see cref="LPLayerNorm"/>
    /// that takes over its parameters, so that layer normalisation runs in the autocast dtype (BFloat16 or Float16)
    /// instead of Float32 (Composer's <c>apply_low_precision_layernorm</c>; method card: "forces LayerNorm modules to
    /// run in float16 or bfloat16 precision ... by model surgery").
    /// </summary>
    /// <param name="model">The model; changed in place by <see cref="ModuleSurgery.ReplaceModuleClasses"/>.</param>
    /// <param name="precision">The run's precision. Under <c>fp32</c> nothing is replaced and a warning says the algorithm has no effect.</param>
    /// <param name="optimizers">Optimizers built on the model; since the parameters are reused they need no change and are passed for the general surgery contract.</param>
    /// <param name="logger">Receives the warnings (no effect, no LayerNorm found, native modules that cannot be reached) and the count; none when null.</param>
    /// <param name="kernel">The CPU kernel of the new modules under BFloat16 autocast (see <see cref="LPLayerNorm"/>); Default: fused when the CPU has AVX2.</param>
    /// <returns>The number of distinct <c>LayerNorm</c> modules replaced.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself a <c>LayerNorm</c> (surgery replaces submodules only).</exception>
    /// <exception cref="InvalidOperationException">A <c>LayerNorm</c> is held where its replacement cannot go, e.g. a field declared as <c>LayerNorm</c>; see <see cref="ModuleSurgery.ReplaceModuleClasses"/>.</exception>
    public static int ApplyLowPrecisionLayerNorm(
        nn.Module model,
        Precision precision,
        IEnumerable<optim.Optimizer>? optimizers = null,
        ILogger? logger = null,
        LayerNormKernel kernel = LayerNormKernel.Default) =>
        ApplyLowPrecisionNorm<LayerNorm>(model, precision, optimizers, logger, "LowPrecisionLayerNorm", ln => new LPLayerNorm(ln, kernel), NativeModuleTypes);

    /// <summary>
    /// Replaces every TorchSharp <c>GroupNorm</c> below <paramref name="model"/> with an <see cref="LPGroupNorm"/>
    /// (Composer's <c>apply_low_precision_groupnorm</c>), with the same rules as <see cref="ApplyLowPrecisionLayerNorm"/>.
    /// </summary>
    /// <returns>The number of distinct <c>GroupNorm</c> modules replaced.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="model"/> is itself a <c>GroupNorm</c>.</exception>
    /// <exception cref="InvalidOperationException">A <c>GroupNorm</c> is held where its replacement cannot go.</exception>
    public static int ApplyLowPrecisionGroupNorm(
        nn.Module model,
        Precision precision,
        IEnumerable<optim.Optimizer>? optimizers = null,
        ILogger? logger = null) =>
        ApplyLowPrecisionNorm<GroupNorm>(model, precision, optimizers, logger, "LowPrecisionGroupNorm", gn => new LPGroupNorm(gn), ImmutableArray<Type>.Empty);

    private static int ApplyLowPrecisionNorm<TNorm>(
        nn.Module model,
        Precision precision,
        IEnumerable<optim.Optimizer>? optimizers,
        ILogger? logger,
        string algorithm,
        Func<TNorm, nn.Module> replace,
        ImmutableArray<Type> hidingTypes)
        where TNorm : nn.Module
    {
        ArgumentNullException.ThrowIfNull(model);
        logger ??= NullLogger.Instance;
        string norm = typeof(TNorm).Name;
        if (model is TNorm)
        {
            throw new ArgumentException(
                $"The model is itself a {norm}; {algorithm} replaces submodules only. Wrap it, e.g. in nn.Sequential.", nameof(model));
        }

        if (!precision.IsAutocast())
        {
            logger.LogWarning(
                "{Algorithm} has no effect with precision {Precision}: {Norm} already runs in Float32 without autocast. Use amp_bf16 or amp_fp16.",
                algorithm, precision.ToComposerName(), norm);
            return 0;
        }

        List<string> hidden = ModuleSurgery.NamedModules(model)
            .Where(m => hidingTypes.Any(t => t.IsInstanceOfType(m.Module)))
            .Select(m => $"{m.Path} ({m.Module.GetType().Name})")
            .ToList();
        if (hidden.Count > 0)
        {
            logger.LogWarning(
                "{Algorithm} cannot reach the {Norm} modules inside TorchSharp's native modules {Modules}: they run in libtorch's C++ code, " +
                "so their layer norms keep the dtype autocast gives them. Build the blocks from managed modules (Linear, LayerNorm, ...) to convert them.",
                algorithm, norm, string.Join(", ", hidden));
        }

        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(
            model, new[] { SurgeryPolicy.For<TNorm>((m, _) => replace(m)) }, optimizers);

        if (replaced.Count == 0 && hidden.Count == 0)
        {
            logger.LogWarning("{Algorithm} found no {Norm} modules in the model; it has no effect.", algorithm, norm);
        }

        logger.LogInformation("{Algorithm} replaced {Count} {Norm} modules with their low-precision form.", algorithm, replaced.Count, norm);
        return replaced.Count;
    }
}
