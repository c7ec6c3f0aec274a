using System.Collections;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Creates the replacement for one module found by <see cref="ModuleSurgery.ReplaceModuleClasses"/>
/// (Composer's <c>ReplacementFunction</c>, composer/utils/module_surgery.py).
/// </summary>
/// <param name="module">The module to replace; an instance of the policy's <see cref="SurgeryPolicy.ModuleType"/>.</param>
/// <param name="moduleIndex">0-based count of the instances of this policy's type seen before this one in the traversal.</param>
/// <returns>The replacement, or null (or <paramref name="module"/> itself) to leave the module in place.</returns>
public delegate nn.Module? ReplacementFunction(nn.Module module, int moduleIndex);

/// <summary>
/// One rule of a module surgery: every module that is an instance of <see cref="ModuleType"/> (subclasses included)
/// is offered to <see cref="Replace"/>. Composer expresses the same as a <c>{module_class: replacement_fn}</c> mapping.
/// </summary>
public sealed class SurgeryPolicy
{
    /// <summary>Creates a policy.</summary>
    /// <param name="moduleType">A subclass of <c>torch.nn.Module</c>, e.g. <c>typeof(TorchSharp.Modules.LayerNorm)</c>.</param>
    /// <param name="replace">Makes the replacement of one module.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="moduleType"/> is not a <c>torch.nn.Module</c> type.</exception>
    public SurgeryPolicy(Type moduleType, ReplacementFunction replace)
    {
        ArgumentNullException.ThrowIfNull(moduleType);
        ArgumentNullException.ThrowIfNull(replace);
        if (!typeof(nn.Module).IsAssignableFrom(moduleType))
        {
            throw new ArgumentException($"Surgery policy type {moduleType.FullName} is not a torch.nn.Module type.", nameof(moduleType));
        }

        ModuleType = moduleType;
        Replace = replace;
    }

    /// <summary>The module type this policy matches (instances of subclasses match too).</summary>
    public Type ModuleType { get; }

    /// <summary>The replacement function.</summary>
    public ReplacementFunction Replace { get; }

    /// <summary>A policy for <typeparamref name="TModule"/> with a typed replacement function.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="replace"/> is null.</exception>
    public static SurgeryPolicy For<TModule>(Func<TModule, int, nn.Module?> replace)
        where TModule : nn.Module
    {
        ArgumentNullException.ThrowIfNull(replace);
        return new SurgeryPolicy(typeof(TModule), (m, i) => replace((TModule)m, i));
    }
}

