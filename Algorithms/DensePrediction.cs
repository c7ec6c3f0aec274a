using ComposerSharp.Core;
using ComposerSharp.Events;
using ComposerSharp.Models;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Algorithms;

/// <summary>
/// For algorithms that read the model's outputs token by token or sample by sample: a BERT MLM with sparse
/// prediction (<see cref="MaskedLMOptions.SparsePrediction"/>, outputs only at labelled positions, [N, V]) is switched
/// to dense prediction ([B, T, V]) at Init. Loss and gradients are the same either way; only the head's cost differs.
/// </summary>
internal static class DensePrediction
{
    /// <summary>Switches <paramref name="state"/>'s model to dense prediction if it predicts sparsely, logging why.</summary>
    /// <param name="state">The training state; its <see cref="State.Model"/> is changed only when it is a sparse <see cref="BertForMaskedLM"/>.</param>
    /// <param name="algorithm">The name of the algorithm that needs it, for the log line.</param>
    /// <param name="why">What the algorithm reads, for the log line.</param>
    public static void Require(State state, string algorithm, string why)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.Model is BertForMaskedLM { Options.SparsePrediction: true } mlm)
        {
            mlm.Options = mlm.Options with { SparsePrediction = false };
            state.LoggerFactory.CreateLogger(typeof(DensePrediction)).LogInformation(
                "{Algorithm} reads {Why}, so BertForMaskedLM's sparse prediction (outputs at masked positions only) is off for this run.", algorithm, why);
        }
    }
}
