using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using ComposerSharp.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Algorithms;

/// <summary>
/// The one description of where a TorchSharp module can be held by its parent (see the remarks of
/// <see cref="ModuleSurgery"/>): the registered-submodule table, a field, an element of a list held in a field (or an
/// item of a value tuple in such an element), a value of a dictionary held in a field. The traversal reads it to find
/// the items of unregistered containers; the rewrite reads it to find, check and replace every reference.
/// </summary>
internal abstract class ModuleSlot
{
    private const BindingFlags InstanceFields = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;

    protected ModuleSlot(nn.Module parent, string name, nn.Module module)
    {
        Parent = parent;
        Name = name;
        Module = module;
    }

    /// <summary>The module holding the reference.</summary>
    public nn.Module Parent { get; }

    /// <summary>The name the module has in this slot (table key, list index, tuple key, dictionary key, field name).</summary>
    public string Name { get; }

    /// <summary>The module held.</summary>
    public nn.Module Module { get; }

    /// <summary>Whether the slot is inside a collection (list, tuple in a list, dictionary) rather than the table or a field.</summary>
    public abstract bool InCollection { get; }

    /// <summary>Every slot of <paramref name="parent"/> that holds a module, in order: the table, then each field.</summary>
    public static IEnumerable<ModuleSlot> In(nn.Module parent)
    {
        TorchSharp.Utils.OrderedDict<string, nn.Module> table = TorchSharpInternals.SubmoduleTable(parent);
        foreach ((string name, nn.Module child) in table)
        {
            yield return new TableSlot(parent, table, name, child);
        }

        foreach (FieldInfo field in Fields(parent.GetType()))
        {
            switch (field.GetValue(parent))
            {
                case nn.Module m:
                    yield return new FieldSlot(parent, field, m);
                    break;
                case Tensor:
                case null:
                    break;
                case IList list when MayHoldModules(list.GetType()):
                    for (int i = 0; i < list.Count; i++)
                    {
                        string index = i.ToString(CultureInfo.InvariantCulture);
                        if (list[i] is nn.Module lm)
                        {
                            yield return new ListSlot(parent, field, list, i, index, lm);
                        }
                        else if (list[i] is ITuple tuple)
                        {
                            string key = tuple.Length > 0 && tuple[0] is string s ? s : index;
                            for (int j = 0; j < tuple.Length; j++)
                            {
                                if (tuple[j] is nn.Module tm)
                                {
                                    yield return new TupleItemSlot(parent, field, list, i, j, key, tm);
                                }
                            }
                        }
                    }

                    break;
                case IDictionary dict when MayHoldModules(dict.GetType()):
                    foreach (DictionaryEntry entry in dict)
                    {
                        if (entry.Value is nn.Module dm)
                        {
                            yield return new DictionarySlot(parent, field, dict, entry.Key, dm);
                        }
                    }

                    break;
            }
        }
    }

    /// <summary>Why this slot cannot hold <paramref name="replacement"/> (naming the module by <paramref name="path"/>), or null.</summary>
    public abstract string? Problem(nn.Module replacement, string path);

    /// <summary>Puts <paramref name="replacement"/> where the module was.</summary>
    public abstract void Replace(nn.Module replacement);

    /// <summary>Whether <paramref name="module"/> is a TorchSharp container (<c>Sequential</c>, <c>ModuleList</c>, <c>ModuleDict</c>), whose items may be unregistered.</summary>
    public static bool IsTorchSharpContainer(nn.Module module)
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

    protected string Describe(FieldInfo field) => $"field {field.DeclaringType?.Name}.{field.Name} of {Parent.GetType().Name}";

    protected string? TypeProblem(Type slotType, nn.Module replacement, string where, string path) =>
        slotType.IsInstanceOfType(replacement)
            ? null
            : $"'{path}' ({Module.GetType().Name}) is held in {where}, declared as {slotType.Name}, which cannot hold the replacement " +
              $"{replacement.GetType().Name}; declare it as a base type such as Module<Tensor, Tensor>.";

