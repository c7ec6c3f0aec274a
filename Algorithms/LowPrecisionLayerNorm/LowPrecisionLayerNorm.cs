using System.Collections.Frozen;
using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

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
