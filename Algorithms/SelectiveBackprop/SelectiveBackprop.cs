using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's SelectiveBackprop: during the part of training between <see cref="Start"/> and <see cref="End"/> (fractions
/// of the max duration), at <see cref="Event.AfterDataloader"/> runs a gradient-free forward pass over the batch, ranks
/// the samples by their loss and keeps a fraction <see cref="Keep"/> of them, drawn with a preference for the hard
/// (high-loss) ones; only those are trained on. Every <see cref="Interrupt"/>-th batch of an epoch is left whole.
/// Method card: Algorithms/SelectiveBackprop/README.md. Source: Composer's composer/algorithms/selective_backprop;
/// Jiang et al., "Accelerating Deep Learning by Focusing on the Biggest Losers", 2019.
/// </summary>
/// <remarks>
/// Per-sample losses are the model's own <see cref="ComposerModel.Loss"/> on each one-sample slice of the batch
/// (so any model works; for a masked LM a sample's loss is its mean over masked tokens). Every tensor of the batch
/// whose first dimension is the batch size is subset. The training timestamp still counts the samples the dataloader
/// produced (the sampler's position), not the ones kept. The engine runs this algorithm before all others
/// (<see cref="AlgorithmPasses.SortSelectiveBackpropFirst"/>).
/// </remarks>
public sealed class SelectiveBackprop : Algorithm
{
    /// <summary>The <see cref="AlgorithmDescription"/> hyperparameter holding <see cref="Start"/>.</summary>
    public const string StartKey = "start";

    /// <summary>The hyperparameter holding <see cref="End"/>.</summary>
    public const string EndKey = "end";

    /// <summary>The hyperparameter holding <see cref="Keep"/>.</summary>
    public const string KeepKey = "keep";

    /// <summary>The hyperparameter holding <see cref="ScaleFactor"/>.</summary>
    public const string ScaleFactorKey = "scale_factor";

    /// <summary>The hyperparameter holding <see cref="Interrupt"/>.</summary>
    public const string InterruptKey = "interrupt";

    /// <summary>Creates the algorithm (Composer's <c>SelectiveBackprop(start, end, keep, scale_factor, interrupt)</c>).</summary>
    /// <param name="start">Fraction of training at which selection begins, in [0, 1]. Default 0.5.</param>
    /// <param name="end">Fraction at which it ends, in [start, 1]. Default 0.9.</param>
    /// <param name="keep">Fraction of each selected batch kept, in (0, 1]; 1 disables the algorithm. Default 0.5.</param>
    /// <param name="scaleFactor">
    /// In (0, 1]: spatial downsampling of floating inputs of rank 3–5 (images) for the selection pass only; 1 (the
    /// default) leaves the inputs alone. Token batches have no such input, and a value below 1 is then an error.
    /// </param>
    /// <param name="interrupt">Every <paramref name="interrupt"/>-th batch of an epoch is trained whole; 0 selects on every batch. Default 2.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public SelectiveBackprop(double start = 0.5, double end = 0.9, double keep = 0.5, double scaleFactor = 1.0, int interrupt = 2)
    {
        if (!(start >= 0 && start <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(start), start, "start must be a fraction of training in [0, 1].");
        }

        if (!(end >= start && end <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(end), end, $"end must be in [start, 1] = [{start.ToString(CultureInfo.InvariantCulture)}, 1].");
        }

        if (!(keep > 0 && keep <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(keep), keep, "keep must be a fraction of the batch in (0, 1].");
        }

        if (!(scaleFactor > 0 && scaleFactor <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(scaleFactor), scaleFactor, "scale_factor must be in (0, 1].");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(interrupt);
        Start = start;
        End = end;
        Keep = keep;
        ScaleFactor = scaleFactor;
        Interrupt = interrupt;
    }

    /// <summary>Fraction of training at which selection begins.</summary>
    public double Start { get; }

    /// <summary>Fraction of training at which selection ends (exclusive).</summary>
    public double End { get; }

    /// <summary>Fraction of a selected batch kept.</summary>
    public double Keep { get; }

    /// <summary>Downsampling of image inputs for the selection pass.</summary>
    public double ScaleFactor { get; }

    /// <summary>Every how many batches a whole batch is trained (0: never).</summary>
    public int Interrupt { get; }

    /// <summary><see cref="AlgorithmPasses.SelectiveBackpropName"/>: <c>selective_backprop</c>.</summary>
    public override string Name => AlgorithmPasses.SelectiveBackpropName;

    /// <summary>True at Init, and at AfterDataloader when <see cref="Keep"/> &lt; 1 and <see cref="ShouldSelectiveBackprop"/> says so.</summary>
    public override bool Match(Event e, State state)
    {
        ArgumentNullException.ThrowIfNull(state);
        return e == Event.Init || (e == Event.AfterDataloader && Keep < 1 && state.ElapsedDuration is { } elapsed &&
            ShouldSelectiveBackprop(elapsed.Value, state.Timestamp.BatchInEpoch, Start, End, Interrupt));
    }

    /// <summary>
    /// Init (as Composer's, which matches Init too): a BERT MLM that predicts only masked positions is switched to
    /// dense prediction (the per-sample losses need outputs per sample). AfterDataloader: replaces <c>state.Batch</c>
    /// by the kept samples (a batch too small to keep any stays whole). Returns null.
    /// </summary>
    /// <exception cref="InvalidOperationException">No batch, or a model that is not a <see cref="ComposerModel"/>.</exception>
    /// <exception cref="ArgumentException">A <see cref="ScaleFactor"/> below 1 for a batch without image inputs.</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (e == Event.Init)
        {
            DensePrediction.Require(state, Name, "a loss per sample");
            return null;
        }

        Batch batch = state.Batch ?? throw new InvalidOperationException("SelectiveBackprop needs state.Batch at after_dataloader.");
        ComposerModel model = state.Model as ComposerModel
            ?? throw new InvalidOperationException($"SelectiveBackprop needs a ComposerModel (for its loss); state.Model is a {state.Model.GetType().Name}.");
        using (var scope = torch.NewDisposeScope())
        {
            Tensor losses;
            using (torch.no_grad())
            using (state.Precision.Enter(state.Device.type))
            {
                losses = PerSampleLosses(model, ScaleFactor == 1 ? batch : Downsample(batch, ScaleFactor));
            }

            Tensor selected = SelectUsingLoss(losses, Keep);
            if (selected.shape[0] == 0)
            {
                return null; // ⌊keep · N⌋ = 0 (a tiny last batch): train on it whole rather than on nothing
            }

            Batch kept = Subset(batch, selected);
            foreach ((string key, Tensor t) in kept)
            {
                // Only the new (indexed) tensors belong to this scope; they join the training step's scope.
                if (!ReferenceEquals(t, batch[key]))
                {
                    t.MoveToOuterDisposeScope();
                }
            }

            state.Batch = kept;
        }

        return null;
    }

