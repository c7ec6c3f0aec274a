using ComposerSharp.Core;
using static TorchSharp.torch;

namespace ComposerSharp.Events;

/// <summary>
/// What a stateful algorithm stores in a checkpoint: plain values (JSON-serialisable: numbers, strings, bools, lists,
/// dictionaries) and named tensors (any dtype, shape and device; written on the CPU in TorchSharp's format).
/// </summary>
/// <param name="Values">Scalar state by name, e.g. <c>ema_started</c> → true.</param>
/// <param name="Tensors">Tensor state by name, e.g. the averaged weights of EMA by parameter name.</param>
public sealed record AlgorithmState(IReadOnlyDictionary<string, object?> Values, IReadOnlyDictionary<string, Tensor> Tensors)
{
    /// <summary>An empty state.</summary>
    public static AlgorithmState Empty { get; } = new(new Dictionary<string, object?>(), new Dictionary<string, Tensor>());
}

/// <summary>
/// An algorithm whose state changes during training and is saved in full checkpoints, so that a resumed run continues
/// exactly (Composer's <c>Algorithm.state_dict</c>/<c>load_state_dict</c>, composer/core/algorithm.py, which
/// Composer's <c>State</c> stores under <c>algorithms</c>). The checkpoint stores the values in its header and the
/// tensors as one entry per algorithm, under <see cref="StateKey"/>; weights-only checkpoints store neither.
/// </summary>
public interface IStatefulAlgorithm : IAlgorithm
{
    /// <summary>A key unique among the run's algorithms under which the state is stored; the algorithm's <see cref="IAlgorithm.Name"/> by default.</summary>
    string StateKey => Name;

    /// <summary>
    /// The state to store. The tensors may be the algorithm's own (they are only read, while saving); the caller
    /// neither keeps nor disposes them.
    /// </summary>
    AlgorithmState StateDict();

    /// <summary>
    /// Restores what <see cref="StateDict"/> returned. Values arrive after a JSON round trip (numbers as <c>double</c>
    /// or <c>long</c>); tensors arrive on the CPU and are disposed after the call, so keep copies (e.g. moved to the
    /// model's device), not the tensors themselves. Called after the model's weights and <em>before</em> the
    /// optimizers' state are loaded, with the run's <paramref name="state"/>, so that an algorithm whose state shapes
    /// the model or the optimizers (LayerFreezing's frozen layers) can re-apply it and the optimizer state then fits.
    /// </summary>
    /// <param name="saved">What <see cref="StateDict"/> returned when the checkpoint was written.</param>
    /// <param name="state">The run's state being loaded into.</param>
    /// <exception cref="ArgumentException">The state is not one this algorithm wrote (missing or extra entries, other shapes).</exception>
    void LoadStateDict(AlgorithmState saved, State state);
}
