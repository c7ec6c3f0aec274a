using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace ComposerSharp.Models;

/// <summary>
/// A BERT encoder (Devlin et al. 2019) with its masked-language-model head: a <see cref="TransformerBackbone"/>
/// (post-LN by default, pre-LN when <see cref="TransformerConfig.PreLayerNorm"/> is true; token-type embedding), then
/// the MLM transform (Linear, GELU, LayerNorm in field <c>mlm_ln</c>) and a decoder whose weight is the token embedding (tied, as BERT)
/// plus a bias. Reads batch keys <c>input_ids</c> Int64 [B, T], optional <c>attention_mask</c> [B, T], and for the loss
/// and metrics <c>labels</c> Int64 [B, T] (−100 at unselected positions, see the Data project's MlmCollator); optional
/// <c>token_type_ids</c> Int64 [B, T]. The architecture is Hugging Face's <c>BertForMaskedLM</c> (see the HuggingFace
/// folder for the weight names).
/// Outputs logits Float32, or BFloat16 under amp_bf16 autocast: [B, T, VocabSize] for a batch without <c>labels</c>
/// (or with <see cref="MaskedLMOptions.SparsePrediction"/> off); with <c>labels</c> and sparse prediction on (the
/// default), [N, VocabSize] for the N positions whose label is not −100, in row-major (sample, position) order, so
/// the vocabulary projection, the loss and the metrics pay only for the masked tokens (Mosaic BERT's sparse
/// prediction, examples/benchmarks/bert/src/bert_layers.py; Hugging Face's <c>BertForMaskedLM</c> projects every
/// token). <see cref="Loss"/> and the metrics (through <see cref="UpdateMetric"/>) accept both forms.
/// </summary>
public sealed class BertForMaskedLM : TransformerModel
{
#pragma warning disable IDE1006 // PyTorch-style names: the field names are the module names.
    private readonly Linear mlm_transform;
    private readonly nn.Module<Tensor, Tensor> mlm_ln;
    private readonly Parameter mlm_bias;
#pragma warning restore IDE1006

    /// <summary>Creates and initializes the model (N(0, 0.02²) weights; see <see cref="TransformerBackbone"/>).</summary>
    /// <param name="config">Sizes; e.g. <c>TransformerConfig.Preset("bert-base")</c>.</param>
    /// <param name="options">Head options; sparse prediction on when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid.</exception>
    public BertForMaskedLM(TransformerConfig config, MaskedLMOptions? options = null)
        : base(nameof(BertForMaskedLM), Encoder(config))
    {
        _options = options ?? new MaskedLMOptions();
        mlm_transform = nn.Linear(config.HiddenSize, config.HiddenSize);
        mlm_ln = nn.LayerNorm(config.HiddenSize, config.LayerNormEps);
        mlm_bias = nn.Parameter(torch.zeros(config.VocabSize));
        using (torch.no_grad())
        {
            nn.init.normal_(mlm_transform.weight, 0.0, config.InitializerRange);
            nn.init.zeros_(mlm_transform.bias!);
        }

        RegisterComponents();
    }

    /// <summary>
    /// The head options. Settable, so that an algorithm that needs a prediction at every token (LabelSmoothing's
    /// per-token target distributions, SelectiveBackprop's per-sample losses) can switch sparse prediction off at
    /// Init, before the first forward.
    /// </summary>
    /// <exception cref="ArgumentNullException">Set to null.</exception>
    public MaskedLMOptions Options
    {
        get => _options;
        set => _options = value ?? throw new ArgumentNullException(nameof(value));
    }

    private MaskedLMOptions _options;

    /// <summary>
    /// MLM logits of the batch: [N, VocabSize] at the N positions whose label is not −100 when the batch has Int64
    /// <c>labels</c> of <c>input_ids</c>' shape [B, T] and sparse prediction is on, else [B, T, VocabSize] (labels
    /// of another shape are then reported by <see cref="Loss"/>).
    /// </summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    public override Tensor forward(Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h = Encode(batch);
        if (Options.SparsePrediction && batch.TryGetValue("labels", out Tensor labels) && IsTokenLabels(labels, batch["input_ids"]))
        {
            // [B, T, hidden] → [N, hidden]: the gather's backward scatters the gradient back (index_add, deterministic on CPU).
            Tensor positions = labels.reshape(-1).ne(Losses.IgnoreIndex).nonzero().squeeze(1);
            h = h.reshape(-1, h.shape[^1]).index_select(0, positions);
        }