    /// <summary>All five hyperparameters (round-trip format).</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [StartKey] = Start.ToString("R", CultureInfo.InvariantCulture),
        [EndKey] = End.ToString("R", CultureInfo.InvariantCulture),
        [KeepKey] = Keep.ToString("R", CultureInfo.InvariantCulture),
        [ScaleFactorKey] = ScaleFactor.ToString("R", CultureInfo.InvariantCulture),
        [InterruptKey] = Interrupt.ToString(CultureInfo.InvariantCulture),
    });

    /// <inheritdoc/>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Name}(start={Start:R}, end={End:R}, keep={Keep:R}, scale_factor={ScaleFactor:R}, interrupt={Interrupt})");

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, an unknown key, or a value that does not parse.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value outside its range.</exception>
    public static SelectiveBackprop FromDescription(AlgorithmDescription description)
    {
        var reader = new HyperparameterReader(description, AlgorithmPasses.SelectiveBackpropName, StartKey, EndKey, KeepKey, ScaleFactorKey, InterruptKey);
        long interrupt = reader.Long(InterruptKey, 2);
        if (interrupt is < 0 or > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(description), interrupt, "interrupt must be a whole number of batches ≥ 0.");
        }

        return new SelectiveBackprop(reader.Double(StartKey, 0.5), reader.Double(EndKey, 0.9), reader.Double(KeepKey, 0.5), reader.Double(ScaleFactorKey, 1.0), (int)interrupt);
    }

    /// <summary>
    /// Composer's <c>should_selective_backprop</c>: true when <paramref name="currentDuration"/> is in [start, end)
    /// and the batch is not an interrupting one (<paramref name="interrupt"/> = 0, or (batch index + 1) not a multiple of it).
    /// </summary>
    public static bool ShouldSelectiveBackprop(double currentDuration, long batchIndex, double start = 0.5, double end = 0.9, int interrupt = 2) =>
        currentDuration >= start && currentDuration < end && (interrupt == 0 || (batchIndex + 1) % interrupt != 0);

    /// <summary>
    /// Composer's selection rule (<c>select_using_loss</c>): sort the N samples by loss, ascending; give rank i the
    /// probability ∝ ((i + ½)/N)^(1/keep − 1); draw ⌊keep · N⌋ distinct ranks with those probabilities (torch's
    /// generator, so the draw is seeded and resumes with the checkpointed RNG). With keep = 1 every sample has the same
    /// weight.
    /// </summary>
    /// <param name="losses">Per-sample losses, Float32/Float64 [N].</param>
    /// <param name="keep">The fraction to keep, in (0, 1].</param>
    /// <returns>The indices of the kept samples, Int64 [⌊keep · N⌋], in the order drawn.</returns>
    /// <exception cref="ArgumentException"><paramref name="losses"/> is not 1-d.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="keep"/> outside (0, 1].</exception>
    public static Tensor SelectUsingLoss(Tensor losses, double keep)
    {
        ArgumentNullException.ThrowIfNull(losses);
        if (losses.ndim != 1)
        {
            throw new ArgumentException($"losses must be 1-d [N]; got [{string.Join(", ", losses.shape)}].", nameof(losses));
        }

        if (!(keep > 0 && keep <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(keep), keep, "keep must be in (0, 1].");
        }

        using var scope = torch.NewDisposeScope();
        long n = losses.shape[0];
        long nSelect = (long)(keep * n);
        Tensor sorted = torch.argsort(losses.to(ScalarType.Float64));
        Tensor probabilities = SelectionProbabilities(n, keep);
        if (nSelect == 0)
        {
            return torch.empty(0, dtype: ScalarType.Int64, device: losses.device).MoveToOuterDisposeScope();
        }

        Tensor ranks = torch.multinomial(probabilities, nSelect, replacement: false).to(losses.device);
        return sorted.index_select(0, ranks).MoveToOuterDisposeScope();
    }

    /// <summary>The probability of each loss rank (0 = lowest loss), Float64 [N], summing to 1: ((i + ½)/N)^(1/keep − 1), normalised.</summary>
    public static Tensor SelectionProbabilities(long n, double keep)
    {
        using var scope = torch.NewDisposeScope();
        Tensor percentiles = (torch.arange(n, dtype: ScalarType.Float64) + 0.5) / n;
        Tensor weights = percentiles.pow((1.0 / keep) - 1.0);
        return (weights / weights.sum()).MoveToOuterDisposeScope();
    }

    /// <summary>Each sample's loss: the model's <see cref="ComposerModel.Loss"/> on the one-sample slices of its outputs and batch; Float32 [N].</summary>
    internal static Tensor PerSampleLosses(ComposerModel model, Batch batch)
    {
        Tensor outputs = model.call(batch);
        IReadOnlyList<Batch> samples = batch.Split(1);
        var losses = new Tensor[samples.Count];
        for (int i = 0; i < samples.Count; i++)
        {
            losses[i] = model.Loss(outputs.narrow(0, i, 1), samples[i]).to(ScalarType.Float32).reshape(1);
        }

        return torch.cat(losses);
    }

    /// <summary>The batch restricted to <paramref name="indices"/>: every tensor whose first dimension is the batch size is indexed, the others kept.</summary>
    internal static Batch Subset(Batch batch, Tensor indices)
    {
        long n = batch.NumSamples;
        var tensors = new Dictionary<string, Tensor>();
        foreach ((string key, Tensor t) in batch)
        {
            tensors[key] = t.ndim > 0 && t.shape[0] == n ? t.index_select(0, indices.to(t.device)) : t;
        }

        return new Batch(tensors);
    }

    private static Batch Downsample(Batch batch, double scaleFactor)
    {
        var tensors = new Dictionary<string, Tensor>();
        bool any = false;
        foreach ((string key, Tensor t) in batch)
        {
            if (t.is_floating_point() && t.ndim is >= 3 and <= 5)
            {
                double[] factors = Enumerable.Repeat(scaleFactor, (int)t.ndim - 2).ToArray();
                InterpolationMode mode = t.ndim switch { 3 => InterpolationMode.Linear, 4 => InterpolationMode.Bilinear, _ => InterpolationMode.Trilinear };
                tensors[key] = nn.functional.interpolate(t, scale_factor: factors, mode: mode, align_corners: false);
                any = true;
            }
            else
            {
                tensors[key] = t;
            }
        }

        return any
            ? new Batch(tensors)
            : throw new ArgumentException($"scale_factor {scaleFactor.ToString("R", CultureInfo.InvariantCulture)} downsamples image inputs (floating tensors of rank 3–5), but the batch has none (keys: {string.Join(", ", batch.Keys)}); use scale_factor: 1.");
    }
}
