using ComposerSharp.Core;
using ComposerSharp.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Optimizer parameter surgery (Composer's <c>update_params_in_optimizer</c>, composer/utils/module_surgery.py): when
/// module surgery brings new <c>Parameter</c> objects, the optimizers built on the old ones are updated in place —
/// the parameter takes the old one's group and position, the old per-parameter state is dropped and disposed, and the
/// optimizer creates fresh state for the new one. TorchSharp exposes none of this, so it goes through
/// <see cref="TorchSharpInternals"/>.
/// </summary>
internal static class OptimizerSurgery
{
    /// <summary>The parameters of one parameter group, materialised before surgery.</summary>
    internal sealed record GroupSnapshot(optim.Optimizer Optimizer, ParamGroup? Group, List<Parameter> Parameters);

    internal static List<GroupSnapshot> SnapshotGroups(IEnumerable<optim.Optimizer> optimizers)
    {
        var result = new List<GroupSnapshot>();
        foreach (optim.Optimizer optimizer in optimizers)
        {
            ArgumentNullException.ThrowIfNull(optimizer, nameof(optimizers));
            if (optimizer is OptimizerHelper)
            {
                var groups = TorchSharpInternals.ParameterGroups(optimizer);
                result.AddRange(groups.Select(g => new GroupSnapshot(optimizer, g, g.Parameters.ToList())));
            }
            else
            {
                result.Add(new GroupSnapshot(optimizer, null, optimizer.parameters().ToList()));
            }
        }

        return result;
    }

    internal static void UpdateParams(List<Parameter> oldParams, List<Parameter> newParams, IReadOnlyList<optim.Optimizer> optimizers, List<GroupSnapshot> snapshot)
    {
        var oldHandles = oldParams.Select(p => p.Handle).ToHashSet();
        var newHandles = newParams.Select(p => p.Handle).ToHashSet();
        List<Parameter> removed = oldParams.Where(p => !newHandles.Contains(p.Handle)).ToList();
        List<Parameter> added = newParams.Where(p => !oldHandles.Contains(p.Handle)).ToList();
        if (removed.Count == 0 && added.Count == 0)
        {
            return;
        }

        foreach (optim.Optimizer optimizer in optimizers)
        {
            // Where each removed parameter sits: (group snapshot, position).
            var locations = new List<(GroupSnapshot Group, int Position)>();
            foreach (Parameter p in removed)
            {
                foreach (GroupSnapshot g in snapshot.Where(s => ReferenceEquals(s.Optimizer, optimizer)))
                {
                    int position = g.Parameters.FindIndex(q => q.Handle == p.Handle);
                    if (position >= 0)
                    {
                        locations.Add((g, position));
                        break;
                    }
                }
            }

            if (locations.Count == 0)
            {
                continue;
            }

            if (optimizer is not OptimizerHelper)
            {
                throw new NotSupportedException(
                    $"Module surgery replaced parameters held by a {optimizer.GetType().Name}, which keeps its parameters in native code; " +
                    "only managed TorchSharp optimizers (Adam, AdamW, SGD, ...) can be updated in place. Create the optimizer after surgery.");
            }

            if (locations.Count != removed.Count)
            {
                throw new InvalidOperationException(
                    $"The {optimizer.GetType().Name} holds {locations.Count} of the {removed.Count} parameters of a replaced module; expected all or none.");
            }

            bool oneGroup = locations.Select(l => l.Group).Distinct().Count() == 1;
            if (removed.Count != added.Count && !oneGroup)
            {
                throw new InvalidOperationException(
                    $"The parameters of a replaced module are split over several parameter groups of the {optimizer.GetType().Name} and the replacement has " +
                    $"{added.Count} parameters instead of {removed.Count}, so the new ones cannot be assigned to groups.");
            }

            if (removed.Count == added.Count)
            {
                for (int k = 0; k < removed.Count; k++)
                {
                    locations[k].Group.Parameters[locations[k].Position] = added[k];
                }
            }
            else
            {
                GroupSnapshot g = locations[0].Group;
                int insertAt = locations.Min(l => l.Position);
                g.Parameters.RemoveAll(q => removed.Any(r => r.Handle == q.Handle));
                g.Parameters.InsertRange(Math.Min(insertAt, g.Parameters.Count), added);
            }

            var state = TorchSharpInternals.OptimizerStates((OptimizerHelper)optimizer);
            foreach (Parameter p in removed)
            {
                if (state.TryGetValue(p.Handle, out OptimizerState? old))
                {
                    state.Remove(p.Handle);
                    (old as IDisposable)?.Dispose();
                }
            }

            foreach (GroupSnapshot g in locations.Select(l => l.Group).Distinct())
            {
                g.Group!.Parameters = g.Parameters.ToList();
                List<Parameter> fresh = added.Where(a => g.Parameters.Any(q => q.Handle == a.Handle)).ToList();
                if (fresh.Count > 0)
                {
                    CreateState(optimizer, g.Group, fresh);
                }
            }
        }
    }

    /// <summary>
    /// Lets the optimizer create its own per-parameter state (its nested <c>State</c> class) for <paramref name="parameters"/>:
    /// <c>add_param_group</c> with a copy of the group's options, then the temporary group is removed again.
    /// </summary>
    private static void CreateState(optim.Optimizer optimizer, ParamGroup group, List<Parameter> parameters)
    {
        var options = TorchSharpInternals.CloneOptions(group.Options);
        var temporary = new ParamGroup { Parameters = parameters, Options = options };
        optimizer.add_param_group(temporary);
        var groups = TorchSharpInternals.ParameterGroups(optimizer);
        groups.Remove(temporary);
    }
}
