using ComposerSharp.Core;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's Alibi (Press, Smith and Lewis 2021, "Train Short, Test Long"): at Init, the BERT/GPT trunks drop their
/// position embeddings and bias attention scores linearly by distance instead (<see cref="Functional.ApplyAlibi"/>),
/// which lets a model trained on short sequences run on longer ones; at AfterDataloader, training batches are
/// reshaped to sequences <c>train_sequence_length_scaling</c> times as long (<see cref="Functional.ScaleSequenceLength"/>).
/// Method card: README.md beside this file. Source: Composer's composer/algorithms/alibi.
/// </summary>
public sealed class Alibi : Algorithm
{
    /// <summary>The registered name.</summary>
    public const string AlgorithmName = "alibi";

    private const string MaxSequenceLengthKey = "max_sequence_length";
    private const string ScalingKey = "train_sequence_length_scaling";

    private bool _applied;

    /// <summary>Creates the algorithm (Composer's options <c>max_sequence_length</c>, <c>train_sequence_length_scaling</c>).</summary>
    /// <param name="maxSequenceLength">Longest sequence the model accepts after the surgery (training and evaluation); null keeps the model's own (Composer requires it).</param>
    /// <param name="trainSequenceLengthScaling">In (0, 1]: training batches [B, T] become [B/s, T·s]; Composer's default 0.25. 1 leaves them alone.</param>
    /// <exception cref="ArgumentOutOfRangeException">A length below 1 or a scaling outside (0, 1].</exception>
    public Alibi(int? maxSequenceLength = null, double trainSequenceLengthScaling = 0.25)
    {
        if (maxSequenceLength is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(maxSequenceLength), maxSequenceLength, "max_sequence_length must be at least 1.");
        }

        if (!(trainSequenceLengthScaling > 0 && trainSequenceLengthScaling <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(trainSequenceLengthScaling), trainSequenceLengthScaling, "train_sequence_length_scaling must be in (0, 1].");
        }

        MaxSequenceLength = maxSequenceLength;
        TrainSequenceLengthScaling = trainSequenceLengthScaling;
    }

    /// <summary><c>alibi</c>.</summary>
    public override string Name => AlgorithmName;

    /// <summary>The longest sequence accepted after the surgery, or null for the model's own.</summary>
    public int? MaxSequenceLength { get; }

    /// <summary>The factor applied to the training sequence length.</summary>
    public double TrainSequenceLengthScaling { get; }

    /// <summary>True: the model's forward changes (no position embedding).</summary>
    public override bool RequiredOnLoad => true;

    /// <summary>Init (once) and, when the scaling is not 1, AfterDataloader.</summary>
    public override bool Match(Event e, State state) =>
        (e == Event.Init && !_applied) || (e == Event.AfterDataloader && TrainSequenceLengthScaling != 1);

    /// <summary>Init: the surgery (logs <c>alibi/modules_replaced</c>, the number of trunks). AfterDataloader: reshapes <c>state.Batch</c>.</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException">A batch that cannot be reshaped (see <see cref="Functional.ScaleSequenceLength"/>).</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        if (e == Event.Init)
        {
            ILogger log = state.LoggerFactory.CreateLogger<Alibi>();
            if (TrainSequenceLengthScaling != 1 && state.Algorithms.Any(a => a.Name == SeqLengthWarmup.AlgorithmName))
            {
                // A conflicting pair: both set the training sequence length at after_dataloader, one after the other.
                log.LogWarning(
                    "alibi's train_sequence_length_scaling = {Scaling} and seq_length_warmup both change the training sequence length at after_dataloader, " +
                    "so the lengths trained on are neither's schedule. Set train_sequence_length_scaling: 1.0 to let seq_length_warmup decide.",
                    TrainSequenceLengthScaling);
            }

            int count = Functional.ApplyAlibi(state.Model, MaxSequenceLength, log);
            logger.LogMetric(Name + ModuleSurgery.ModulesReplacedMetricSuffix, count);
            _applied = true;
        }
        else if (e == Event.AfterDataloader)
        {
            state.Batch = Functional.ScaleSequenceLength(state.Batch ?? throw new InvalidOperationException("Alibi runs at after_dataloader but the state has no batch."), TrainSequenceLengthScaling);
        }

        return null;
    }

    /// <summary>Name, <c>train_sequence_length_scaling</c>, and <c>max_sequence_length</c> when set.</summary>
    public override AlgorithmDescription Describe()
    {
        var h = new Dictionary<string, string> { [ScalingKey] = HyperparameterReader.Text(TrainSequenceLengthScaling) };
        if (MaxSequenceLength is { } max)
        {
            h[MaxSequenceLengthKey] = HyperparameterReader.Text(max);
        }

        return new AlgorithmDescription(Name, h);
    }

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown key or a malformed value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value out of range.</exception>
    public static Alibi FromDescription(AlgorithmDescription description)
    {
        var r = new HyperparameterReader(description, AlgorithmName, MaxSequenceLengthKey, ScalingKey);
        int? max = description.Hyperparameters.ContainsKey(MaxSequenceLengthKey) ? r.Int(MaxSequenceLengthKey, 0) : null;
        return new Alibi(max, r.Double(ScalingKey, 0.25));
    }

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Name}(max_sequence_length={MaxSequenceLength?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "model"}, train_sequence_length_scaling={HyperparameterReader.Text(TrainSequenceLengthScaling)})";
}
