using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's LabelSmoothing: at <see cref="Event.BeforeLoss"/> replaces the batch's hard targets with distributions
/// shrunk towards uniform, q = (1 − α)·onehot(y) + α/C, and at <see cref="Event.AfterLoss"/> puts the original
/// targets back, so the loss is computed against the smoothed targets while training metrics and everything else see
/// the real labels. Method card: Algorithms/LabelSmoothing/README.md. Source: Composer's
/// composer/algorithms/label_smoothing; Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
/// CVPR 2016.
/// </summary>
/// <remarks>
/// Needs a model whose loss accepts target distributions in place of class ids: the library's BERT models (masked LM
/// and sequence classification) do, through <c>Losses.CrossEntropy</c>. Positions labelled −100 (not masked, padding)
/// get an all-zero distribution and stay ignored. GPT derives its targets from <c>input_ids</c> and is not supported
/// (the batch has no <see cref="TargetKey"/>: a clear error). The smoothed targets are Float32 of the logits' shape,
/// [B, T, V] for a masked LM: B·T·V·4 bytes per microbatch while the loss is computed.
/// </remarks>
public sealed class LabelSmoothing : Algorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="Smoothing"/>.</summary>
    public const string SmoothingKey = "smoothing";

    /// <summary>The hyperparameter holding <see cref="TargetKey"/>.</summary>
    public const string TargetKeyKey = "target_key";

    private Batch? _original;

    /// <summary>Creates the algorithm (Composer's <c>LabelSmoothing(smoothing, target_key)</c>).</summary>
    /// <param name="smoothing">α in [0, 1]: 0 leaves the targets one-hot, 1 makes them uniform. Default 0.1.</param>
    /// <param name="targetKey">The batch key of the targets (Composer's <c>target_key</c>, there a tuple index); default <c>labels</c>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="smoothing"/> outside [0, 1].</exception>
    /// <exception cref="ArgumentException"><paramref name="targetKey"/> is empty.</exception>
    public LabelSmoothing(double smoothing = 0.1, string targetKey = "labels")
    {
        if (!(smoothing >= 0 && smoothing <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(smoothing), smoothing, "smoothing must be in [0, 1].");
        }

        ArgumentException.ThrowIfNullOrWhiteSpace(targetKey);
        Smoothing = smoothing;
        TargetKey = targetKey;
    }

    /// <summary>α, the weight moved from the true class to the uniform distribution.</summary>
    public double Smoothing { get; }

    /// <summary>The batch key of the targets.</summary>
    public string TargetKey { get; }

    /// <summary><c>label_smoothing</c>.</summary>
    public override string Name => "label_smoothing";

    /// <summary>True at BeforeLoss and AfterLoss.</summary>
    public override bool Match(Event e, State state) => e is Event.Init or Event.BeforeLoss or Event.AfterLoss;

    /// <summary>
    /// Init: a BERT MLM that predicts only masked positions is switched to dense prediction (the smoothed targets are
    /// per token). BeforeLoss: puts the smoothed targets into <c>state.Batch</c>; AfterLoss: restores the batch. Returns null.
    /// </summary>
    /// <exception cref="InvalidOperationException">No batch or outputs at BeforeLoss, or the batch has no <see cref="TargetKey"/>.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (e == Event.Init)
        {
            DensePrediction.Require(state, Name, "a target distribution at every token");
            return null;
        }

        if (e == Event.AfterLoss)
        {
            if (_original is not null)
            {
                state.Batch = _original;
                _original = null;
            }

            return null;
        }

        Batch batch = state.Batch ?? throw new InvalidOperationException("LabelSmoothing needs state.Batch at before_loss.");
        Tensor outputs = state.Outputs ?? throw new InvalidOperationException("LabelSmoothing needs state.Outputs (the logits) at before_loss.");
        if (!batch.TryGetValue(TargetKey, out Tensor? targets))
        {
            throw new InvalidOperationException(
                $"LabelSmoothing's target_key '{TargetKey}' is not in the batch (keys: {string.Join(", ", batch.Keys)}); models that derive their targets from the inputs (GPT) are not supported.");
        }

        var tensors = batch.ToDictionary(kv => kv.Key, kv => kv.Value);
        tensors[TargetKey] = SmoothLabels(outputs, targets, Smoothing);
        _original = batch;
        state.Batch = new Batch(tensors, batch.NumTokens);
        return null;
    }

    /// <summary><c>smoothing</c> (round-trip format) and <c>target_key</c>.</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [SmoothingKey] = Smoothing.ToString("R", CultureInfo.InvariantCulture),
        [TargetKeyKey] = TargetKey,
    });

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Name}(smoothing={Smoothing:R}, target_key={TargetKey})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or a value that does not parse.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A smoothing outside [0, 1].</exception>
    public static LabelSmoothing FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, "label_smoothing", SmoothingKey, TargetKeyKey);
        return new LabelSmoothing(reader.Double(SmoothingKey, 0.1), reader.String(TargetKeyKey) is { Length: > 0 } key ? key : "labels");
    }

    /// <summary>
    /// The functional form (Composer's <c>smooth_labels</c>): (1 − α)·targets + α/C as Float32 of the logits' shape
    /// [..., C], with C the logits' last dimension (Composer uses dimension 1, for images; our models put classes last).
    /// </summary>
    /// <param name="logits">The model's outputs [..., C] (any dtype; only the shape is used).</param>
    /// <param name="targets">
    /// Class ids Int64 [...] in [0, C) or <paramref name="ignoreIndex"/> (whose rows become all zero, so the loss
    /// still ignores them), or distributions of the logits' shape (smoothed the same way).
    /// </param>
    /// <param name="smoothing">α in [0, 1].</param>
    /// <param name="ignoreIndex">The id of ignored positions (−100, PyTorch's default).</param>
    /// <returns>Float32 [..., C] on the targets' device, a new tensor.</returns>
    /// <exception cref="ArgumentException">The shapes match neither form, or a class id is out of range.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="smoothing"/> outside [0, 1].</exception>
    public static Tensor SmoothLabels(Tensor logits, Tensor targets, double smoothing, long ignoreIndex = -100)
    {
        ArgumentNullException.ThrowIfNull(logits);
        ArgumentNullException.ThrowIfNull(targets);
        if (!(smoothing >= 0 && smoothing <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(smoothing), smoothing, "smoothing must be in [0, 1].");
        }

        long classes = logits.shape[^1];
        using var scope = torch.NewDisposeScope();
        if (targets.is_floating_point())
        {
            if (!targets.shape.SequenceEqual(logits.shape))
            {
                throw new ArgumentException($"Target distributions [{string.Join(", ", targets.shape)}] must have the logits' shape [{string.Join(", ", logits.shape)}].", nameof(targets));
            }

            Tensor dist = targets.to(ScalarType.Float32);
            Tensor kept = dist.ne(0).any(-1, keepdim: true);
            return (((dist * (1.0 - smoothing)) + (smoothing / classes)) * kept).MoveToOuterDisposeScope();
        }

        if (!targets.shape.SequenceEqual(logits.shape.Take(logits.shape.Length - 1)))
        {
            throw new ArgumentException(
                $"Class ids [{string.Join(", ", targets.shape)}] do not match logits [{string.Join(", ", logits.shape)}]; expected ids [...] for logits [..., C].", nameof(targets));
        }

        Tensor ignored = targets.eq(ignoreIndex);
        Tensor ids = targets.masked_fill(ignored, 0);
        if (ids.numel() > 0 && (ids.min().item<long>() < 0 || ids.max().item<long>() >= classes))
        {
            throw new ArgumentException($"Class ids must be in [0, {classes}) or {ignoreIndex}; got values in [{targets.min().item<long>()}, {targets.max().item<long>()}].", nameof(targets));
        }

        Tensor oneHot = torch.nn.functional.one_hot(ids, classes).to(ScalarType.Float32);
        Tensor smoothed = (oneHot * (1.0 - smoothing)) + (smoothing / classes);
        return smoothed.masked_fill(ignored.unsqueeze(-1), 0).MoveToOuterDisposeScope();
    }
}
