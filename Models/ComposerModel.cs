using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Models;

/// <summary>
/// The model interface the Trainer talks to (Composer's <c>composer.models.ComposerModel</c>,
/// composer/models/base.py): a module from a <see cref="Batch"/> to outputs, plus its loss and metrics.
/// </summary>
public abstract class ComposerModel : nn.Module<Batch, Tensor>
{
    /// <summary>Creates the model; <paramref name="name"/> is the module name.</summary>
    protected ComposerModel(string name)
        : base(name)
    {
    }

    /// <summary>The loss (a scalar, usually Float32) of <paramref name="outputs"/> for <paramref name="batch"/>.</summary>
    public abstract Tensor Loss(Tensor outputs, Batch batch);

    /// <summary>Outputs used for evaluation metrics; the forward outputs by default (<paramref name="outputs"/> when given).</summary>
    public virtual Tensor EvalForward(Batch batch, Tensor? outputs = null) => outputs ?? forward(batch);

    /// <summary>
    /// Checks a batch's contents on the host, where reading values costs no device synchronisation: the Trainer calls
    /// it on each batch before moving the batch to a non-CPU device, so the forward can skip checks that would read
    /// device values (ComposerSharp's addition; Composer has no such hook). Does nothing by default.
    /// </summary>
    /// <exception cref="ArgumentException">The batch holds values the model cannot take; the message names them.</exception>
    public virtual void ValidateBatch(Batch batch)
    {
    }

    /// <summary>
    /// The number of loss-generating units in <paramref name="batch"/>: the count over which <see cref="Loss"/>
    /// averages. With the Trainer's <c>accumulate_train_batch_on_tokens</c> on, each microbatch's mean loss is weighted
    /// by this count divided by its sum over every microbatch of every rank, so the step's gradient is that of the
    /// mean over the whole global batch whatever its split (Composer's trainer.py: <c>_train_microbatches</c> counts
    /// them with the data spec's <c>get_num_tokens_in_batch</c>, its <c>loss_generating</c> entry when given). The
    /// default is <see cref="Batch.NumSamples"/>, right for a loss that is a mean over samples; a model whose loss is a
    /// mean over tokens overrides it (e.g. the labels that are not −100). Called on the host before the microbatch's
    /// forward; reading a device tensor's count synchronises with the device.
    /// </summary>
    /// <returns>A count ≥ 0 (units: samples by default, tokens for token-level losses).</returns>
    /// <exception cref="ArgumentNullException"><paramref name="batch"/> is null.</exception>
    public virtual long LossGeneratingTokens(Batch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        return batch.NumSamples;
    }

    /// <summary>New metric instances for training (<paramref name="isTrain"/>) or evaluation.</summary>
    public virtual IReadOnlyList<IMetric> GetMetrics(bool isTrain) => Array.Empty<IMetric>();

    /// <summary>Adds a batch to <paramref name="metric"/>; calls <see cref="IMetric.Update"/> by default.</summary>
    public virtual void UpdateMetric(Batch batch, Tensor outputs, IMetric metric) => metric.Update(outputs, batch);
}
