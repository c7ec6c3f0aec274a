using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Reads the invariant-culture hyperparameters of an <see cref="AlgorithmDescription"/> back into typed values, for
/// the algorithms' <c>FromDescription</c> factories: checks the name and that every key is known, then parses each
/// value with an error naming the key, the value and the expected form.
/// </summary>
internal sealed class HyperparameterReader
{
    private readonly AlgorithmDescription _description;

    /// <summary>Checks that <paramref name="description"/> is of <paramref name="name"/> and uses only <paramref name="knownKeys"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's description, or an unknown key (the message lists the known ones).</exception>
    public HyperparameterReader(AlgorithmDescription description, string name, params string[] knownKeys)
    {
        ArgumentNullException.ThrowIfNull(description);
        if (description.Name != name)
        {
            throw new ArgumentException($"The description is of algorithm '{description.Name}', expected '{name}'.", nameof(description));
        }

        foreach (string key in description.Hyperparameters.Keys)
        {
            if (!knownKeys.Contains(key, StringComparer.Ordinal))
            {
                throw new ArgumentException($"Unknown hyperparameter '{key}' for {name}; expected one of: {string.Join(", ", knownKeys)}.", nameof(description));
            }
        }

        _description = description;
    }

    /// <summary>The raw value of <paramref name="key"/>, or null when absent.</summary>
    public string? String(string key) => _description.Hyperparameters.TryGetValue(key, out string? v) ? v : null;

    /// <summary>The value of <paramref name="key"/> as a double, or null when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not a number.</exception>
    public double? NullableDouble(string key) =>
        string.IsNullOrEmpty(String(key)) ? null : Double(key, double.NaN);

    /// <summary>The value of <paramref name="key"/> as a long, or <paramref name="fallback"/> when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not an integer.</exception>
    public long Long(string key, long fallback) =>
        Read(key, fallback, s => long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v : null, "an integer");

    /// <summary>The value of <paramref name="key"/> as a Composer time string (e.g. <c>1000ba</c>), or null when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not a time.</exception>
    public Time? Time(string key) =>
        string.IsNullOrEmpty(String(key)) ? (Time?)null : Read<Time>(key, default, s => Core.Time.TryParse(s, out Time t) ? (Time?)t : null, "a time such as 1000ba or 0.5dur");

    /// <summary>The value of <paramref name="key"/> as a <typeparamref name="TEnum"/> by its snake_case name, or <paramref name="fallback"/> when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not one of the names.</exception>
    public TEnum Enum<TEnum>(string key, TEnum fallback)
        where TEnum : struct, System.Enum => Enum<TEnum>(key) ?? fallback;

    /// <summary>The value of <paramref name="key"/> as a double, or <paramref name="fallback"/> when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not a number.</exception>
    public double Double(string key, double fallback) =>
        Read(key, fallback, s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) ? v : null, "a number");

    /// <summary>The value of <paramref name="key"/> as an int, or <paramref name="fallback"/> when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not an integer.</exception>
    public int Int(string key, int fallback) =>
        Read(key, fallback, s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null, "an integer");

    /// <summary>The value of <paramref name="key"/> as a bool (<c>true</c>/<c>false</c>), or <paramref name="fallback"/> when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not true or false.</exception>
    public bool Bool(string key, bool fallback) =>
        Read(key, fallback, s => bool.TryParse(s, out bool v) ? v : null, "true or false");

    /// <summary>The value of <paramref name="key"/> as a <typeparamref name="TEnum"/> by its snake_case name, or null when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not one of the names.</exception>
    public TEnum? Enum<TEnum>(string key)
        where TEnum : struct, System.Enum
    {
        if (!_description.Hyperparameters.TryGetValue(key, out string? value) || value.Length == 0)
        {
            return null;
        }

        foreach (TEnum candidate in System.Enum.GetValues<TEnum>())
        {
            if (SnakeName(candidate) == value)
            {
                return candidate;
            }
        }

        throw new ArgumentException(
            $"Hyperparameter '{key}' of {_description.Name} is '{value}'; expected one of: {string.Join(", ", System.Enum.GetValues<TEnum>().Select(SnakeName))}.");
    }

    /// <summary>The snake_case name of an enum value (<c>GeluTanh</c> → <c>gelu_tanh</c>), as the CLI's YAML binding writes it.</summary>
    public static string SnakeName<TEnum>(TEnum value)
        where TEnum : struct, System.Enum => Algorithm.ToSnakeCase(value.ToString());

    /// <summary>Invariant-culture round-trip text of a double.</summary>
    public static string Text(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>Invariant-culture text of an int.</summary>
    public static string Text(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary><c>true</c> or <c>false</c>.</summary>
    public static string Text(bool value) => value ? "true" : "false";

    private T Read<T>(string key, T fallback, Func<string, T?> parse, string expected)
        where T : struct
    {
        if (!_description.Hyperparameters.TryGetValue(key, out string? value) || value.Length == 0)
        {
            return fallback;
        }

        return parse(value) ?? throw new ArgumentException($"Hyperparameter '{key}' of {_description.Name} is '{value}'; expected {expected}.");
    }
}
