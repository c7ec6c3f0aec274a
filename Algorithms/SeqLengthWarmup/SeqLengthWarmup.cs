using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Composer's SeqLengthWarmup (Li, Zhang and He 2022, "The Stability-Efficiency Dilemma: Investigating Sequence Length
/// Warmup for Training GPT Models"): at AfterDataloader, training batches are cut (or reshaped) to a sequence length
/// that grows from <c>min_seq_length</c> to <c>max_seq_length</c> in steps of <c>step_size</c> over the first
/// <c>duration</c> of training, then stays at <c>max_seq_length</c>. Before the first short batch, one forward and
/// backward pass at <c>max_seq_length</c> (gradients then zeroed) reserves the memory of the longest step, as Composer
/// does. Method card: README.md beside this file. Source: Composer's composer/algorithms/seq_length_warmup.
/// </summary>
public sealed class SeqLengthWarmup : Algorithm
{
    /// <summary>The registered name.</summary>
    public const string AlgorithmName = "seq_length_warmup";

    private const string DurationKey = "duration";
    private const string MinKey = "min_seq_length";
    private const string MaxKey = "max_seq_length";
    private const string StepKey = "step_size";
    private const string TruncateKey = "truncate";

    private bool _activated;

    /// <summary>Creates the algorithm with Composer's options and defaults.</summary>
    /// <param name="duration">Fraction of training (max_duration) over which the length grows, in [0, 1]; default 0.3.</param>
    /// <param name="minSeqLength">First sequence length, at least 1; default 8.</param>
    /// <param name="maxSeqLength">Final sequence length, at least <paramref name="minSeqLength"/>; default 1024.</param>
    /// <param name="stepSize">Increment of the length, at least 1; default 8.</param>
    /// <param name="truncate">Truncate the sequences (true, default) or reshape the batch into more, shorter sequences.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value out of range (the message names it).</exception>
    public SeqLengthWarmup(double duration = 0.3, int minSeqLength = 8, int maxSeqLength = 1024, int stepSize = 8, bool truncate = true)
    {
        if (!(duration >= 0 && duration <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(duration), duration, "duration must be a fraction of training in [0, 1].");
        }

        ArgumentOutOfRangeException.ThrowIfLessThan(minSeqLength, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(stepSize, 1);
        if (maxSeqLength < minSeqLength)
        {
            throw new ArgumentOutOfRangeException(nameof(maxSeqLength), maxSeqLength, $"max_seq_length must be at least min_seq_length ({minSeqLength}).");
        }

        Duration = duration;
        MinSeqLength = minSeqLength;
        MaxSeqLength = maxSeqLength;
        StepSize = stepSize;
        Truncate = truncate;
    }

    /// <summary><c>seq_length_warmup</c>.</summary>
    public override string Name => AlgorithmName;

    /// <summary>Fraction of training of the warmup.</summary>
    public double Duration { get; }

    /// <summary>First sequence length.</summary>
    public int MinSeqLength { get; }

    /// <summary>Final sequence length.</summary>
    public int MaxSeqLength { get; }

    /// <summary>Increment of the length.</summary>
    public int StepSize { get; }

    /// <summary>Truncate (true) or reshape (false).</summary>
    public bool Truncate { get; }

    /// <summary>Sequence length of the last batch the algorithm set, or null before the first.</summary>
    public int? CurrentSequenceLength { get; private set; }

    /// <summary>AfterDataloader.</summary>
    public override bool Match(Event e, State state) => e == Event.AfterDataloader;

    /// <summary>
    /// The sequence length at batch <paramref name="batch"/> (0-based) of a run of <paramref name="totalBatches"/>
    /// optimization steps, with Composer's rule: warmup steps W = ⌊total·duration⌋, updates U = ⌊(max − min)/step⌋,
    /// one update every N = ⌊W/U⌋ batches, length = min + step·⌊batch/N⌋, clamped to [min, max]. When N would be 0
    /// (Composer divides by zero there) or there is no update, the length is max from the first batch after the warmup.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative batch or total.</exception>
    public int SequenceLengthAt(long batch, long totalBatches)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(totalBatches);
        long warmup = (long)(totalBatches * Duration);
        long updates = (MaxSeqLength - MinSeqLength) / StepSize;
        long every = updates == 0 ? 0 : warmup / updates;
        if (every == 0)
        {
            return batch < warmup ? MinSeqLength : MaxSeqLength;
        }

        long length = MinSeqLength + (StepSize * (batch / every));
        return (int)Math.Clamp(length, MinSeqLength, MaxSeqLength);
    }