/// <summary>
/// Model surgery: replaces submodules of a TorchSharp model in place, everywhere the model refers to them
/// (Composer's <c>composer.utils.module_surgery</c>, itself adapted from DeepSpeed's <c>replace_module</c>).
/// </summary>
/// <remarks>
/// <para>
/// In PyTorch a parent refers to a child through one attribute. In TorchSharp 0.107 a child can be referenced from
/// several places, all of which this class rewrites (read from TorchSharp's src/TorchSharp/NN/Module.cs,
/// Sequential.cs, ModuleList.cs, ModuleDict.cs):
/// </para>
/// <list type="number">
/// <item>the parent's registered-submodule table, the protected field <c>Module._internal_submodules</c>
/// (a <c>TorchSharp.Utils.OrderedDict&lt;string, Module&gt;</c>), which <c>named_children</c>, <c>named_modules</c>,
/// <c>named_parameters</c> and <c>state_dict</c> read. <c>register_module</c> refuses a name that is already
/// registered, so the entry is overwritten in place through the table's indexer (keeping its name and order);</item>
/// <item>the C# field that the parent's <c>forward</c> reads. <c>RegisterComponents</c> registers every field holding
/// a module under <c>FieldInfo.ComponentName()</c>: the field name, the <c>[ComponentName]</c> name, or for an
/// auto-property its compiler-generated backing field <c>&lt;Name&gt;k__BackingField</c>. Every instance field of
/// the parent's class and of its base classes (private ones included, up to but excluding <c>nn.Module</c>) is
/// compared by reference, whatever its name;</item>
/// <item>lists and dictionaries held in such fields: <c>Sequential</c> keeps its children only in a private
/// <c>List&lt;IModule&lt;Tensor, Tensor&gt;&gt;</c> (its <c>named_children</c> is overridden to read it and its table
/// stays empty), <c>ModuleList&lt;T&gt;</c> in a private <c>List&lt;T&gt;</c>, <c>ModuleDict&lt;T&gt;</c> in a
/// <c>List&lt;(string, T)&gt;</c> plus a <c>Dictionary&lt;string, T&gt;</c>. Any field whose value is an
/// <see cref="IList"/> (elements, or <c>ValueTuple</c> elements holding the module) or an <see cref="IDictionary"/>
/// (values) is rewritten the same way, so user modules holding a <c>List&lt;Module&gt;</c> or an array work too.</item>
/// </list>
/// <para>
/// The traversal visits <c>named_children()</c> of every module and, because a <c>ModuleList</c> or
/// <c>ModuleDict</c> registers its items only when it is itself registered, also the modules held in those
/// containers. References held anywhere else (inside other objects, closures, delegates, tuple-typed fields) are not
/// seen. All references are found and checked before anything is changed: when one cannot hold the replacement (a
/// field declared as <c>LayerNorm</c> cannot hold another class, since TorchSharp's <c>LayerNorm</c> is sealed; a
/// read-only list) the surgery throws and leaves the model unchanged.
/// </para>
/// </remarks>
public static class ModuleSurgery
{
    /// <summary>
    /// Ending of the metric through which a module-surgery algorithm reports how many modules it replaced:
    /// <c>&lt;algorithm name&gt;/modules_replaced</c>, logged at the event the surgery runs (run summaries read it).
    /// </summary>
    public const string ModulesReplacedMetricSuffix = "/modules_replaced";

