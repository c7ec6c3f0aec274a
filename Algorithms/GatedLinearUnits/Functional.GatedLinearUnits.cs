using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

public static partial class Functional
{
    /// <summary>
    /// Replaces the feed-forward block of every <see cref="TransformerBlock"/> below <paramref name="model"/> (BERT's
    /// and GPT's <see cref="FeedForward"/>) with a <see cref="GatedFeedForward"/>, and in post-LN blocks the LayerNorm
    /// after the feed-forward residual add (<c>ln_2</c>) with a fresh LayerNorm of the same shape and eps, as Composer's
    /// <c>apply_gated_linear_units</c> replaces Hugging Face's <c>BertIntermediate</c> and <c>BertOutput</c> (whose
    /// LayerNorm it rebuilds). One find-check-change <see cref="ModuleSurgery.ReplaceModuleClasses"/> call: nothing
    /// changes when a reference cannot hold a replacement.
    /// </summary>
    /// <param name="model">The model, changed in place.</param>
    /// <param name="optimizers">Optimizers built on the model; the old parameters are replaced by the new ones in them (see <see cref="ModuleSurgery.UpdateParamsInOptimizers"/>).</param>
    /// <param name="actFn">The GLU activation; null takes the feed-forward blocks' own (GELU for BERT, tanh GELU for GPT).</param>
    /// <param name="gatedLayerBias">Whether <c>gated_layer</c> has a bias.</param>
    /// <param name="nonGatedLayerBias">Whether <c>non_gated_layer</c> has a bias.</param>
    /// <param name="logger">Receives the count and the no-effect warning; none when null.</param>
    /// <param name="initializerRange">Standard deviation of the new weights' normal initialization (BERT: 0.02).</param>
    /// <returns>The number of feed-forward blocks replaced (0 when there is none, e.g. the surgery already ran).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="actFn"/> is null and the feed-forward blocks use different activations.</exception>
    /// <exception cref="InvalidOperationException">A block is held where its replacement cannot go (see <see cref="ModuleSurgery.ReplaceModuleClasses"/>).</exception>
    public static int ApplyGatedLinearUnits(
        nn.Module model,
        IEnumerable<optim.Optimizer>? optimizers = null,
        GluActivation? actFn = null,
        bool gatedLayerBias = false,
        bool nonGatedLayerBias = false,
        ILogger? logger = null,
        double initializerRange = 0.02)
    {
        ArgumentNullException.ThrowIfNull(model);
        logger ??= NullLogger.Instance;
        IReadOnlyList<(string Path, nn.Module Module)> modules = ModuleSurgery.NamedModules(model);
        List<FeedForward> feedForwards = modules.Select(m => m.Module).OfType<FeedForward>().ToList();
        if (feedForwards.Count == 0)
        {
            logger.LogWarning(
                "GatedLinearUnits found no FeedForward block (of TransformerBlock) in the model, so it has no effect; the surgery may have run already.");
            return 0;
        }

        GluActivation activation = actFn ?? SharedActivation(feedForwards);

        // Post-LN blocks: the LayerNorm after the feed-forward residual add belongs to the output sublayer that Composer rebuilds.
        var outputNorms = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (TransformerBlock block in modules.Select(m => m.Module).OfType<TransformerBlock>())
        {
            if (!block.PreLayerNorm && block.Mlp is FeedForward)
            {
                outputNorms.Add(block.LayerNorm2);
            }
        }

        var policies = new[]
        {
            SurgeryPolicy.For<FeedForward>((ff, _) => new GatedFeedForward(
                ff.InProjection.in_features, ff.InProjection.out_features, activation, gatedLayerBias, nonGatedLayerBias, initializerRange)),
            new SurgeryPolicy(typeof(nn.Module), (m, _) => outputNorms.Contains(m) ? FreshLayerNorm(m) : null),
        };
        IReadOnlyDictionary<nn.Module, nn.Module> replaced = ModuleSurgery.ReplaceModuleClasses(model, policies, optimizers);
        int blocks = replaced.Keys.Count(m => m is FeedForward);
        logger.LogInformation(
            "GatedLinearUnits replaced {Blocks} feed-forward blocks with gated ones (act_fn {Activation}) and rebuilt {Norms} post-feed-forward LayerNorms.",
            blocks, HyperparameterReader.SnakeName(activation), replaced.Count - blocks);
        return blocks;
    }

#pragma warning disable CA2208 // The parameter named is the public option (Functional.ApplyGatedLinearUnits' actFn) the caller should set.
    private static GluActivation SharedActivation(IReadOnlyList<FeedForward> feedForwards)
    {
        HiddenActivation[] distinct = feedForwards.Select(f => f.Activation).Distinct().ToArray();
        if (distinct.Length > 1)
        {
            throw new ArgumentException(
                $"GatedLinearUnits: act_fn is not set and the feed-forward blocks use different activations ({string.Join(", ", distinct)}); set act_fn to one of gelu, gelu_tanh, relu, silu.",
                "actFn");
        }

        return distinct[0] switch
        {
            HiddenActivation.Gelu => GluActivation.Gelu,
            HiddenActivation.GeluTanh => GluActivation.GeluTanh,
            _ => throw new ArgumentException($"GatedLinearUnits has no gated form of the activation {distinct[0]}; set act_fn.", "actFn"),
        };
    }
#pragma warning restore CA2208

    /// <summary>A new LayerNorm (weight 1, bias 0) with the shape, eps and affinity of <paramref name="norm"/>, a LayerNorm or an LPLayerNorm; null (left alone) for another module.</summary>
    private static nn.Module? FreshLayerNorm(nn.Module norm) => norm switch
    {
        LayerNorm ln => nn.LayerNorm(ln.normalized_shape, ln.eps, ln.elementwise_affine),
        LPLayerNorm lp => nn.LayerNorm(lp.normalized_shape, lp.eps, lp.elementwise_affine),
        _ => null,
    };
}
