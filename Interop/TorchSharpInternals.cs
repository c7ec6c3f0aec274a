using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ComposerSharp.Interop;

/// <summary>
/// TorchSharp's non-public fields that module surgery must rewrite, read from TorchSharp 0.107's sources
/// (src/TorchSharp/NN/Module.cs, src/TorchSharp/Optimizers/Optimizer.cs): the registered-submodule table of a
/// module, the parameter groups of a managed optimizer and its per-parameter state. Each accessor throws
/// <see cref="MissingFieldException"/> naming the field when a TorchSharp upgrade removed or renamed it;
/// <see cref="InteropAssumptions"/> checks them all at once.
/// </summary>
internal static class TorchSharpInternals
{
    private const BindingFlags NonPublicInstance = BindingFlags.Instance | BindingFlags.NonPublic;

    private static readonly Lazy<FieldInfo> SubmoduleTableField = new(() => Field(typeof(nn.Module), "_internal_submodules", typeof(TorchSharp.Utils.OrderedDict<string, nn.Module>)));

    private static readonly Lazy<FieldInfo> ParameterGroupsField = new(() => Field(typeof(optim.Optimizer), "_parameter_groups", typeof(IList<ParamGroup>)));

    private static readonly Lazy<FieldInfo> OptimizerStateField = new(() => Field(typeof(OptimizerHelper), "_state", typeof(TorchSharp.Utils.OrderedDict<IntPtr, OptimizerState>)));

    private static readonly MethodInfo MemberwiseCloneMethod = typeof(object).GetMethod("MemberwiseClone", NonPublicInstance)!;

    /// <summary>The module's registered submodules by name (<c>Module._internal_submodules</c>), the live table.</summary>
    /// <exception cref="MissingFieldException">This TorchSharp has no such field of that type.</exception>
    internal static TorchSharp.Utils.OrderedDict<string, nn.Module> SubmoduleTable(nn.Module module) =>
        (TorchSharp.Utils.OrderedDict<string, nn.Module>)SubmoduleTableField.Value.GetValue(module)!;

    /// <summary>A managed optimizer's parameter groups (<c>Optimizer._parameter_groups</c>), the live list.</summary>
    /// <exception cref="MissingFieldException">This TorchSharp has no such field of that type.</exception>
    internal static IList<ParamGroup> ParameterGroups(optim.Optimizer optimizer) =>
        (IList<ParamGroup>)ParameterGroupsField.Value.GetValue(optimizer)!;

    /// <summary>A managed optimizer's per-parameter state by parameter handle (<c>OptimizerHelper._state</c>), the live table.</summary>
    /// <exception cref="MissingFieldException">This TorchSharp has no such field of that type.</exception>
    internal static TorchSharp.Utils.OrderedDict<IntPtr, OptimizerState> OptimizerStates(OptimizerHelper optimizer) =>
        (TorchSharp.Utils.OrderedDict<IntPtr, OptimizerState>)OptimizerStateField.Value.GetValue(optimizer)!;

    /// <summary>A shallow copy of an optimizer's options (TorchSharp's option classes have no public copy).</summary>
    internal static OptimizerOptions CloneOptions(OptimizerOptions options) => (OptimizerOptions)MemberwiseCloneMethod.Invoke(options, null)!;

    /// <summary>Checks each field; returns one message per broken assumption.</summary>
    internal static IEnumerable<string> Problems()
    {
        foreach (Lazy<FieldInfo> field in new[] { SubmoduleTableField, ParameterGroupsField, OptimizerStateField })
        {
            string? problem = null;
            try
            {
                _ = field.Value;
            }
            catch (MissingFieldException ex)
            {
                problem = ex.Message;
            }

            if (problem is not null)
            {
                yield return problem;
            }
        }
    }

    /// <summary>The non-public instance field <paramref name="name"/> of <paramref name="owner"/>, checked to hold an <paramref name="expected"/>.</summary>
    /// <exception cref="MissingFieldException">No such field, or one of another type; the message names it and the TorchSharp version.</exception>
    internal static FieldInfo Field(Type owner, string name, Type expected)
    {
        FieldInfo? field = owner.GetField(name, NonPublicInstance);
        string version = owner.Assembly.GetName().Version?.ToString() ?? "?";
        if (field is null)
        {
            throw new MissingFieldException($"TorchSharp {version} has no field {owner.Name}.{name}; module surgery was written against TorchSharp 0.107.");
        }

        if (!expected.IsAssignableFrom(field.FieldType))
        {
            throw new MissingFieldException($"TorchSharp {version}'s field {owner.Name}.{name} is a {field.FieldType}, not the {expected} module surgery was written against (TorchSharp 0.107).");
        }

        return field;
    }
}
