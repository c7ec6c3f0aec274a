using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Data;

/// <summary>A tokenized text with its class: the sample of a text-classification dataset.</summary>
/// <param name="InputIds">Token ids (already truncated; may start with the vocabulary's cls id).</param>
/// <param name="Label">Class index, 0 … number of classes − 1.</param>
public sealed record TextClassificationSample(long[] InputIds, long Label);

/// <summary>Options of <see cref="MlmCollator"/>; the defaults are BERT's (Devlin et al. 2019, §3.1 and appendix C.2).</summary>
public sealed record MlmCollatorOptions
{
    /// <summary>Probability that a real, non-special token is selected for prediction (BERT: 0.15).</summary>
    public double MlmProbability { get; init; } = 0.15;

    /// <summary>Probability that a selected token is replaced by the mask token (BERT: 0.8).</summary>
    public double MaskReplaceProbability { get; init; } = 0.8;

    /// <summary>Probability that a selected token is replaced by a random regular token (BERT: 0.1); the rest are kept.</summary>
    public double RandomReplaceProbability { get; init; } = 0.1;

    /// <summary>Seed of the masking, combined with the loader's seed, the epoch and each sample's dataset index.</summary>
    public long Seed { get; init; }

    /// <summary>Throws when a probability is outside [0, 1] or mask + random replacement exceeds 1.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A probability is out of range; the message names it and its value.</exception>
    public void Validate()
    {
        CheckProbability(MlmProbability, nameof(MlmProbability));
        CheckProbability(MaskReplaceProbability, nameof(MaskReplaceProbability));
        CheckProbability(RandomReplaceProbability, nameof(RandomReplaceProbability));
        if (MaskReplaceProbability + RandomReplaceProbability > 1.0)
        {
            throw new ArgumentOutOfRangeException(
                nameof(RandomReplaceProbability),
                $"MaskReplaceProbability ({MaskReplaceProbability}) + RandomReplaceProbability ({RandomReplaceProbability}) must be at most 1.");
        }
    }

    private static void CheckProbability(double p, string name)
    {
        if (!(p >= 0.0 && p <= 1.0))
        {
            throw new ArgumentOutOfRangeException(name, p, $"{name} must be a probability in [0, 1].");
        }
    }
}

/// <summary>
/// Masked-language-model collator (BERT, Devlin et al. 2019): pads token sequences to the longest in the batch and
/// selects each real, non-special token independently with probability <see cref="MlmCollatorOptions.MlmProbability"/>
/// (as Hugging Face's <c>DataCollatorForLanguageModeling</c> does); a selected token is replaced by the mask token
/// with probability 0.8, by a uniformly random regular token with probability 0.1, and kept otherwise. The batch has
/// <c>input_ids</c> Int64 [B, T] (after replacement), <c>attention_mask</c> Int64 [B, T] (1 real, 0 padding) and
/// <c>labels</c> Int64 [B, T] (the original id at selected positions, −100 elsewhere, the ignore index of
/// cross-entropy). The random choices for a sample depend only on (options seed, loader seed, epoch, the sample's
/// global dataset index from <see cref="CollateContext.SampleIndices"/>): a sample is masked the same way whichever
/// rank, batch or position in the batch it lands in (so data-parallel runs of any world size see the same masks as
/// one process with the same global batch), differently in each epoch, and a resumed loader reproduces the masks.
/// </summary>
public sealed class MlmCollator : ICollator<long[]>
{
    /// <summary>The label of positions that carry no loss (PyTorch's <c>cross_entropy</c> default ignore_index).</summary>
    public const long IgnoreIndex = -100;

    private readonly TokenVocabulary _vocabulary;

    /// <summary>Creates the collator.</summary>
    /// <param name="vocabulary">Id layout: pad and mask ids, and the regular range random replacements come from.</param>
    /// <param name="options">Masking rates and seed; BERT's defaults when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (see <see cref="MlmCollatorOptions.Validate"/>).</exception>
    public MlmCollator(TokenVocabulary vocabulary, MlmCollatorOptions? options = null)
    {
        _vocabulary = vocabulary ?? throw new ArgumentNullException(nameof(vocabulary));
        Options = options ?? new MlmCollatorOptions();
        Options.Validate();
    }

    /// <summary>The masking options.</summary>
    public MlmCollatorOptions Options { get; }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">
    /// No samples, an empty sample, an id outside the vocabulary, or a context without one dataset index per sample
    /// (<see cref="CollateContext.SampleIndices"/>).
    /// </exception>
    public Batch Collate(IReadOnlyList<long[]> samples, CollateContext context)
    {
        (long[] ids, long[] mask, int length) = Padding.Pad(samples, _vocabulary, padTo: null);
        var labels = new long[ids.Length];
        Array.Fill(labels, IgnoreIndex);
        for (int s = 0; s < samples.Count; s++)
        {
            // One stream per sample, walked over the sample's own tokens only: neither the padded length nor the
            // other samples of the batch change its draws.
            var rng = SplitMix64.For(Options.Seed, context.Seed, context.Epoch, context.SampleIndex(s, samples.Count));
            int end = s * length + samples[s].Length;
            for (int i = s * length; i < end; i++)
            {
                if (_vocabulary.IsSpecial(ids[i]) || rng.NextDouble() >= Options.MlmProbability)
                {
                    continue;
                }

                labels[i] = ids[i];
                double r = rng.NextDouble();
                if (r < Options.MaskReplaceProbability)
                {
                    ids[i] = _vocabulary.MaskId;
                }
                else if (r < Options.MaskReplaceProbability + Options.RandomReplaceProbability)
                {
                    ids[i] = _vocabulary.RegularId(rng.NextInt(_vocabulary.RegularCount));
                }
            }
        }

        return Padding.ToBatch(samples.Count, length, ids, mask, torch.tensor(labels, new long[] { samples.Count, length }));
    }
}