        h = mlm_ln.call(Activations.Apply(mlm_transform.call(h), Backbone.Activation));
        return F.linear(h, Backbone.TokenEmbedding.weight!, mlm_bias).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Mean cross-entropy over the selected tokens (labels ≠ −100), in Float32, of dense logits [B, T, VocabSize] or
    /// of sparse ones [N, VocabSize] (see <see cref="forward"/>).
    /// </summary>
    /// <exception cref="ArgumentException">The logits match neither the labels nor their selected positions.</exception>
    public override Tensor Loss(Tensor outputs, Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        return Losses.CrossEntropy(outputs, LabelsFor(outputs, batch)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The masked tokens of <paramref name="batch"/>: its Int64 <c>labels</c> that are not −100, over which
    /// <see cref="Loss"/> averages; the sample count when the batch has no such labels (see
    /// <see cref="ComposerModel.LossGeneratingTokens"/>; llm-foundry counts MLM and causal-LM loss-generating tokens the
    /// same way).
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    public override long LossGeneratingTokens(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return batch.TryGetValue("labels", out Tensor labels) && labels.dtype == ScalarType.Int64
            ? Losses.CountLabeled(labels)
            : base.LossGeneratingTokens(batch);
    }

    /// <summary>Updates <paramref name="metric"/>; for sparse outputs [N, VocabSize] against the N selected labels [N], which gives the same values as the dense outputs.</summary>
    public override void UpdateMetric(Batch batch, Tensor outputs, IMetric metric)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ArgumentNullException.ThrowIfNull(outputs);
        ArgumentNullException.ThrowIfNull(metric);
        if (!IsSparse(outputs, batch))
        {
            metric.Update(outputs, batch);
            return;
        }

        using var scope = torch.NewDisposeScope();
        metric.Update(outputs, new Batch(new Dictionary<string, Tensor> { ["labels"] = SelectedLabels(Losses.Labels(batch)) }, batch.NumTokens));
    }

    /// <summary>
    /// The labels ≠ −100 of <paramref name="labels"/> [B, T] as Int64 [N], in row-major order: the targets of the
    /// sparse logits (owned by the dispose scope open at the call).
    /// </summary>
    public static Tensor SelectedLabels(Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        Tensor flat = labels.reshape(-1);
        return flat.masked_select(flat.ne(Losses.IgnoreIndex));
    }

    /// <summary>Train: CrossEntropy, MaskedAccuracy. Eval: CrossEntropy, Perplexity, MaskedAccuracy.</summary>
    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) => isTrain
        ? new IMetric[] { new CrossEntropyMetric(), new MaskedAccuracy() }
        : new IMetric[] { new CrossEntropyMetric(), new PerplexityMetric(), new MaskedAccuracy() };

    private static bool IsSparse(Tensor outputs, Batch batch) =>
        outputs.Dimensions == 2 && batch.TryGetValue("labels", out Tensor labels) && labels.Dimensions == 2;

    private static Tensor LabelsFor(Tensor outputs, Batch batch) =>
        IsSparse(outputs, batch) ? SelectedLabels(Losses.Labels(batch)) : Losses.Labels(batch);

    private static bool IsTokenLabels(Tensor labels, Tensor inputIds) =>
        labels.dtype == ScalarType.Int64 && labels.shape.SequenceEqual(inputIds.shape);

    /// <summary>A BERT encoder: bidirectional, post-LN unless the config asks for pre-LN.</summary>
    internal static TransformerBackbone Encoder(TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return new TransformerBackbone(
            config, config.PreLayerNorm ?? false, causal: false, scaleResidualInit: false, config.Activation ?? HiddenActivation.Gelu, config.TypeVocabSize);
    }
}

/// <summary>Options of the masked-language-model head of <see cref="BertForMaskedLM"/>.</summary>
public sealed record MaskedLMOptions
{
    /// <summary>
    /// When the batch has <c>labels</c>, gather the hidden states at the positions whose label is not −100 before the
    /// MLM transform and the vocabulary projection, so outputs are [N, VocabSize] (Mosaic BERT's sparse prediction).
    /// With the usual 15 % masking this skips about 85 % of the head's work, which dominates a small encoder with a
    /// large vocabulary. Loss, gradients and metrics equal those of the dense path. Default true.
    /// </summary>
    public bool SparsePrediction { get; init; } = true;
}

/// <summary>How <see cref="BertForSequenceClassification"/> turns hidden states [B, T, hidden] into one vector per sample.</summary>
public enum SequencePooling
{
    /// <summary>The first position (BERT's <c>[CLS]</c>; the JSON-lines dataset prepends the cls id).</summary>
    ClsToken,
    /// <summary>The mean over real tokens (attention_mask non-zero).</summary>
    Mean,
}

