using System.Globalization;
using System.Text;
using ComposerSharp.Core;

namespace ComposerSharp.Events;

/// <summary>
/// What a checkpoint stores about an algorithm so that it can be re-created: its registered name and its
/// hyperparameters as invariant-culture strings.
/// </summary>
/// <param name="Name">Registered name, snake_case, e.g. <c>low_precision_layernorm</c>.</param>
/// <param name="Hyperparameters">Hyperparameter name to value; empty for an algorithm without hyperparameters.</param>
public sealed record AlgorithmDescription(string Name, IReadOnlyDictionary<string, string> Hyperparameters)
{
    /// <summary>A description with no hyperparameters.</summary>
    public AlgorithmDescription(string name)
        : this(name, new Dictionary<string, string>())
    {
    }

    /// <summary>Value equality over name and hyperparameters.</summary>
    public bool Equals(AlgorithmDescription? other) =>
        other is not null && Name == other.Name && Hyperparameters.Count == other.Hyperparameters.Count &&
        Hyperparameters.All(kv => other.Hyperparameters.TryGetValue(kv.Key, out string? v) && v == kv.Value);

    /// <inheritdoc/>
    public override int GetHashCode() => Name.GetHashCode(StringComparison.Ordinal);
}

/// <summary>
/// An algorithm plugin: code that changes training by acting on the <see cref="State"/> at chosen events,
/// without touching model code (Composer's <c>composer.core.Algorithm</c>, composer/core/algorithm.py).
/// The <see cref="Engine"/> calls <see cref="Match"/> at every event and <see cref="Apply"/> when it returns true.
/// </summary>
public interface IAlgorithm
{
    /// <summary>Registered name, snake_case (e.g. <c>low_precision_layernorm</c>); used in traces, logs and checkpoints.</summary>
    string Name { get; }

    /// <summary>
    /// True when the algorithm must be present when a checkpoint written with it is loaded, because it changed
    /// the model's structure (module surgery) or otherwise its state (Composer's <c>required_on_load</c>).
    /// </summary>
    bool RequiredOnLoad { get; }

    /// <summary>Whether to run at <paramref name="e"/> given <paramref name="state"/>. Must not change the state.</summary>
    bool Match(Event e, State state);

    /// <summary>Runs the algorithm. Returns an exit code recorded in the engine's trace, or null.</summary>
    /// <exception cref="Exception">Anything it throws propagates from <see cref="Engine.RunEvent"/>, wrapped in an <see cref="AlgorithmException"/>.</exception>
    int? Apply(Event e, State state, Logger logger);

    /// <summary>The name and hyperparameters a checkpoint stores to re-create this algorithm.</summary>
    AlgorithmDescription Describe();
}

/// <summary>Convenience base for algorithms: a snake_case <see cref="Name"/> from the class name and no hyperparameters.</summary>
public abstract class Algorithm : IAlgorithm
{
    /// <inheritdoc/>
    public virtual string Name => ToSnakeCase(GetType().Name);

    /// <inheritdoc/>
    public virtual bool RequiredOnLoad => false;

    /// <inheritdoc/>
    public abstract bool Match(Event e, State state);

    /// <inheritdoc/>
    public abstract int? Apply(Event e, State state, Logger logger);

    /// <inheritdoc/>
    public virtual AlgorithmDescription Describe() => new(Name);

    /// <inheritdoc/>
    public override string ToString() => Name;

    /// <summary><c>LowPrecisionLayerNorm</c> → <c>low_precision_layer_norm</c>.</summary>
    public static string ToSnakeCase(string name)
    {
        var sb = new StringBuilder(name.Length + 8);
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c) && i > 0 && (char.IsLower(name[i - 1]) || (i + 1 < name.Length && char.IsLower(name[i + 1]))))
            {
                sb.Append('_');
            }

            sb.Append(char.ToLower(c, CultureInfo.InvariantCulture));
        }

        return sb.ToString();
    }
}

/// <summary>An exception thrown by an algorithm, wrapped so that the message names the algorithm and the event.</summary>
public sealed class AlgorithmException : Exception
{
    /// <summary>Wraps <paramref name="inner"/>, thrown by <paramref name="algorithm"/> at <paramref name="e"/>.</summary>
    public AlgorithmException(string algorithm, Event e, Exception inner)
        : base($"Algorithm '{algorithm}' failed at event '{e.ToComposerName()}': {inner.Message}", inner)
    {
        AlgorithmName = algorithm;
        Event = e;
    }

    /// <summary>The failing algorithm's name.</summary>
    public string AlgorithmName { get; }

    /// <summary>The event at which it failed.</summary>
    public Event Event { get; }
}
