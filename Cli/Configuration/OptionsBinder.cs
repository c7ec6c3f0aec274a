using System.Globalization;
using System.Reflection;
using ComposerSharp.Core;
using ComposerSharp.Events;

namespace ComposerSharp.Cli.Configuration;

/// <summary>
/// Applies a config section to an options record: each key is the snake_case name of a public settable (or
/// <c>init</c>) property, e.g. <c>num_layers</c> → <c>NumLayers</c>. Keys listed in <c>ignoredKeys</c> are left for
/// the caller; any other unknown key is an error that lists the accepted ones.
/// </summary>
public static class OptionsBinder
{
    /// <summary>
    /// Returns a copy of <paramref name="seed"/> (or a new instance when null) with the properties named in
    /// <paramref name="section"/> set. <paramref name="seed"/> itself is not changed.
    /// </summary>
    /// <exception cref="ConfigException">An unknown key or a value of the wrong form; the message names the key.</exception>
    public static T Bind<T>(ConfigSection section, T? seed = null, params string[] ignoredKeys)
        where T : class
    {
        T target = seed is null ? CreateNew<T>() : Clone(seed);
        Dictionary<string, PropertyInfo> properties = BindableProperties(typeof(T)).ToDictionary(p => Algorithm.ToSnakeCase(p.Name), p => p);
        section.RequireKnownKeys(properties.Keys.Concat(ignoredKeys), "option");
        foreach (string key in section.Keys)
        {
            if (!properties.TryGetValue(key, out PropertyInfo? property))
            {
                continue;
            }

            property.SetValue(target, Convert(section, key, property.PropertyType));
        }

        return target;
    }

    /// <summary>The config keys <see cref="Bind{T}"/> accepts for <typeparamref name="T"/>: the snake_case names of its public settable properties of bindable types, in declaration order.</summary>
    public static IEnumerable<string> KeysOf<T>()
        where T : class =>
        BindableProperties(typeof(T)).Select(p => Algorithm.ToSnakeCase(p.Name));

    private static IEnumerable<PropertyInfo> BindableProperties(Type t) =>
        t.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.SetMethod is { IsPublic: true } && IsBindable(p.PropertyType));

    private static T CreateNew<T>()
        where T : class
    {
        ConstructorInfo ctor = typeof(T).GetConstructor(Type.EmptyTypes)
            ?? throw new InvalidOperationException($"{typeof(T).Name} has no parameterless constructor to bind options to.");
        return (T)ctor.Invoke(null);
    }

    private static T Clone<T>(T seed)
        where T : class
    {
        MethodInfo? clone = typeof(T).GetMethod("<Clone>$", BindingFlags.Public | BindingFlags.Instance);
        return clone is not null
            ? (T)clone.Invoke(seed, null)!
            : (T)typeof(object).GetMethod(nameof(MemberwiseClone), BindingFlags.NonPublic | BindingFlags.Instance)!.Invoke(seed, null)!;
    }

    /// <summary>
    /// Whether values of <paramref name="t"/> can come from a config key (the same for option records and
    /// constructor parameters): numbers, booleans, strings, enums, times, and lists of names, numbers or times.
    /// </summary>
    public static bool IsBindable(Type t)
    {
        Type u = Nullable.GetUnderlyingType(t) ?? t;
        return u.IsPrimitive || u.IsEnum || u == typeof(string) || u == typeof(Time) || u == typeof(IReadOnlyList<string>) || u == typeof(IReadOnlyList<double>) ||
            u == typeof(IEnumerable<Time>) || u == typeof(IReadOnlyList<Time>);
    }

    /// <summary>Converts the value at <paramref name="key"/> to <paramref name="target"/>: numbers, booleans, strings, enums (snake_case), times, and lists of names or times.</summary>
    /// <exception cref="ConfigException">The value does not have that form.</exception>
    public static object? Convert(ConfigSection section, string key, Type target)
    {
        Type u = Nullable.GetUnderlyingType(target) ?? target;
        object? raw = section.Get(key);
        if (raw is null)
        {
            return null;
        }

        if (u == typeof(IReadOnlyList<string>))
        {
            return raw switch
            {
                List<object?> list => list.Select(x => x as string ?? throw new ConfigException($"'{section.PathOf(key)}' must be a list of names.")).ToList(),
                string s => s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList(),
                _ => throw new ConfigException($"'{section.PathOf(key)}' must be a list of names."),
            };
        }

        if (u == typeof(IReadOnlyList<double>))
        {
            if (raw is not List<object?> numbers)
            {
                throw new ConfigException($"'{section.PathOf(key)}' must be a list of numbers, e.g. [0.9, 0.98].");
            }

            return numbers.Select(n => n is string text && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double d)
                ? d
                : throw new ConfigException($"'{section.PathOf(key)}' has '{n}', which is not a number; expected a list of numbers, e.g. [0.9, 0.98].")).ToList();
        }

        if (u == typeof(IEnumerable<Time>) || u == typeof(IReadOnlyList<Time>))
        {
            if (raw is not List<object?> times)
            {
                throw new ConfigException($"'{section.PathOf(key)}' must be a list of times, e.g. [30ep, 60ep].");
            }

            return times.Select(m => m is string t && Time.TryParse(t, out Time time)
                ? time
                : throw new ConfigException($"'{section.PathOf(key)}' has '{m}', which is not a time such as 30ep.")).ToList();
        }

        if (u == typeof(string)) return section.GetString(key);
        if (u == typeof(bool)) return section.GetBool(key);
        if (u == typeof(Time)) return section.GetTime(key);
        if (u == typeof(Event)) return section.GetValue(key, EventExtensions.Parse, "an event name such as init");
        if (u == typeof(Precision)) return section.GetValue(key, PrecisionExtensions.Parse, "fp32, amp_bf16 or amp_fp16");
        if (u.IsEnum)
        {
            return section.GetValue(
                key,
                s => Enum.Parse(u, s.Replace("_", string.Empty, StringComparison.Ordinal).Replace("-", string.Empty, StringComparison.Ordinal), ignoreCase: true),
                $"one of {string.Join(", ", Enum.GetNames(u).Select(Algorithm.ToSnakeCase))}");
        }

        // An integral key names its range, so that '99999999999999' for an int is not called "not a whole number".
        static string WholeNumberRange(Type t) =>
            t.GetField("MinValue")?.GetValue(null) is { } min && t.GetField("MaxValue")?.GetValue(null) is { } max
                ? $"a whole number from {System.Convert.ToString(min, CultureInfo.InvariantCulture)} to {System.Convert.ToString(max, CultureInfo.InvariantCulture)}"
                : "a whole number";

        bool integral = u != typeof(double) && u != typeof(float) && u != typeof(decimal);
        return section.GetValue(
            key,
            s =>
            {
                double d = double.Parse(s.Replace("_", string.Empty, StringComparison.Ordinal), NumberStyles.Float, CultureInfo.InvariantCulture);
                if (integral && d != Math.Floor(d))
                {
                    throw new FormatException($"{s} is not a whole number");
                }

                return System.Convert.ChangeType(d, u, CultureInfo.InvariantCulture);
            },
            integral ? WholeNumberRange(u) : "a number");
    }
}