/// <summary>Options of the classification head of <see cref="BertForSequenceClassification"/>.</summary>
public sealed record SequenceClassificationOptions
{
    /// <summary>Number of classes C.</summary>
    public int NumLabels { get; init; } = 2;

    /// <summary>Pooling of the hidden states.</summary>
    public SequencePooling Pooling { get; init; } = SequencePooling.ClsToken;

    /// <summary>Class counted as positive by the F1 metric.</summary>
    public int F1PositiveClass { get; init; } = 1;
}

/// <summary>
/// A BERT encoder with a sequence-classification head (Devlin et al. 2019, §4.1): pooled hidden state (first token or
/// mean) → Linear → tanh (BERT's pooler) → dropout → Linear to C classes. Reads <c>input_ids</c> Int64 [B, T],
/// optional <c>attention_mask</c> [B, T], and for loss and metrics <c>labels</c> Int64 [B] in [0, C). Outputs logits
/// [B, C]: Float32, or BFloat16 under amp_bf16 autocast.
/// </summary>
public sealed class BertForSequenceClassification : TransformerModel
{
#pragma warning disable IDE1006
    private readonly Linear pooler;
    private readonly Dropout dropout;
    private readonly Linear classifier;
#pragma warning restore IDE1006

    /// <summary>Creates and initializes the model.</summary>
    /// <param name="config">Encoder sizes.</param>
    /// <param name="options">Classes, pooling and F1's positive class; 2 classes, cls pooling, positive class 1 when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">The config is invalid, NumLabels &lt; 2, or F1PositiveClass is not in [0, NumLabels).</exception>
    public BertForSequenceClassification(TransformerConfig config, SequenceClassificationOptions? options = null)
        : base(nameof(BertForSequenceClassification), BertForMaskedLM.Encoder(config))
    {
        Options = options ?? new SequenceClassificationOptions();
        if (Options.NumLabels < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(options), Options.NumLabels, "NumLabels must be at least 2.");
        }

        if (Options.F1PositiveClass < 0 || Options.F1PositiveClass >= Options.NumLabels)
        {
            throw new ArgumentOutOfRangeException(nameof(options), Options.F1PositiveClass, $"F1PositiveClass must be in [0, {Options.NumLabels}).");
        }

        pooler = nn.Linear(config.HiddenSize, config.HiddenSize);
        dropout = nn.Dropout(config.Dropout);
        classifier = nn.Linear(config.HiddenSize, Options.NumLabels);
        using (torch.no_grad())
        {
            foreach (Linear linear in new[] { pooler, classifier })
            {
                nn.init.normal_(linear.weight, 0.0, config.InitializerRange);
                nn.init.zeros_(linear.bias!);
            }
        }

        RegisterComponents();
    }

    /// <summary>The head options.</summary>
    public SequenceClassificationOptions Options { get; }

    /// <summary>Class logits [B, C].</summary>
    /// <exception cref="KeyNotFoundException">The batch has no <c>input_ids</c>.</exception>
    public override Tensor forward(Batch batch)
    {
        using var scope = torch.NewDisposeScope();
        Tensor h = Encode(batch);
        Tensor? mask = AttentionMask(batch);
        Tensor pooled;
        if (Options.Pooling == SequencePooling.ClsToken)
        {
            pooled = h.select(1, 0);
        }
        else if (mask is null)
        {
            pooled = h.mean(new long[] { 1 });
        }
        else
        {
            Tensor weights = mask.ne(0).to(h.dtype).unsqueeze(-1);
            pooled = (h * weights).sum(1) / weights.sum(1).clamp_min(1.0);
        }

        return classifier.call(dropout.call(pooler.call(pooled).tanh())).MoveToOuterDisposeScope();
    }

    /// <summary>Mean cross-entropy of the logits against <c>labels</c> [B], in Float32.</summary>
    public override Tensor Loss(Tensor outputs, Batch batch) => Losses.CrossEntropy(outputs, Losses.Labels(batch));

    /// <summary>
    /// Train: Accuracy. Eval: Accuracy, CrossEntropy and F1: for two labels the binary F1 of
    /// <see cref="SequenceClassificationOptions.F1PositiveClass"/>, for more the macro-averaged F1 with per-class
    /// precision, recall and F1 (<see cref="MulticlassF1Score"/>).
    /// </summary>
    public override IReadOnlyList<IMetric> GetMetrics(bool isTrain) => isTrain
        ? new IMetric[] { new ClassificationAccuracy() }
        : new IMetric[]
        {
            new ClassificationAccuracy(), new CrossEntropyMetric(),
            Options.NumLabels > 2 ? new MulticlassF1Score(Options.NumLabels) : new BinaryF1Score(Options.F1PositiveClass),
        };
}