    /// <summary>
    /// Replaces, in place, every submodule of <paramref name="model"/> matched by a policy, in every place the model
    /// refers to it (see the remarks of <see cref="ModuleSurgery"/>), so that <c>named_modules</c>, <c>state_dict</c>
    /// and <c>forward</c> all see the replacement (Composer's <c>replace_module_classes</c>).
    /// </summary>
    /// <param name="model">The model. The model itself is never replaced, only its descendants.</param>
    /// <param name="policies">Policies, tried in order; the first whose replacement function returns a new module wins.</param>
    /// <param name="optimizers">
    /// Optimizers built on the model's parameters. When a replacement brings new <c>Parameter</c> objects they are
    /// updated in place by <see cref="UpdateParamsInOptimizers"/>; when it reuses the old ones nothing is changed.
    /// </param>
    /// <returns>
    /// Original module → replacement, compared by reference. A module reachable by several paths appears once and is
    /// replaced by one instance everywhere. Replacements are not searched again, and modules inside a replaced module
    /// are not visited, so running the same surgery twice replaces nothing the second time.
    /// </returns>
    /// <remarks>
    /// A replacement is moved to the device of the module it replaces when it has parameters or buffers elsewhere.
    /// Replaced modules are not disposed: they may share parameters with their replacements.
    /// </remarks>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="InvalidOperationException">
    /// A reference to a matched module cannot hold its replacement (the message names the module's path, the field or
    /// container and the types); the model is then left unchanged.
    /// </exception>
    /// <exception cref="NotSupportedException">
    /// The replacement brings new parameters and an optimizer holding the old ones is not a managed TorchSharp
    /// optimizer (<c>OptimizerHelper</c>, e.g. LBFGS).
    /// </exception>
    public static IReadOnlyDictionary<nn.Module, nn.Module> ReplaceModuleClasses(
        nn.Module model,
        IEnumerable<SurgeryPolicy> policies,
        IEnumerable<optim.Optimizer>? optimizers = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(policies);
        SurgeryPolicy[] policyList = policies.ToArray();
        if (policyList.Any(p => p is null))
        {
            throw new ArgumentException("A surgery policy is null.", nameof(policies));
        }

        optim.Optimizer[] optimizerList = optimizers?.ToArray() ?? Array.Empty<optim.Optimizer>();

        // 1. Find the modules to replace and the modules whose references must be rewritten (everything visited that
        //    is not itself replaced; the subtrees of replaced modules leave the model and are not visited).
        var replacements = new Dictionary<nn.Module, nn.Module>(ReferenceEqualityComparer.Instance);
        var paths = new Dictionary<nn.Module, string>(ReferenceEqualityComparer.Instance);
        var parents = new List<nn.Module>();
        var indices = new int[policyList.Length];
        var visited = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        Walk(model, string.Empty, visited, (path, child) =>
        {
            nn.Module? replacement = MakeReplacement(child, policyList, indices);
            if (replacement is null)
            {
                return true;
            }

            replacements[child] = replacement;
            paths[child] = path;
            return false;
        }, parents);

        if (replacements.Count == 0)
        {
            return replacements;
        }

        // 2. Find every reference to a replaced module and check that it can hold the replacement.
        List<ModuleSlot> sites = parents.SelectMany(ModuleSlot.In).Where(slot => replacements.ContainsKey(slot.Module)).ToList();
        var problems = new List<string>();
        foreach (ModuleSlot site in sites)
        {
            if (site.Problem(replacements[site.Module], paths[site.Module]) is { } problem)
            {
                problems.Add(problem);
            }
        }

        if (problems.Count > 0)
        {
            throw new InvalidOperationException(
                "Module surgery cannot put the replacements everywhere the model refers to the original modules; the model was not changed:" +
                Environment.NewLine + string.Join(Environment.NewLine, problems.Distinct().Select(p => "  - " + p)));
        }

        // 3. Snapshot the optimizers' groups before the model changes (a group may hold a lazy model.parameters()).
        List<OptimizerSurgery.GroupSnapshot> snapshot = optimizerList.Length == 0 ? new List<OptimizerSurgery.GroupSnapshot>() : OptimizerSurgery.SnapshotGroups(optimizerList);

        // 4. Rewrite.
        foreach (ModuleSlot site in sites)
        {
            site.Replace(replacements[site.Module]);
        }

        // 5. Optimizers.
        if (optimizerList.Length > 0)
        {
            foreach ((nn.Module original, nn.Module replacement) in replacements)
            {
                OptimizerSurgery.UpdateParams(original.parameters().ToList(), replacement.parameters().ToList(), optimizerList, snapshot);
            }
        }

        // 6. Safety net against a TorchSharp layout this class does not know: no original may remain reachable.
        foreach ((string path, nn.Module m) in NamedModules(model))
        {
            if (replacements.ContainsKey(m))
            {
                throw new InvalidOperationException(
                    $"Module surgery replaced '{paths[m]}' ({m.GetType().Name}) but it is still reachable at '{path}'; " +
                    "this TorchSharp version stores submodules in a place ModuleSurgery does not know.");
            }
        }

        return replacements;
    }

    /// <summary>
    /// Every module below <paramref name="model"/> (not the model itself), once each, with its dotted path, in
    /// depth-first order: <c>named_children()</c> of each module plus the items of <c>ModuleList</c>/<c>ModuleDict</c>
    /// containers that were never registered.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="model"/> is null.</exception>
    public static IReadOnlyList<(string Path, nn.Module Module)> NamedModules(nn.Module model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var result = new List<(string, nn.Module)>();
        Walk(model, string.Empty, new HashSet<nn.Module>(ReferenceEqualityComparer.Instance), (path, m) =>
        {
            result.Add((path, m));
            return true;
        }, parents: null);
        return result;
    }

    /// <summary>The number of distinct modules below <paramref name="model"/> that are instances of <paramref name="moduleType"/> (Composer's <c>count_module_instances</c>).</summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static int CountModuleInstances(nn.Module model, Type moduleType)
    {
        ArgumentNullException.ThrowIfNull(moduleType);
        return NamedModules(model).Count(m => moduleType.IsInstanceOfType(m.Module));
    }