    /// <summary>
    /// Sets <c>state.Batch</c> to the current sequence length (the first call first runs one forward and backward pass
    /// at <c>max_seq_length</c> and zeroes the gradients), and logs <c>seq_length_warmup/curr_seq_len</c> and
    /// <c>seq_length_warmup/curr_bs</c>.
    /// </summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="InvalidOperationException">No batch, no max duration, a max duration not in epochs or batches, epochs without a sized dataloader, or a model that is not a ComposerModel.</exception>
    /// <exception cref="ArgumentException">A batch tensor that is not [B, T].</exception>
    public override int? Apply(Event e, State state, Logger logger)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(logger);
        Batch batch = state.Batch ?? throw new InvalidOperationException("SeqLengthWarmup runs at after_dataloader but the state has no batch.");
        long total = TotalBatches(state);
        if (!_activated)
        {
            ReserveMemory(state, batch);
            _activated = true;
        }

        int length = SequenceLengthAt(state.Timestamp.Batch, total);
        state.Batch = Functional.SetBatchSequenceLength(batch, length, Truncate);
        CurrentSequenceLength = length;
        logger.LogMetric("seq_length_warmup/curr_seq_len", length);
        logger.LogMetric("seq_length_warmup/curr_bs", state.Batch.NumSamples);
        return null;
    }

    /// <summary>All five options.</summary>
    public override AlgorithmDescription Describe() => new(Name, new Dictionary<string, string>
    {
        [DurationKey] = HyperparameterReader.Text(Duration),
        [MinKey] = HyperparameterReader.Text(MinSeqLength),
        [MaxKey] = HyperparameterReader.Text(MaxSeqLength),
        [StepKey] = HyperparameterReader.Text(StepSize),
        [TruncateKey] = HyperparameterReader.Text(Truncate),
    });

    /// <summary>Re-creates the algorithm from what <see cref="Describe"/> stored in a checkpoint.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Wrong name, unknown key or a malformed value.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A value out of range.</exception>
    public static SeqLengthWarmup FromDescription(AlgorithmDescription description)
    {
        var r = new HyperparameterReader(description, AlgorithmName, DurationKey, MinKey, MaxKey, StepKey, TruncateKey);
        return new SeqLengthWarmup(r.Double(DurationKey, 0.3), r.Int(MinKey, 8), r.Int(MaxKey, 1024), r.Int(StepKey, 8), r.Bool(TruncateKey, true));
    }

    /// <inheritdoc/>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Name}(duration={Duration}, min_seq_length={MinSeqLength}, max_seq_length={MaxSeqLength}, step_size={StepSize}, truncate={HyperparameterReader.Text(Truncate)})");

    private static long TotalBatches(State state)
    {
        Time max = state.MaxDuration ?? throw new InvalidOperationException("SeqLengthWarmup needs a max_duration.");
        switch (max.Unit)
        {
            case TimeUnit.Batch:
                return max.Count;
            case TimeUnit.Epoch:
                long perEpoch = state.DataloaderLength
                    ?? throw new InvalidOperationException("SeqLengthWarmup needs a sized training dataloader when max_duration is in epochs.");
                return perEpoch * max.Count;
            default:
                throw new InvalidOperationException(
                    $"SeqLengthWarmup needs max_duration in epochs or batches (as Composer's); got {max}.");
        }
    }

    /// <summary>
    /// Composer's <c>_activate_model</c>: a forward and backward pass on the batch cut to max_seq_length (and to the
    /// first <c>device_train_microbatch_size</c> rows when set), under the run's precision, then zeroed gradients.
    /// </summary>
    private void ReserveMemory(State state, Batch batch)
    {
        if (state.Model is not ComposerModel model)
        {
            throw new InvalidOperationException($"SeqLengthWarmup needs a ComposerModel (forward and loss on a batch); got {state.Model.GetType().Name}.");
        }

        using var scope = torch.NewDisposeScope();
        Batch longest = Functional.SetBatchSequenceLength(batch, MaxSeqLength);
        if (state.DeviceTrainMicrobatchSize is { } rows && rows < longest.NumSamples)
        {
            longest = longest.Split(rows)[0];
        }

        Tensor loss;
        using (state.Precision.Enter(state.Device.type))
        {
            loss = model.Loss(model.call(longest), longest);
        }

        loss.backward();
        foreach (optim.Optimizer optimizer in state.Optimizers)
        {
            optimizer.zero_grad();
        }

        model.zero_grad();
    }
}
