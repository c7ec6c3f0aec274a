using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

public static partial class Functional
{
    /// <summary>
    /// Switches every <see cref="TransformerBackbone"/> in <paramref name="model"/> (BERT's and GPT's) to ALiBi: no
    /// position embedding, linear attention biases instead, sequences up to <paramref name="maxSequenceLength"/>
    /// accepted; Composer's <c>apply_alibi</c>. For each backbone the position embedding <c>wpe</c> is zeroed and frozen
    /// (<c>requires_grad</c> false) and an <see cref="AlibiAttentionBias"/> takes its place through the backbone's
    /// extension point <see cref="TransformerBackbone.ReplacePositionEmbedding"/>, which also sets the maximum length
    /// its <see cref="TransformerBackbone.Config"/> reports. Applying it again only changes the maximum length. It
    /// does not scale the training sequence length; the <see cref="Alibi"/> algorithm does.
    /// </summary>
    /// <param name="model">The model (or a backbone), changed in place.</param>
    /// <param name="maxSequenceLength">The longest sequence to accept afterwards; null keeps each backbone's own MaxSequenceLength.</param>
    /// <param name="logger">Receives the count and the no-effect warning; none when null.</param>
    /// <returns>The number of backbones switched (0, with a warning, when the model has none).</returns>
    /// <remarks>
    /// The position embedding's weight stays a parameter of the model (zero, <c>requires_grad</c> false), so optimizers
    /// need no change and checkpoints keep their keys; it gets no gradient, so optimizers do not step it.
    /// </remarks>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="maxSequenceLength"/> is below 1.</exception>
    public static int ApplyAlibi(nn.Module model, int? maxSequenceLength = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (maxSequenceLength is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(maxSequenceLength), maxSequenceLength, "max_sequence_length must be at least 1.");
        }

        logger ??= NullLogger.Instance;
        List<TransformerBackbone> backbones = ModuleSurgery.NamedModules(model).Select(m => m.Module).Prepend(model).OfType<TransformerBackbone>().Distinct().ToList();
        if (backbones.Count == 0)
        {
            logger.LogWarning("Alibi found no TransformerBackbone (BERT or GPT trunk) in the model; it has no effect.");
            return 0;
        }

        foreach (TransformerBackbone backbone in backbones)
        {
            int length = maxSequenceLength ?? backbone.Config.MaxSequenceLength;
            Tensor positions = backbone.PositionEmbedding.weight!;
            using (torch.no_grad())
            {
                positions.zero_();
            }

            positions.requires_grad = false;
            backbone.ReplacePositionEmbedding(new AlibiAttentionBias(backbone.Config.NumHeads), length);
        }

        logger.LogInformation(
            "Alibi replaced the position embeddings of {Count} transformer trunks by linear attention biases; maximum sequence length {Length}.",
            backbones.Count, backbones[0].Config.MaxSequenceLength);
        return backbones.Count;
    }

    /// <summary>
    /// Reshapes every tensor of <paramref name="batch"/> from [B, T] to [B·T / T', T'] with T' = T·<paramref name="scaling"/>
    /// (row-major, so each new row is a contiguous piece of an old one): shorter and more sequences from the same
    /// tokens, as Composer's Alibi does at <c>AFTER_DATALOADER</c> with <c>train_sequence_length_scaling</c>.
    /// </summary>
    /// <param name="batch">A batch whose tensors are all [B, T] (input_ids, attention_mask, labels, ...).</param>
    /// <param name="scaling">In (0, 1]; T·scaling must be a whole number and divide B·T.</param>
    /// <returns>The new batch (views of the old tensors), or <paramref name="batch"/> itself when the scaling is 1; its token count is unchanged.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="scaling"/> is outside (0, 1].</exception>
    /// <exception cref="ArgumentException">A tensor is not [B, T], or T·scaling is not a whole number dividing B·T (the message names the sizes).</exception>
    public static Batch ScaleSequenceLength(Batch batch, double scaling)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (!(scaling > 0 && scaling <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(scaling), scaling, "train_sequence_length_scaling must be in (0, 1].");
        }

        if (scaling == 1)
        {
            return batch;
        }

        (long b, long t) = SequenceShape(batch, "Alibi's train_sequence_length_scaling");
        double scaled = t * scaling;
        long newT = (long)Math.Round(scaled);
        if (newT < 1 || Math.Abs(scaled - newT) > 1e-9 || b * t % newT != 0)
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"train_sequence_length_scaling {scaling} turns sequences of {t} tokens into {scaled}; it must give a whole number of tokens that divides the batch's {b}·{t} tokens."));
        }

        var tensors = batch.ToDictionary(kv => kv.Key, kv => kv.Value.reshape(b * t / newT, newT));
        return new Batch(tensors, batch.NumTokens);
    }

    /// <summary>The [B, T] shape shared by every tensor of a sequence batch.</summary>
    /// <exception cref="ArgumentException">A tensor of another shape (the message names it and <paramref name="who"/>).</exception>
    internal static (long B, long T) SequenceShape(Batch batch, string who)
    {
        long[]? shape = null;
        foreach ((string key, Tensor value) in batch)
        {
            if (value.Dimensions != 2 || (shape is not null && !value.shape.SequenceEqual(shape)))
            {
                throw new ArgumentException(
                    $"{who} needs every batch tensor to be [B, T] like the others; '{key}' is [{string.Join(", ", value.shape)}]" +
                    (shape is null ? "." : $", the first was [{string.Join(", ", shape)}]."));
            }

            shape ??= value.shape;
        }

        return shape is null ? throw new ArgumentException($"{who} got an empty batch.") : (shape[0], shape[1]);
    }
}