    /// <summary>
    /// Replaces <paramref name="oldParams"/> by <paramref name="newParams"/> in <paramref name="optimizers"/>, in place
    /// (Composer's <c>update_params_in_optimizer</c>). Parameters present in both are left alone. When as many
    /// parameters are removed as added, the k-th added one takes the group and position of the k-th removed one;
    /// otherwise all removed ones must be in one group, and the added ones are inserted where the first removed one
    /// was. The per-parameter state of removed parameters (e.g. Adam's moments) is dropped and disposed; added
    /// parameters get fresh state from the optimizer. An optimizer that holds none of the removed parameters is left
    /// unchanged.
    /// </summary>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    /// <exception cref="InvalidOperationException">An optimizer holds some but not all removed parameters, or they are split over groups and cannot be paired.</exception>
    /// <exception cref="NotSupportedException">An optimizer holding removed parameters is not a managed TorchSharp optimizer (<c>OptimizerHelper</c>).</exception>
    public static void UpdateParamsInOptimizers(IEnumerable<Parameter> oldParams, IEnumerable<Parameter> newParams, IEnumerable<optim.Optimizer> optimizers)
    {
        ArgumentNullException.ThrowIfNull(oldParams);
        ArgumentNullException.ThrowIfNull(newParams);
        ArgumentNullException.ThrowIfNull(optimizers);
        optim.Optimizer[] list = optimizers.ToArray();
        OptimizerSurgery.UpdateParams(oldParams.ToList(), newParams.ToList(), list, OptimizerSurgery.SnapshotGroups(list));
    }

    // ---- traversal -------------------------------------------------------------------------------------------

    /// <summary>
    /// Depth-first walk. <paramref name="visit"/> gets each module once (by reference) and returns whether to descend
    /// into it; modules descended into are added to <paramref name="parents"/> (the root first).
    /// </summary>
    private static void Walk(nn.Module module, string path, HashSet<nn.Module> visited, Func<string, nn.Module, bool> visit, List<nn.Module>? parents)
    {
        visited.Add(module);
        parents?.Add(module);
        foreach ((string name, nn.Module child) in Children(module))
        {
            if (!visited.Add(child))
            {
                continue;
            }

            string childPath = path.Length == 0 ? name : path + "." + name;
            if (visit(childPath, child))
            {
                visited.Remove(child);
                Walk(child, childPath, visited, visit, parents);
            }
        }
    }

    private static IEnumerable<(string Name, nn.Module Module)> Children(nn.Module module)
    {
        var seen = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach ((string name, nn.Module child) in module.named_children())
        {
            if (seen.Add(child))
            {
                yield return (name, child);
            }
        }

        if (!ModuleSlot.IsTorchSharpContainer(module))
        {
            yield break;
        }

        // ModuleList/ModuleDict register their items only from RegisterComponents, i.e. when they are registered in a
        // parent; read their private storage so an unregistered container (e.g. the root) is traversed as well.
        foreach (ModuleSlot slot in ModuleSlot.In(module).Where(s => s.InCollection))
        {
            if (seen.Add(slot.Module))
            {
                yield return (slot.Name, slot.Module);
            }
        }
    }

    private static nn.Module? MakeReplacement(nn.Module module, SurgeryPolicy[] policies, int[] indices)
    {
        for (int i = 0; i < policies.Length; i++)
        {
            if (!policies[i].ModuleType.IsInstanceOfType(module))
            {
                continue;
            }

            nn.Module? replacement = policies[i].Replace(module, indices[i]++);
            if (replacement is null || ReferenceEquals(replacement, module))
            {
                continue;
            }

            MoveToDeviceOf(module, replacement);
            return replacement;
        }

        return null;
    }

    private static void MoveToDeviceOf(nn.Module original, nn.Module replacement)
    {
        Tensor? probe = original.parameters().Cast<Tensor>().Concat(original.buffers()).FirstOrDefault();
        if (probe is null)
        {
            return;
        }

        Device device = probe.device;
        bool elsewhere = replacement.parameters().Cast<Tensor>().Concat(replacement.buffers())
            .Any(t => t.device_type != device.type || t.device_index != device.index);
        if (elsewhere)
        {
            replacement.to(device);
        }
    }
}
