using System.Collections;
using System.Reflection;
using ComposerSharp.Interop;
using System.Runtime.CompilerServices;
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

    private const BindingFlags InstanceFields = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;

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
        var sites = new List<ReferenceSite>();
        var problems = new List<string>();
        foreach (nn.Module parent in parents)
        {
            FindSites(parent, replacements, sites);
        }

        foreach (ReferenceSite site in sites)
        {
            if (site.Problem(replacements, paths) is { } problem)
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
        List<GroupSnapshot> snapshot = optimizerList.Length == 0 ? new List<GroupSnapshot>() : SnapshotGroups(optimizerList);

        // 4. Rewrite.
        foreach (ReferenceSite site in sites)
        {
            site.Apply(replacements);
        }

        // 5. Optimizers.
        if (optimizerList.Length > 0)
        {
            foreach ((nn.Module original, nn.Module replacement) in replacements)
            {
                UpdateParams(original.parameters().ToList(), replacement.parameters().ToList(), optimizerList, snapshot);
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
        UpdateParams(oldParams.ToList(), newParams.ToList(), list, SnapshotGroups(list));
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

        if (!IsTorchSharpContainer(module))
        {
            yield break;
        }

        // ModuleList/ModuleDict register their items only from RegisterComponents, i.e. when they are registered in a
        // parent; read their private storage so an unregistered container (e.g. the root) is traversed as well.
        foreach (FieldInfo field in Fields(module.GetType()))
        {
            foreach ((string name, nn.Module child) in ModulesIn(field.GetValue(module)))
            {
                if (seen.Add(child))
                {
                    yield return (name, child);
                }
            }
        }
    }

    private static bool IsTorchSharpContainer(nn.Module module)
    {
        if (module is Sequential)
        {
            return true;
        }

        for (Type? t = module.GetType(); t is not null; t = t.BaseType)
        {
            if (t.IsGenericType && (t.GetGenericTypeDefinition() == typeof(ModuleList<>) || t.GetGenericTypeDefinition() == typeof(ModuleDict<>)))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>The modules directly held by a field value: a list's elements (or their tuple items) or a dictionary's values.</summary>
    private static IEnumerable<(string Name, nn.Module Module)> ModulesIn(object? value)
    {
        switch (value)
        {
            case IList list when MayHoldModules(list.GetType()):
                for (int i = 0; i < list.Count; i++)
                {
                    if (list[i] is nn.Module m)
                    {
                        yield return (i.ToString(System.Globalization.CultureInfo.InvariantCulture), m);
                    }
                    else if (list[i] is ITuple tuple)
                    {
                        string? key = tuple.Length > 0 ? tuple[0] as string : null;
                        for (int j = 0; j < tuple.Length; j++)
                        {
                            if (tuple[j] is nn.Module tm)
                            {
                                yield return (key ?? i.ToString(System.Globalization.CultureInfo.InvariantCulture), tm);
                            }
                        }
                    }
                }

                break;
            case IDictionary dict when MayHoldModules(dict.GetType()):
                foreach (DictionaryEntry entry in dict)
                {
                    if (entry.Value is nn.Module m)
                    {
                        yield return (entry.Key.ToString() ?? string.Empty, m);
                    }
                }

                break;
        }
    }

    /// <summary>Instance fields of <paramref name="type"/> and its base classes, private ones included, up to but excluding <c>nn.Module</c> (whose own fields are the tables).</summary>
    private static IEnumerable<FieldInfo> Fields(Type type)
    {
        for (Type? t = type; t is not null && t != typeof(nn.Module) && t != typeof(object); t = t.BaseType)
        {
            foreach (FieldInfo field in t.GetFields(InstanceFields))
            {
                yield return field;
            }
        }
    }

    /// <summary>Whether a collection type's element (or value) type can hold a module; skips e.g. <c>long[]</c> and <c>List&lt;string&gt;</c>.</summary>
    private static bool MayHoldModules(Type collectionType)
    {
        Type? element = ElementType(collectionType);
        return element is null || CanHoldModule(element);
    }

    private static bool CanHoldModule(Type t)
    {
        if (t.IsGenericType && typeof(ITuple).IsAssignableFrom(t) && t.IsValueType)
        {
            return t.GetGenericArguments().Any(CanHoldModule);
        }

        // object and Module's base types, Module and its subclasses, and any interface (IModule<Tensor, Tensor>, ...).
        return t.IsAssignableFrom(typeof(nn.Module)) || typeof(nn.Module).IsAssignableFrom(t) || t.IsInterface;
    }

    /// <summary>The element type of a list or array, or the value type of a dictionary; null when unknown.</summary>
    private static Type? ElementType(Type collectionType)
    {
        if (collectionType.IsArray)
        {
            return collectionType.GetElementType();
        }

        foreach (Type i in collectionType.GetInterfaces().Prepend(collectionType))
        {
            if (!i.IsGenericType)
            {
                continue;
            }

            Type def = i.GetGenericTypeDefinition();
            if (def == typeof(IDictionary<,>))
            {
                return i.GetGenericArguments()[1];
            }

            if (def == typeof(IList<>))
            {
                return i.GetGenericArguments()[0];
            }
        }

        return null;
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

    // ---- reference sites -------------------------------------------------------------------------------------

    private static void FindSites(nn.Module parent, Dictionary<nn.Module, nn.Module> replacements, List<ReferenceSite> sites)
    {
        // (1) The registered-submodule table.
        var table = TorchSharpInternals.SubmoduleTable(parent);
        foreach ((string name, nn.Module child) in table)
        {
            if (replacements.ContainsKey(child))
            {
                sites.Add(new TableSite(parent, table, name, child));
            }
        }

        // (2) Fields, (3) lists and dictionaries held in fields.
        foreach (FieldInfo field in Fields(parent.GetType()))
        {
            object? value = field.GetValue(parent);
            switch (value)
            {
                case nn.Module m when replacements.ContainsKey(m):
                    sites.Add(new FieldSite(parent, field, m));
                    break;
                case nn.Module:
                case Tensor:
                case null:
                    break;
                case IList list when MayHoldModules(list.GetType()):
                    for (int i = 0; i < list.Count; i++)
                    {
                        if (list[i] is nn.Module lm && replacements.ContainsKey(lm))
                        {
                            sites.Add(new ListSite(parent, field, list, i, lm));
                        }
                        else if (list[i] is ITuple tuple && Enumerable.Range(0, tuple.Length).Any(j => tuple[j] is nn.Module tm && replacements.ContainsKey(tm)))
                        {
                            sites.Add(new TupleListSite(parent, field, list, i));
                        }
                    }

                    break;
                case IDictionary dict when MayHoldModules(dict.GetType()):
                    foreach (DictionaryEntry entry in dict)
                    {
                        if (entry.Value is nn.Module dm && replacements.ContainsKey(dm))
                        {
                            sites.Add(new DictionarySite(parent, field, dict, entry.Key, dm));
                        }
                    }

                    break;
            }
        }
    }

    /// <summary>One place where a parent refers to a module being replaced.</summary>
    private abstract class ReferenceSite
    {
        protected ReferenceSite(nn.Module parent) => Parent = parent;

        protected nn.Module Parent { get; }

        /// <summary>Why the site cannot take the replacement, or null.</summary>
        public abstract string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths);

        public abstract void Apply(Dictionary<nn.Module, nn.Module> replacements);

        protected string Describe(FieldInfo field) => $"field {field.DeclaringType?.Name}.{field.Name} of {Parent.GetType().Name}";

        protected static string? TypeProblem(Type slotType, nn.Module original, nn.Module replacement, string where, Dictionary<nn.Module, string> paths) =>
            slotType.IsInstanceOfType(replacement)
                ? null
                : $"'{paths[original]}' ({original.GetType().Name}) is held in {where}, declared as {slotType.Name}, which cannot hold the replacement " +
                  $"{replacement.GetType().Name}; declare it as a base type such as Module<Tensor, Tensor>.";
    }

    private sealed class TableSite(nn.Module parent, TorchSharp.Utils.OrderedDict<string, nn.Module> table, string name, nn.Module original) : ReferenceSite(parent)
    {
        public override string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths) => null;

        // The indexer keeps the entry's position; register_module would throw "already registered".
        public override void Apply(Dictionary<nn.Module, nn.Module> replacements) => table[name] = replacements[original];
    }

    private sealed class FieldSite(nn.Module parent, FieldInfo field, nn.Module original) : ReferenceSite(parent)
    {
        public override string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths) =>
            TypeProblem(field.FieldType, original, replacements[original], Describe(field), paths);

        public override void Apply(Dictionary<nn.Module, nn.Module> replacements) => field.SetValue(Parent, replacements[original]);
    }

    private sealed class ListSite(nn.Module parent, FieldInfo field, IList list, int index, nn.Module original) : ReferenceSite(parent)
    {
        public override string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths)
        {
            if (list.IsReadOnly)
            {
                return $"'{paths[original]}' is held in the read-only {list.GetType().Name} of {Describe(field)}.";
            }

            return TypeProblem(ElementType(list.GetType()) ?? typeof(object), original, replacements[original], $"the {list.GetType().Name} of {Describe(field)}", paths);
        }

        public override void Apply(Dictionary<nn.Module, nn.Module> replacements) => list[index] = replacements[original];
    }

    private sealed class TupleListSite(nn.Module parent, FieldInfo field, IList list, int index) : ReferenceSite(parent)
    {
        public override string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths)
        {
            if (list.IsReadOnly)
            {
                return $"A replaced module is held in the read-only {list.GetType().Name} of {Describe(field)}.";
            }

            var tuple = (ITuple)list[index]!;
            Type[] itemTypes = tuple.GetType().GetGenericArguments();
            if (!tuple.GetType().IsValueType || itemTypes.Length != tuple.Length)
            {
                return $"A replaced module is held in a {tuple.GetType().Name} inside {Describe(field)}, which surgery cannot rebuild.";
            }

            for (int j = 0; j < tuple.Length; j++)
            {
                if (tuple[j] is nn.Module m && replacements.TryGetValue(m, out nn.Module? r) &&
                    TypeProblem(itemTypes[j], m, r, $"the {list.GetType().Name} of {Describe(field)}", paths) is { } problem)
                {
                    return problem;
                }
            }

            return null;
        }

        public override void Apply(Dictionary<nn.Module, nn.Module> replacements)
        {
            var tuple = (ITuple)list[index]!;
            var items = new object?[tuple.Length];
            for (int j = 0; j < tuple.Length; j++)
            {
                items[j] = tuple[j] is nn.Module m && replacements.TryGetValue(m, out nn.Module? r) ? r : tuple[j];
            }

            list[index] = Activator.CreateInstance(tuple.GetType(), items);
        }
    }

    private sealed class DictionarySite(nn.Module parent, FieldInfo field, IDictionary dict, object key, nn.Module original) : ReferenceSite(parent)
    {
        public override string? Problem(Dictionary<nn.Module, nn.Module> replacements, Dictionary<nn.Module, string> paths) =>
            dict.IsReadOnly
                ? $"'{paths[original]}' is held in the read-only {dict.GetType().Name} of {Describe(field)}."
                : TypeProblem(ElementType(dict.GetType()) ?? typeof(object), original, replacements[original], $"the {dict.GetType().Name} of {Describe(field)}", paths);

        public override void Apply(Dictionary<nn.Module, nn.Module> replacements) => dict[key] = replacements[original];
    }

    // ---- optimizers ------------------------------------------------------------------------------------------

    /// <summary>The parameters of one parameter group, materialised before surgery.</summary>
    private sealed record GroupSnapshot(optim.Optimizer Optimizer, ParamGroup? Group, List<Parameter> Parameters);

    private static List<GroupSnapshot> SnapshotGroups(IEnumerable<optim.Optimizer> optimizers)
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

    private static void UpdateParams(List<Parameter> oldParams, List<Parameter> newParams, IReadOnlyList<optim.Optimizer> optimizers, List<GroupSnapshot> snapshot)
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