    /// <summary>The element type of a list or array, or the value type of a dictionary; null when unknown.</summary>
    protected static Type? ElementType(Type collectionType)
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

    private sealed class TableSlot(nn.Module parent, TorchSharp.Utils.OrderedDict<string, nn.Module> table, string name, nn.Module module) : ModuleSlot(parent, name, module)
    {
        public override bool InCollection => false;

        public override string? Problem(nn.Module replacement, string path) => null;

        // The indexer keeps the entry's position; register_module would throw "already registered".
        public override void Replace(nn.Module replacement) => table[Name] = replacement;
    }

    private sealed class FieldSlot(nn.Module parent, FieldInfo field, nn.Module module) : ModuleSlot(parent, field.Name, module)
    {
        public override bool InCollection => false;

        public override string? Problem(nn.Module replacement, string path) => TypeProblem(field.FieldType, replacement, Describe(field), path);

        public override void Replace(nn.Module replacement) => field.SetValue(Parent, replacement);
    }

    private sealed class ListSlot(nn.Module parent, FieldInfo field, IList list, int index, string name, nn.Module module) : ModuleSlot(parent, name, module)
    {
        public override bool InCollection => true;

        public override string? Problem(nn.Module replacement, string path) =>
            list.IsReadOnly
                ? $"'{path}' is held in the read-only {list.GetType().Name} of {Describe(field)}."
                : TypeProblem(ElementType(list.GetType()) ?? typeof(object), replacement, $"the {list.GetType().Name} of {Describe(field)}", path);

        public override void Replace(nn.Module replacement) => list[index] = replacement;
    }

    /// <summary>Item <c>item</c> of the value tuple at <c>index</c> of a list (how <c>ModuleDict</c> keeps its items); replacing rebuilds the tuple.</summary>
    private sealed class TupleItemSlot(nn.Module parent, FieldInfo field, IList list, int index, int item, string name, nn.Module module) : ModuleSlot(parent, name, module)
    {
        public override bool InCollection => true;

        public override string? Problem(nn.Module replacement, string path)
        {
            if (list.IsReadOnly)
            {
                return $"'{path}' is held in the read-only {list.GetType().Name} of {Describe(field)}.";
            }

            var tuple = (ITuple)list[index]!;
            Type[] itemTypes = tuple.GetType().GetGenericArguments();
            return !tuple.GetType().IsValueType || itemTypes.Length != tuple.Length
                ? $"'{path}' is held in a {tuple.GetType().Name} inside {Describe(field)}, which surgery cannot rebuild."
                : TypeProblem(itemTypes[item], replacement, $"the {list.GetType().Name} of {Describe(field)}", path);
        }

        public override void Replace(nn.Module replacement)
        {
            // Read the tuple now: another item of it may have been replaced already.
            var tuple = (ITuple)list[index]!;
            var items = new object?[tuple.Length];
            for (int j = 0; j < tuple.Length; j++)
            {
                items[j] = j == item ? replacement : tuple[j];
            }

            list[index] = Activator.CreateInstance(tuple.GetType(), items);
        }
    }

    private sealed class DictionarySlot(nn.Module parent, FieldInfo field, IDictionary dict, object key, nn.Module module) : ModuleSlot(parent, key.ToString() ?? string.Empty, module)
    {
        public override bool InCollection => true;

        public override string? Problem(nn.Module replacement, string path) =>
            dict.IsReadOnly
                ? $"'{path}' is held in the read-only {dict.GetType().Name} of {Describe(field)}."
                : TypeProblem(ElementType(dict.GetType()) ?? typeof(object), replacement, $"the {dict.GetType().Name} of {Describe(field)}", path);

        public override void Replace(nn.Module replacement) => dict[key] = replacement;
    }
}
