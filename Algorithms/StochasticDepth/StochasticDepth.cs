using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>How StochasticDepth spreads <c>drop_rate</c> over the blocks (Composer's <c>drop_distribution</c>).</summary>
public enum DropDistribution
{
    /// <summary>Block l of L (1-based) gets drop_rate · l / L: the deepest block drops most (Huang et al. 2016's linear decay of survival).</summary>
    Linear,

    /// <summary>Every block gets drop_rate.</summary>
    Uniform,
}

public static partial class Functional
{
    /// <summary>
    /// Sets a <see cref="LayerDrop"/> as the <see cref="TransformerBlock.ResidualPolicy"/> of every transformer block of
    /// <paramref name="model"/> (replacing any policy there), in depth order, with the rate from <paramref name="dropRate"/> and <paramref name="distribution"/>
    /// (Composer's <c>apply_stochastic_depth</c> with <c>stochastic_method='block'</c>, for transformer blocks).
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="dropRate">Base probability in [0, 1].</param>
    /// <param name="distribution">Linear (default) or uniform over depth.</param>
    /// <param name="logger">Receives the no-effect warning; none when null.</param>
    /// <returns>The number of blocks set.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dropRate"/> outside [0, 1] or an undefined distribution.</exception>
    public static int ApplyStochasticDepth(nn.Module model, double dropRate = 0.2, DropDistribution distribution = DropDistribution.Linear, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (!(dropRate >= 0 && dropRate <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropRate), dropRate, "drop_rate must be a probability in [0, 1].");
        }

        if (!Enum.IsDefined(distribution))
        {
            throw new ArgumentOutOfRangeException(nameof(distribution), distribution, "Expected linear or uniform.");
        }

        List<TransformerBlock> blocks = ModuleSurgery.NamedModules(model).Select(m => m.Module).OfType<TransformerBlock>().ToList();
        if (blocks.Count == 0)
        {
            (logger ?? NullLogger.Instance).LogWarning("StochasticDepth found no TransformerBlock in the model; it has no effect.");
        }

        for (int i = 0; i < blocks.Count; i++)
        {
            blocks[i].ResidualPolicy = new LayerDrop(distribution == DropDistribution.Linear ? dropRate * (i + 1) / blocks.Count : dropRate);
        }

        return blocks.Count;
    }
}

/// <summary>
/// Composer's StochasticDepth for transformer blocks (layer drop): each block is skipped in training with a
/// probability that grows with depth (<c>drop_distribution: linear</c>) or is the same for all (<c>uniform</c>), and
/// in evaluation its residual branches are scaled by the survival probability (Huang et al. 2016, "Deep Networks with
/// Stochastic Depth"; Fan et al. 2019, "Reducing Transformer Depth on Demand with Structured Dropout"). With
/// <c>drop_warmup</c> the rate ramps up linearly from 0 over that fraction of training, updated at every BatchStart.
/// Source: Composer's composer/algorithms/stochastic_depth (block method).
/// </summary>
/// <remarks>
/// Composer's <c>target_layer_name</c> (ResNet bottlenecks) and <c>stochastic_method: sample</c> are not offered:
/// the target is always <see cref="TransformerBlock"/> and a block is dropped for the whole batch. A skipped block's
/// parameters get no gradient for that step; data-parallel training would then need unused-parameter handling, which
/// this library's gradient buckets do not have, so use it on one process.
/// </remarks>
public sealed class StochasticDepth : Algorithm
{
    /// <summary>The registered name.</summary>
    public const string AlgorithmName = "stochastic_depth";

    private const string DropRateKey = "drop_rate";
    private const string DistributionKey = "drop_distribution";
    private const string WarmupKey = "drop_warmup";

    /// <summary>Creates the algorithm (Composer's options and defaults).</summary>
    /// <param name="dropRate">Base drop probability in [0, 1]; default 0.2.</param>
    /// <param name="dropDistribution">linear (default) or uniform.</param>
    /// <param name="dropWarmup">Fraction of training (in [0, 1]) over which the rate ramps up from 0; default 0 (no warmup).</param>
    /// <exception cref="ArgumentOutOfRangeException">A value out of range.</exception>
    public StochasticDepth(double dropRate = 0.2, DropDistribution dropDistribution = DropDistribution.Linear, double dropWarmup = 0.0)
    {
        if (!(dropRate >= 0 && dropRate <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropRate), dropRate, "drop_rate must be a probability in [0, 1].");
        }

        if (!Enum.IsDefined(dropDistribution))
        {
            throw new ArgumentOutOfRangeException(nameof(dropDistribution), dropDistribution, "Expected linear or uniform.");
        }

        if (!(dropWarmup >= 0 && dropWarmup <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(dropWarmup), dropWarmup, "drop_warmup must be a fraction of training in [0, 1].");
        }

        DropRate = dropRate;
        DropDistribution = dropDistribution;
        DropWarmup = dropWarmup;
    }

    /// <summary><c>stochastic_depth</c>.</summary>
    public override string Name => AlgorithmName;

    /// <summary>Base drop probability.</summary>
    public double DropRate { get; }

    /// <summary>Spread over depth.</summary>
    public DropDistribution DropDistribution { get; }

    /// <summary>Fraction of training of the ramp-up.</summary>
    public double DropWarmup { get; }

    /// <summary>The base rate in force after the last <see cref="Apply"/>.</summary>
    public double CurrentDropRate { get; private set; }

    /// <summary>Init, and BatchStart when there is a warmup.</summary>
    public override bool Match(Event e, State state) => e == Event.Init || (e == Event.BatchStart && DropWarmup > 0);

    /// <summary>Sets the blocks' rates: at Init the full rate (0 with a warmup); at BatchStart drop_rate · min(1, elapsed / drop_warmup). Logs <c>stochastic_depth/drop_rate</c> at BatchStart.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        if (e == Event.Init)
        {
            CurrentDropRate = DropWarmup > 0 ? 0.0 : DropRate;
            if (DropRate == 0)
            {
                state.LoggerFactory.CreateLogger<StochasticDepth>().LogWarning("StochasticDepth has no effect with drop_rate 0.");
            }
        }
        else
        {
            double elapsed = state.ElapsedDuration?.Value ?? 0.0;
            CurrentDropRate = DropRate * Math.Min(1.0, elapsed / DropWarmup);
            logger.LogMetric("stochastic_depth/drop_rate", CurrentDropRate);
        }

        Functional.ApplyStochasticDepth(state.Model, CurrentDropRate, DropDistribution, e == Event.Init ? state.LoggerFactory.CreateLogger<StochasticDepth>() : null);
        return null;
    }

    /// <summary>The three options.</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [DropRateKey] = HyperparameterReader.Text(DropRate),
        [DistributionKey] = HyperparameterReader.SnakeName(DropDistribution),
        [WarmupKey] = HyperparameterReader.Text(DropWarmup),
    });

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown key or a malformed value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value out of range.</exception>
    public static StochasticDepth FromDescription(AlgorithmDescription description)
    {
        var r = new HyperparameterReader(description, AlgorithmName, DropRateKey, DistributionKey, WarmupKey);
        return new StochasticDepth(r.Double(DropRateKey, 0.2), r.Enum<DropDistribution>(DistributionKey) ?? DropDistribution.Linear, r.Double(WarmupKey, 0.0));
    }
}
