using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models;

/// <summary>
/// A GPT-style decoder (Radford et al. 2018, 2019) with a language-model head: a causal
/// <see cref="TransformerBackbone"/> (pre-LN with a final LayerNorm unless <see cref="TransformerConfig.PreLayerNorm"/>
/// is false, GPT-2's depth-scaled init, <c>gelu_new</c> unless <see cref="TransformerConfig.Activation"/> says otherwise)
/// and an output layer tied to the token embedding: Hugging Face's <c>GPT2LMHeadModel</c> architecture. Reads <c>input_ids</c>
/// Int64 [B, T], optional <c>attention_mask</c> [B, T], and for loss and metrics <c>labels</c> Int64 [B, T]
/// <em>unshifted</em> (−100 at padding; see the Data project's CausalLmCollator): position t is scored against
/// label t+1 (<see cref="Targets"/>), as Hugging Face's and llm-foundry's causal LMs do. Without <c>labels</c>, the
/// input ids (−100 where attention_mask is 0) are the labels. Outputs logits [B, T, VocabSize]: Float32, or
/// BFloat16 under amp_bf16 autocast.
/// </summary>
public sealed class GptForCausalLM : TransformerModel
{
    /// <summary>Creates and initializes the model.</summary>
    /// <param name="config">Sizes; e.g. <c>TransformerConfig.Preset("gpt-tiny")</c>.</param>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public GptForCausalLM(TransformerConfig config)
        : base(nameof(GptForCausalLM), Decoder(config)) => RegisterComponents();

    /// <summary>Next-token logits [B, T, VocabSize]: row t predicts token t+1.</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    public override Tensor forward(Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        return F.linear(Encode(batch), Backbone.TokenEmbedding.weight!).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Logits [B, T_new, VocabSize] of new positions <paramref name="inputIds"/> [B, T_new] that continue the
    /// sequence held in <paramref name="cache"/> (incremental decoding; see <see cref="TransformerBackbone.ForwardCached"/>).
    /// Call in eval mode under no_grad.
    /// </summary>
    /// <exception cref="ArgumentException">The sequence would exceed MaxSequenceLength, or bad ids.</exception>
    public Tensor ForwardCached(Tensor inputIds, KeyValueCache cache)
    {
        using var scope = torch.NewDisposeScope();
        return F.linear(Backbone.ForwardCached(inputIds, cache), Backbone.TokenEmbedding.weight!).MoveToOuterDisposeScope();
    }

    /// <summary>An empty key/value cache for this model.</summary>
    public KeyValueCache NewCache() => new(Config.NumLayers);

    /// <summary>Mean next-token cross-entropy over positions whose target is not −100, in Float32.</summary>
    public override Tensor Loss(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        return Losses.CrossEntropy(outputs, Targets(batch)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The next-token targets of <paramref name="batch"/> that are not −100 (<see cref="Targets"/>), over which
    /// <see cref="Loss"/> averages (see <see cref="ComposerModel.LossGeneratingTokens"/>).
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    /// <exception cref="KeyNotFoundException">The batch has neither <c>labels</c> nor <c>input_ids</c>.</exception>
    public override long LossGeneratingTokens(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var scope = torch.NewDisposeScope();
        return Losses.CountLabeled(Targets(batch));
    }

    /// <summary>Train and eval: CrossEntropy, Perplexity (of the next token).</summary>
    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) => new IMetric[] { new CrossEntropyMetric(), new PerplexityMetric() };

    /// <summary>Updates <paramref name="metric"/> with the batch's labels shifted to the next token (<see cref="Targets"/>).</summary>
    public override void UpdateMetric(Batch batch, Tensor outputs, IMetric metric)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(metric);
        using var scope = torch.NewDisposeScope();
        var shifted = batch.ToDictionary(kv => kv.Key, kv => kv.Value);
        shifted["labels"] = Targets(batch);
        metric.Update(outputs, new Batch(shifted, batch.NumTokens));
    }

    /// <summary>
    /// Next-token targets Int64 [B, T]: target t is label t+1, and the last position's target is −100. Labels are the
    /// batch's <c>labels</c>, or else <c>input_ids</c> with −100 where <c>attention_mask</c> is 0.
    /// </summary>
    public static Tensor Targets(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var scope = torch.NewDisposeScope();
        Tensor labels;
        if (batch.TryGetValue("labels", out Tensor given))
        {
            labels = given;
        }
        else
        {
            labels = batch["input_ids"];
            if (batch.TryGetValue("attention_mask", out Tensor mask))
            {
                labels = labels.masked_fill(mask.eq(0), Losses.IgnoreIndex);
            }
        }

        long t = labels.shape[1];
        Tensor last = torch.full(labels.shape[0], 1, Losses.IgnoreIndex, dtype: ScalarType.Int64, device: labels.device);
        return torch.cat(new[] { labels.narrow(1, 1, t - 1), last }, 1).MoveToOuterDisposeScope();
    }

    private static TransformerBackbone Decoder(TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new TransformerBackbone(config, config.PreLayerNorm ?? true, causal: true, scaleResidualInit: true, config.Activation ?? HiddenActivation.GeluTanh);
    }
}
