using System.Globalization;
using ComposerSharp.Events;

namespace ComposerSharp.Algorithms;

/// <summary>
/// Reads the hyperparameters of an <see cref="AlgorithmDescription"/> (invariant-culture strings) back into typed
/// values for an algorithm's <c>FromDescription</c>, after checking the algorithm name and that every key is known.
/// </summary>
internal sealed class DescriptionReader
{
    private readonly AlgorithmDescription _description;

    /// <summary>Checks <paramref name="description"/> is of <paramref name="name"/> and uses only <paramref name="keys"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="description"/> is null.</exception>
    /// <exception cref="ArgumentException">Another algorithm's name or an unknown key (the message lists the known keys).</exception>
    public DescriptionReader(AlgorithmDescription description, string name, params string[] keys)
    {
        ArgumentNullException.ThrowIfNull(description);
        if (description.Name != name)
        {
            throw new ArgumentException($"The description is of algorithm '{description.Name}', expected '{name}'.", nameof(description));
        }

        foreach (string key in description.Hyperparameters.Keys)
        {
            if (!keys.Contains(key))
            {
                throw new ArgumentException($"Unknown hyperparameter '{key}' for {name}; expected {string.Join(", ", keys)}.", nameof(description));
            }
        }

        _description = description;
    }

    /// <summary>The raw value of <paramref name="key"/>, or null when absent.</summary>
    public string? String(string key) => _description.Hyperparameters.TryGetValue(key, out string? v) ? v : null;

    /// <summary><paramref name="key"/> as a double ("R" or any invariant float form), or <paramref name="fallback"/> when absent.</summary>
    /// <exception cref="ArgumentException">The value is not a number.</exception>
    public double Double(string key, double fallback) => NullableDouble(key) ?? fallback;

    /// <summary><paramref name="key"/> as a double, or null when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not a number.</exception>
    public double? NullableDouble(string key)
    {
        string? v = String(key);
        if (string.IsNullOrEmpty(v))
        {
            return null;
        }

        return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d)
            ? d
            : throw new ArgumentException($"Hyperparameter '{key}' of {_description.Name} is '{v}', which is not a number.");
    }

    /// <summary><paramref name="key"/> as an integer, or <paramref name="fallback"/> when absent.</summary>
    /// <exception cref="ArgumentException">The value is not an integer.</exception>
    public long Long(string key, long fallback)
    {
        string? v = String(key);
        if (string.IsNullOrEmpty(v))
        {
            return fallback;
        }

        return long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out long n)
            ? n
            : throw new ArgumentException($"Hyperparameter '{key}' of {_description.Name} is '{v}', which is not an integer.");
    }

    /// <summary><paramref name="key"/> as a Composer time string (e.g. <c>1000ba</c>), null when absent or empty.</summary>
    /// <exception cref="ArgumentException">The value is not a time.</exception>
    public Time? Time(string key)
    {
        string? v = String(key);
        if (string.IsNullOrEmpty(v))
        {
            return null;
        }

        return Events.Time.TryParse(v, out Time t)
            ? t
            : throw new ArgumentException($"Hyperparameter '{key}' of {_description.Name} is '{v}', which is not a time such as 1000ba or 0.5dur.");
    }

    /// <summary><paramref name="key"/> as a value of <typeparamref name="T"/> written snake_case (e.g. <c>adaptive</c>), or <paramref name="fallback"/>.</summary>
    /// <exception cref="ArgumentException">The value names no member of <typeparamref name="T"/>.</exception>
    public T Enum<T>(string key, T fallback)
        where T : struct, System.Enum
    {
        string? v = String(key);
        if (string.IsNullOrEmpty(v))
        {
            return fallback;
        }

        return System.Enum.TryParse(v.Replace("_", string.Empty, StringComparison.Ordinal), ignoreCase: true, out T parsed) && System.Enum.IsDefined(parsed)
            ? parsed
            : throw new ArgumentException(
                $"Hyperparameter '{key}' of {_description.Name} is '{v}'; expected one of {string.Join(", ", System.Enum.GetNames<T>().Select(Algorithm.ToSnakeCase))}.");
    }
}