/// <summary>
/// Causal language-model collator (GPT, Radford et al. 2018/2019): pads to the longest sequence and sets
/// <c>labels</c> Int64 [B, T] to <c>input_ids</c> with −100 at padding. Labels are not shifted: the model predicts
/// position t+1 from positions ≤ t by shifting inside its loss (as Hugging Face and llm-foundry models do).
/// Batch: <c>input_ids</c>, <c>attention_mask</c>, <c>labels</c>, all Int64 [B, T].
/// </summary>
public sealed class CausalLmCollator : ICollator<long[]>
{
    private readonly TokenVocabulary _vocabulary;

    /// <summary>Creates the collator for ids laid out as <paramref name="vocabulary"/>.</summary>
    public CausalLmCollator(TokenVocabulary vocabulary) => _vocabulary = vocabulary ?? throw new ArgumentNullException(nameof(vocabulary));

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">No samples, an empty sample, or an id outside the vocabulary.</exception>
    public Batch Collate(IReadOnlyList<long[]> samples, CollateContext context)
    {
        (long[] ids, long[] mask, int length) = Padding.Pad(samples, _vocabulary, padTo: null);
        var labels = new long[ids.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            labels[i] = mask[i] == 0 ? MlmCollator.IgnoreIndex : ids[i];
        }

        return Padding.ToBatch(samples.Count, length, ids, mask, torch.tensor(labels, new long[] { samples.Count, length }));
    }
}

/// <summary>
/// Text-classification collator: pads token ids to <see cref="PadToLength"/> (or to the longest sample when null) and
/// stacks the labels. Batch: <c>input_ids</c> Int64 [B, T], <c>attention_mask</c> Int64 [B, T], <c>labels</c> Int64 [B].
/// </summary>
public sealed class ClassificationCollator : ICollator<TextClassificationSample>
{
    private readonly TokenVocabulary _vocabulary;

    /// <summary>Creates the collator.</summary>
    /// <param name="vocabulary">Id layout (the pad id).</param>
    /// <param name="padToLength">Fixed sequence length T in tokens, or null to pad to the longest sample of each batch.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="padToLength"/> is not positive.</exception>
    public ClassificationCollator(TokenVocabulary vocabulary, int? padToLength = null)
    {
        _vocabulary = vocabulary ?? throw new ArgumentNullException(nameof(vocabulary));
        if (padToLength is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(padToLength), padToLength, "The padded length must be at least 1 token.");
        }

        PadToLength = padToLength;
    }

    /// <summary>Fixed padded length in tokens, or null for the longest sample of each batch.</summary>
    public int? PadToLength { get; }

    /// <inheritdoc/>
    /// <exception cref="ArgumentException">No samples, an empty sample, a sample longer than <see cref="PadToLength"/>, or an id outside the vocabulary.</exception>
    public Batch Collate(IReadOnlyList<TextClassificationSample> samples, CollateContext context)
    {
        ArgumentNullException.ThrowIfNull(samples);
        var sequences = new long[samples.Count][];
        var labels = new long[samples.Count];
        for (int i = 0; i < samples.Count; i++)
        {
            sequences[i] = samples[i].InputIds;
            labels[i] = samples[i].Label;
        }

        (long[] ids, long[] mask, int length) = Padding.Pad(sequences, _vocabulary, PadToLength);
        return Padding.ToBatch(samples.Count, length, ids, mask, torch.tensor(labels, new long[] { samples.Count }));
    }
}

/// <summary>Right-padding of token sequences into flat [B, T] arrays.</summary>
internal static class Padding
{
    internal static (long[] Ids, long[] Mask, int Length) Pad(IReadOnlyList<long[]> samples, TokenVocabulary vocabulary, int? padTo)
    {
        ArgumentNullException.ThrowIfNull(samples);
        if (samples.Count == 0)
        {
            throw new ArgumentException("A batch needs at least one sample.", nameof(samples));
        }

        int longest = 0;
        for (int i = 0; i < samples.Count; i++)
        {
            int n = samples[i].Length;
            if (n == 0)
            {
                throw new ArgumentException($"Sample {i} of the batch has no tokens.", nameof(samples));
            }

            if (padTo is not null && n > padTo)
            {
                throw new ArgumentException($"Sample {i} of the batch has {n} tokens, more than the padded length {padTo}.", nameof(samples));
            }

            longest = Math.Max(longest, n);
        }

        int length = padTo ?? longest;
        var ids = new long[samples.Count * length];
        var mask = new long[ids.Length];
        Array.Fill(ids, (long)vocabulary.PadId);
        for (int i = 0; i < samples.Count; i++)
        {
            long[] s = samples[i];
            for (int t = 0; t < s.Length; t++)
            {
                if (s[t] < 0 || s[t] >= vocabulary.Size)
                {
                    throw new ArgumentException($"Sample {i} of the batch has token id {s[t]} at position {t}, outside the vocabulary [0, {vocabulary.Size}).", nameof(samples));
                }

                ids[i * length + t] = s[t];
                mask[i * length + t] = 1;
            }
        }

        return (ids, mask, length);
    }

    internal static Batch ToBatch(int batchSize, int length, long[] ids, long[] mask, Tensor labels)
    {
        var shape = new long[] { batchSize, length };
        long tokens = 0;
        foreach (long m in mask)
        {
            tokens += m;
        }

        return new Batch(
            new Dictionary<string, Tensor>
            {
                ["input_ids"] = torch.tensor(ids, shape),
                ["attention_mask"] = torch.tensor(mask, shape),
                ["labels"] = labels,
            },
            numTokens: tokens);
    }
}
