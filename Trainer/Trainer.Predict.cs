using ComposerSharp.Core;
using ComposerSharp.Events;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training;

/// <summary>Prediction (Composer's <c>predict</c>): the model over a loader, without gradients, collecting its outputs.</summary>
public sealed partial class Trainer
{
    /// <summary>
    /// Runs the model on every batch of <paramref name="dataloader"/> in evaluation mode without gradients
    /// (Composer's <c>predict</c>): PredictStart, per batch PredictBatchStart, PredictBeforeForward,
    /// PredictAfterForward, PredictBatchEnd, then PredictEnd.
    /// </summary>
    /// <param name="dataloader">The batches (epoch 0).</param>
    /// <param name="subsetNumBatches">Predict at most this many batches; null for all.</param>
    /// <param name="returnOutputs">Collect the outputs; when false an empty list is returned (callbacks still see each output).</param>
    /// <returns>
    /// One tensor per batch: the model's forward output moved to the CPU, in its dtype (e.g. Float32 [B, C]),
    /// detached from every dispose scope. The caller owns and must dispose them.
    /// </returns>
    /// <exception cref="ArgumentException">A loader of unknown length without <paramref name="subsetNumBatches"/>.</exception>
    public IReadOnlyList<Tensor> Predict(IDataLoader dataloader, long? subsetNumBatches = null, bool returnOutputs = true)
    {
        ThrowIfClosed();
        ArgumentNullException.ThrowIfNull(dataloader);
        if (subsetNumBatches is <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(subsetNumBatches), subsetNumBatches, "subsetNumBatches must be at least 1, or null for the whole loader.");
        }

        if (subsetNumBatches is null && dataloader.BatchesPerEpoch is null)
        {
            throw new ArgumentException("The prediction dataloader's length is unknown; pass subsetNumBatches so prediction ends.", nameof(subsetNumBatches));
        }

        var outputs = new List<Tensor>();
        State.PredictTimestamp = new Timestamp();
        try
        {
            InferencePass(dataloader, "predict", subsetNumBatches, Event.PredictStart, Event.PredictEnd, (batch, lap) =>
            {
                Engine.RunEvent(Event.PredictBatchStart);
                Engine.RunEvent(Event.PredictBeforeForward);
                using (State.Precision.Enter(State.Device.type))
                {
                    State.Outputs = Forward(batch);
                }

                Engine.RunEvent(Event.PredictAfterForward);
                if (returnOutputs)
                {
                    outputs.Add(State.Outputs.detach().cpu().clone().DetachFromDisposeScope());
                }

                State.PredictTimestamp = State.PredictTimestamp.ToNextBatch(batch.NumSamples, batch.NumTokens, lap());
                Engine.RunEvent(Event.PredictBatchEnd);
            });
        }
        catch
        {
            foreach (Tensor t in outputs)
            {
                t.Dispose();
            }

            throw;
        }

        return outputs;
    }
}
