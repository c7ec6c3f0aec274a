using System.Text.Json;
using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>
/// The checkpoint part of <see cref="IStatefulAlgorithm"/>s (Composer's <c>state['algorithms']</c>): each algorithm's
/// values go into the header under its <see cref="IStatefulAlgorithm.StateKey"/>, its tensors into the entry
/// <c>algorithms/{key}.bin</c>. Loading gives each algorithm of the run the state saved under its key; an algorithm
/// the checkpoint has no state for keeps its fresh state, with a warning.
/// </summary>
internal static class AlgorithmStates
{
    /// <summary>The entry holding the tensors of the algorithm with state key <paramref name="key"/>.</summary>
    internal static string Entry(string key) => $"algorithms/{key}.bin";

    /// <summary>Writes every stateful algorithm's tensors and records its values in <paramref name="header"/>.</summary>
    /// <exception cref="InvalidOperationException">Two algorithms share a state key.</exception>
    internal static void Write(IEnumerable<IAlgorithm> algorithms, CheckpointWriter writer, CheckpointHeader header)
    {
        foreach (IStatefulAlgorithm algorithm in algorithms.OfType<IStatefulAlgorithm>())
        {
            string key = algorithm.StateKey;
            if (header.AlgorithmStates.ContainsKey(key))
            {
                throw new InvalidOperationException($"Two algorithms share the checkpoint state key '{key}'; give each a unique StateKey.");
            }

            AlgorithmState state = algorithm.StateDict();
            header.AlgorithmStates[key] = JsonSerializer.SerializeToElement(state.Values, CheckpointFile.Json);
            writer.Write(Entry(key), w => CheckpointFile.WriteTensors(w, state.Tensors.ToList()));
        }
    }

    /// <summary>Restores every stateful algorithm of <paramref name="state"/> that the checkpoint has state for (call before the optimizers are loaded).</summary>
    /// <exception cref="CheckpointException">The header names a state whose tensor entry is missing or unreadable, or the algorithm refuses the state.</exception>
    internal static void Read(State state, CheckpointReader reader, ILogger log)
    {
        foreach (IStatefulAlgorithm algorithm in state.Algorithms.OfType<IStatefulAlgorithm>())
        {
            string key = algorithm.StateKey;
            if (!reader.Header.AlgorithmStates.TryGetValue(key, out JsonElement values))
            {
                log.LogWarning("Checkpoint {Checkpoint} holds no state for algorithm {Algorithm} (state key '{Key}'); it starts from a fresh state.", reader.Path, algorithm.Name, key);
                continue;
            }

            var tensors = new Dictionary<string, Tensor>();
            try
            {
                reader.Read(Entry(key), r => CheckpointFile.ReadTensors(r, (name, t) => tensors[name] = t.clone().DetachFromDisposeScope()));
                algorithm.LoadStateDict(new AlgorithmState(JsonValues.ToDictionary(values), tensors), state);
            }
            catch (ArgumentException ex)
            {
                throw new CheckpointException(reader.Path, $"Checkpoint '{reader.Path}': the state of algorithm '{algorithm.Name}' does not fit this run: {ex.Message}", ex);
            }
            finally
            {
                foreach (Tensor t in tensors.Values)
                {
                    t.Dispose();
                }
            }
        }
    }
}
