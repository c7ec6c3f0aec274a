using ComposerSharp.Core;
using ComposerSharp.Core.Checkpoints;
using ComposerSharp.Events;
using Microsoft.Extensions.Logging;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>The required-on-load algorithms a checkpoint records, checked against and added to the state before its weights load.</summary>
internal static class RequiredAlgorithms
{
    /// <summary>The default resolver: the algorithms that ship with ComposerSharp (<see cref="ComposerSharp.Algorithms.AlgorithmCatalog"/>).</summary>
    private static IAlgorithm? ResolveBuiltInAlgorithm(AlgorithmDescription description) =>
        ComposerSharp.Algorithms.AlgorithmCatalog.Names.Contains(description.Name) ? ComposerSharp.Algorithms.AlgorithmCatalog.Create(description) : null;

    /// <summary>
    /// Handles the required-on-load algorithms a checkpoint records (Composer's <c>_apply_required_algorithms</c>):
    /// one the Trainer already has is kept (with a warning if its description differs); a missing one is
    /// re-created with <see cref="CheckpointOptions.AlgorithmResolver"/>, applied at Init and added with a warning, or refused.
    /// </summary>
    internal static void Apply(State state, Logger logger, CheckpointHeader header, string file, CheckpointOptions options, ILogger log)
    {
        IReadOnlyList<string>? exclude = options.LoadExcludeAlgorithms;
        Func<AlgorithmDescription, IAlgorithm?>? resolver = options.AlgorithmResolver;
        MissingAlgorithmPolicy policy = options.MissingAlgorithmPolicy;
        foreach (AlgorithmRecord record in header.Algorithms.Where(a => a.RequiredOnLoad))
        {
            if (exclude is not null && exclude.Contains(record.Name))
            {
                continue;
            }

            AlgorithmDescription recorded = record.ToDescription();
            IAlgorithm? present = state.Algorithms.FirstOrDefault(a => a.Name == record.Name);
            if (present is not null)
            {
                if (!present.Describe().Equals(recorded))
                {
                    log.LogWarning(
                        "Checkpoint {Checkpoint} was trained with required-on-load algorithm {Recorded}, but this Trainer has {Current}; differing hyperparameters may stop weights from loading.",
                        file, Describe(recorded), Describe(present.Describe()));
                }

                continue;
            }

            string howToFix = $"pass it in `algorithms` (an algorithm named '{record.Name}' with {Describe(recorded)}), " +
                $"give CheckpointOptions.AlgorithmResolver a way to re-create it, or list '{record.Name}' in LoadExcludeAlgorithms to load without it";
            if (policy == MissingAlgorithmPolicy.Refuse)
            {
                throw new InvalidOperationException(
                    $"Checkpoint '{file}' was trained with required-on-load algorithm '{record.Name}', which this Trainer lacks: {howToFix}.");
            }

            IAlgorithm algorithm = (resolver ?? ResolveBuiltInAlgorithm)(recorded)
                ?? throw new InvalidOperationException(
                    $"Checkpoint '{file}' was trained with required-on-load algorithm '{record.Name}', which this Trainer lacks and cannot re-create: {howToFix}.");
            try
            {
                if (algorithm.Match(Event.Init, state))
                {
                    algorithm.Apply(Event.Init, state, logger);
                }
            }
            catch (Exception ex)
            {
                throw new InvalidOperationException(
                    $"Checkpoint '{file}' needs required-on-load algorithm '{record.Name}'; re-creating and applying it at Init failed: {ex.Message}. You may {howToFix}.", ex);
            }

            state.Algorithms.Add(algorithm);
            log.LogWarning(
                "Automatically added required-on-load algorithm {Algorithm} ({Hyperparameters}), which was enabled when checkpoint {Checkpoint} was trained. To load without it, list '{Name}' in LoadExcludeAlgorithms.",
                record.Name, Describe(recorded), file, record.Name);
        }
    }

    private static string Describe(AlgorithmDescription d) =>
        d.Hyperparameters.Count == 0 ? "no hyperparameters" : string.Join(", ", d.Hyperparameters.Select(kv => $"{kv.Key}={kv.Value}"));
}
