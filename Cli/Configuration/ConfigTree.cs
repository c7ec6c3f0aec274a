using System.Globalization;
using ComposerSharp.Core;
using ComposerSharp.Events;
using YamlDotNet.RepresentationModel;

namespace ComposerSharp.Cli.Configuration;

/// <summary>
/// Thrown for a configuration that cannot be used: unknown keys, unknown component names, bad values. The message
/// names the key (as a dotted path such as <c>train_loader.batch_size</c>) and what is accepted.
/// </summary>
public sealed class ConfigException : Exception
{
    /// <summary>Creates the exception with a complete message.</summary>
    public ConfigException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a complete message and its cause.</summary>
    public ConfigException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>
    /// The library's message of a refused value, to report beside the configuration key: its first line without .NET's
    /// <c>(Parameter '…')</c> suffix, plus <c>(got …)</c> when an <see cref="ArgumentOutOfRangeException"/> carries the value.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="refusal"/> is null.</exception>
    public static string LibraryMessage(ArgumentException refusal)
    {
        ArgumentNullException.ThrowIfNull(refusal);
        string message = refusal.Message.Split(Environment.NewLine, 2)[0].Split(" (Parameter '", 2)[0];
        return refusal is ArgumentOutOfRangeException { ActualValue: { } v }
            ? $"{message} (got {Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture)})"
            : message;
    }

    /// <summary>
    /// A value refused by the library while a component was built from <paramref name="section"/>, reported as the
    /// configuration key it came from: <c>'model.num_layers' is '-1': must be at least 1.</c> instead of .NET's
    /// <c>NumLayers must be at least 1. (Parameter 'NumLayers') Actual value was -1.</c> The key is the section's
    /// key whose snake_case name is the refused parameter's when the section sets it, else the section itself.
    /// </summary>
    /// <param name="section">The section the component was built from.</param>
    /// <param name="refusal">The library's refusal.</param>
    /// <param name="context">Optional words before the key, e.g. <c>Building dataset 'x': </c>.</param>
    /// <exception cref="ArgumentNullException">An argument is null.</exception>
    public static ConfigException ForRefusal(ConfigSection section, ArgumentException refusal, string context = "")
    {
        ArgumentNullException.ThrowIfNull(section);
        ArgumentNullException.ThrowIfNull(refusal);
        string? parameter = refusal.ParamName is { Length: > 0 } p ? p : null;
        string? key = parameter is null ? null : Algorithm.ToSnakeCase(parameter);
        if (key is null || !section.ContainsKey(key))
        {
            return new ConfigException($"{context}'{section.Path}': {LibraryMessage(refusal)}", refusal);
        }

        // The value is shown beside the key, so the message's own "(got …)" and its leading property name go.
        string message = refusal.Message.Split(Environment.NewLine, 2)[0].Split(" (Parameter '", 2)[0];
        if (message.StartsWith(parameter + " ", StringComparison.Ordinal))
        {
            message = message[(parameter!.Length + 1)..];
        }

        string value = section.Get(key) is string v ? $" is '{v}'" : string.Empty;
        return new ConfigException($"{context}'{section.PathOf(key)}'{value}: {message}", refusal);
    }
}

/// <summary>
/// A YAML mapping read into plain values: nested <see cref="ConfigSection"/>s for mappings,
/// <see cref="List{T}"/> of values for sequences, <see cref="string"/> for scalars and null for <c>null</c>/<c>~</c>/empty.
/// Keys keep their order. <see cref="Path"/> is the dotted location used in error messages.
/// </summary>
public sealed class ConfigSection
{
    private readonly List<KeyValuePair<string, object?>> _entries = new();

    /// <summary>Creates an empty section at <paramref name="path"/> (empty for the root).</summary>
    public ConfigSection(string path = "") => Path = path;

    /// <summary>
    /// The section as YAML (block style, keys in order; scalars as read, so <c>1e-3</c> stays <c>1e-3</c>), which
    /// <see cref="Parse"/> reads back to the same values. The run folder's <c>config.yaml</c> is written with it.
    /// </summary>
    public string ToYaml()
    {
        var serializer = new YamlDotNet.Serialization.SerializerBuilder().Build();
        return serializer.Serialize(Plain(this));

        static object? Plain(object? value) => value switch
        {
            ConfigSection section => section._entries.ToDictionary(e => e.Key, e => Plain(e.Value)),
            List<object?> list => list.Select(Plain).ToList(),
            _ => value,
        };
    }

    /// <summary>Dotted path of this section from the root, e.g. <c>train_loader.dataset</c>; empty for the root.</summary>
    public string Path { get; }

    /// <summary>The keys, in file order.</summary>
    public IEnumerable<string> Keys => _entries.Select(e => e.Key);

    /// <summary>Number of keys.</summary>
    public int Count => _entries.Count;

    /// <summary>Reads a YAML file whose top level is a mapping.</summary>
    /// <exception cref="ConfigException">The file is missing, is not valid YAML, or its top level is not a mapping; the message names the file and line.</exception>
    public static ConfigSection LoadFile(string path)
    {
        if (!File.Exists(path))
        {
            throw new ConfigException($"Config file '{path}' does not exist.");
        }

        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses YAML text whose top level is a mapping; <paramref name="source"/> names it in errors.</summary>
    /// <exception cref="ConfigException">Invalid YAML, or the top level is not a mapping.</exception>
    public static ConfigSection Parse(string yaml, string source = "<config>")
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(yaml));
        }
        catch (YamlDotNet.Core.YamlException ex)
        {
            throw new ConfigException($"{source}: invalid YAML at line {ex.Start.Line}, column {ex.Start.Column}: {ex.InnerException?.Message ?? ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            // YamlDotNet's scanner reports some malformed flow collections (e.g. an unclosed '[') this way, without a position.
            throw new ConfigException($"{source}: invalid YAML (an unclosed bracket or quote?) near line {CountLines(yaml)}: {ex.Message}", ex);
        }

        if (stream.Documents.Count == 0)
        {
            return new ConfigSection();
        }

        YamlNode root = stream.Documents[0].RootNode;
        if (root is YamlScalarNode { Value: null or "" })
        {
            return new ConfigSection();
        }

        if (root is not YamlMappingNode mapping)
        {
            throw new ConfigException($"{source}: the top level must be a mapping of keys such as 'model:' and 'max_duration:', at line {root.Start.Line}.");
        }

        return FromMapping(mapping, string.Empty, source, new ReadBudget());
    }

    /// <summary>Deepest nesting a configuration may have (real ones have 4 or 5 levels).</summary>
    internal const int MaxDepth = 64;

    /// <summary>Most values a configuration may expand to (aliases included).</summary>
    internal const int MaxValues = 100_000;

    /// <summary>
    /// What reading one document may still spend: YAML aliases can refer to their own ancestor (<c>a: &amp;x [*x]</c>,
    /// endless) or multiply (the "billion laughs"), which would otherwise overflow the stack or exhaust memory.
    /// </summary>
    private sealed class ReadBudget
    {
        public int Values;
    }

    private static void Spend(ReadBudget budget, YamlNode node, string path, string source, int depth)
    {
        if (depth > MaxDepth)
        {
            throw new ConfigException($"{source}: the value at line {node.Start.Line} is nested more than {MaxDepth} levels deep ('{Shorten(path)}'); an alias that refers to its own ancestor (such as 'a: &x [*x]') never ends.");
        }

        if (++budget.Values > MaxValues)
        {
            throw new ConfigException($"{source}: the configuration expands to more than {MaxValues} values (at line {node.Start.Line}, '{Shorten(path)}'); aliases (*name) that repeat large anchors multiply it.");
        }
    }

    private static string Shorten(string path) => path.Length <= 80 ? path : path[..80] + "…";

    private static int CountLines(string text) => text.TrimEnd().Split('\n').Length;

    /// <summary>Parses one value the way it would be read in YAML (a scalar, a flow list <c>[a, b]</c> or a flow mapping <c>{k: v}</c>).</summary>
    public static object? ParseValue(string text, string path)
    {
        ConfigSection wrapper = Parse("v: " + text, $"value of '{path}'");
        object? value = wrapper.Get("v");
        return value is ConfigSection s ? s.WithPath(path) : value;
    }

    private static ConfigSection FromMapping(YamlMappingNode mapping, string path, string source, ReadBudget budget, int depth = 0)
    {
        var section = new ConfigSection(path);
        foreach ((YamlNode keyNode, YamlNode valueNode) in mapping.Children)
        {
            string key = (keyNode as YamlScalarNode)?.Value
                ?? throw new ConfigException($"{source}: a key at line {keyNode.Start.Line} under '{path}' is not a plain name.");
            string childPath = path.Length == 0 ? key : path + "." + key;
            if (section.ContainsKey(key))
            {
                throw new ConfigException($"{source}: key '{childPath}' appears twice (line {keyNode.Start.Line}).");
            }

            section._entries.Add(new(key, FromNode(valueNode, childPath, source, budget, depth + 1)));
        }

        return section;
    }

    private static object? FromNode(YamlNode node, string path, string source, ReadBudget budget, int depth)
    {
        Spend(budget, node, path, source, depth);
        return FromNodeWithin(node, path, source, budget, depth);
    }

    private static object? FromNodeWithin(YamlNode node, string path, string source, ReadBudget budget, int depth) => node switch
    {
        YamlMappingNode m => FromMapping(m, path, source, budget, depth),
        YamlSequenceNode s => s.Children.Select((c, i) => FromNode(c, $"{path}[{i}]", source, budget, depth + 1)).ToList(),
        YamlScalarNode { Style: YamlDotNet.Core.ScalarStyle.Plain, Value: null or "" or "~" or "null" or "Null" or "NULL" } => null,
        YamlScalarNode sc => sc.Value,
        _ => throw new ConfigException($"{source}: unsupported YAML node at line {node.Start.Line} ('{path}')."),
    };

    private ConfigSection WithPath(string path)
    {
        var copy = new ConfigSection(path);
        foreach ((string k, object? v) in _entries)
        {
            copy._entries.Add(new(k, v is ConfigSection s ? s.WithPath(path.Length == 0 ? k : path + "." + k) : v));
        }

        return copy;
    }

    /// <summary>Dotted path of <paramref name="key"/> in this section.</summary>
    public string PathOf(string key) => Path.Length == 0 ? key : Path + "." + key;

    /// <summary>Whether <paramref name="key"/> is present (even with a null value).</summary>
    public bool ContainsKey(string key) => _entries.Any(e => e.Key == key);

    /// <summary>The raw value of <paramref name="key"/>, or null when absent.</summary>
    public object? Get(string key) => _entries.FirstOrDefault(e => e.Key == key).Value;

    /// <summary>Sets <paramref name="key"/> (replacing an existing value in place, or appending).</summary>
    public void Set(string key, object? value)
    {
        int i = _entries.FindIndex(e => e.Key == key);
        if (i >= 0)
        {
            _entries[i] = new(key, value);
        }
        else
        {
            _entries.Add(new(key, value));
        }
    }

    /// <summary>A copy of this section (same path) without <paramref name="keys"/>.</summary>
    public ConfigSection Without(params string[] keys) => Filter(k => !keys.Contains(k));

    /// <summary>A copy of this section (same path) with only <paramref name="keys"/>.</summary>
    public ConfigSection Only(IEnumerable<string> keys) => Filter(keys.Contains);

    private ConfigSection Filter(Func<string, bool> keep)
    {
        var copy = new ConfigSection(Path);
        copy._entries.AddRange(_entries.Where(e => keep(e.Key)));
        return copy;
    }

    /// <summary>Removes <paramref name="key"/> if present.</summary>
    public void Remove(string key) => _entries.RemoveAll(e => e.Key == key);

    /// <summary>
    /// Sets a dotted path such as <c>train_loader.batch_size</c>, creating intermediate sections, from a command-line
    /// override; the value is parsed as YAML (<c>2ep</c>, <c>[a, b]</c>, <c>{lr: 0.1}</c>).
    /// </summary>
    /// <exception cref="ConfigException">An intermediate key holds a value that is not a mapping.</exception>
    public void SetPath(string dottedPath, string valueText)
    {
        string[] parts = dottedPath.Split('.');
        ConfigSection current = this;
        for (int i = 0; i < parts.Length - 1; i++)
        {
            object? child = current.Get(parts[i]);
            if (child is null)
            {
                var created = new ConfigSection(current.PathOf(parts[i]));
                current.Set(parts[i], created);
                current = created;
            }
            else if (child is ConfigSection s)
            {
                current = s;
            }
            else
            {
                throw new ConfigException($"Cannot set '{dottedPath}': '{current.PathOf(parts[i])}' is a value, not a mapping.");
            }
        }

        string last = parts[^1];
        current.Set(last, ParseValue(valueText, current.PathOf(last)));
    }

    /// <summary>Throws when the section has keys outside <paramref name="accepted"/>.</summary>
    /// <exception cref="ConfigException">An unknown key; the message names it and lists the accepted keys.</exception>
    public void RequireKnownKeys(IEnumerable<string> accepted, string what = "key")
    {
        var allowed = accepted.ToList();
        foreach (string key in Keys)
        {
            if (!allowed.Contains(key))
            {
                throw new ConfigException($"Unknown {what} '{PathOf(key)}'; accepted: {string.Join(", ", allowed)}.");
            }
        }
    }

    /// <summary>The sub-section at <paramref name="key"/>, an empty one when absent or null.</summary>
    /// <exception cref="ConfigException">The value is a scalar or list.</exception>
    public ConfigSection Section(string key) => Get(key) switch
    {
        null => new ConfigSection(PathOf(key)),
        ConfigSection s => s,
        var other => throw new ConfigException($"'{PathOf(key)}' must be a mapping, got '{Describe(other)}'."),
    };

    /// <summary>The string at <paramref name="key"/>, or <paramref name="fallback"/> when absent or null.</summary>
    /// <exception cref="ConfigException">The value is a mapping or a list.</exception>
    public string? GetString(string key, string? fallback = null) => Get(key) switch
    {
        null => fallback,
        string s => s,
        var other => throw new ConfigException($"'{PathOf(key)}' must be a single value, got '{Describe(other)}'."),
    };

    /// <summary>Converts the value at <paramref name="key"/> with <paramref name="parse"/>, naming the key and the expected form on failure.</summary>
    /// <exception cref="ConfigException">The value cannot be converted.</exception>
    public T? GetValue<T>(string key, Func<string, T> parse, string expected, T? fallback = default)
    {
        string? s = GetString(key);
        if (s is null)
        {
            return fallback;
        }

        try
        {
            return parse(s);
        }
        catch (Exception ex) when (ex is FormatException or ArgumentException or OverflowException)
        {
            // ComposerSharp's own parsers quote the input and list what is allowed: keep their message as it is.
            // .NET's number parsers do not: say what was expected instead of their wording.
            bool ours = ex.TargetSite?.Module.Assembly.GetName().Name?.StartsWith("ComposerSharp", StringComparison.Ordinal) == true;
            string message = ours
                ? $"'{PathOf(key)}': {ex.Message}"
                : $"'{PathOf(key)}' is '{s}', which is not {expected}.";
            throw new ConfigException(message, ex);
        }
    }

    /// <summary>A Composer time string at <paramref name="key"/> (<c>1ep</c>, <c>100ba</c>, <c>0.5dur</c>, ...), or null when absent.</summary>
    /// <exception cref="ConfigException">Not a time; the message quotes the value and lists the units.</exception>
    public Time? GetTime(string key) => GetValue<Time?>(
        key,
        t => long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out long epochs) ? Time.FromEpoch(epochs) : Time.Parse(t), // an integer means epochs, as in Composer
        "a time such as 1ep, 100ba or 0.5dur, or an integer number of epochs");

    /// <summary>An integer at <paramref name="key"/>.</summary>
    /// <exception cref="ConfigException">Not an integer.</exception>
    public long? GetLong(string key) =>
        GetValue<long?>(key, s => long.Parse(s.Replace("_", string.Empty, StringComparison.Ordinal), NumberStyles.Integer, CultureInfo.InvariantCulture), "an integer");

    /// <summary>A number at <paramref name="key"/>.</summary>
    /// <exception cref="ConfigException">Not a number.</exception>
    public double? GetDouble(string key) =>
        GetValue<double?>(key, s => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture), "a number");

    /// <summary>A boolean (<c>true</c>/<c>false</c>) at <paramref name="key"/>.</summary>
    /// <exception cref="ConfigException">Not a boolean.</exception>
    public bool? GetBool(string key) => GetValue<bool?>(key, s => bool.Parse(s), "true or false");

    /// <summary>
    /// Named entries at <paramref name="key"/>, accepting Composer's mapping form (<c>name: {kwargs}</c>) and a
    /// list of names or of single-key mappings. Each entry's section may be empty.
    /// </summary>
    /// <exception cref="ConfigException">Any other shape.</exception>
    public IReadOnlyList<(string Name, ConfigSection Args)> GetNamedList(string key)
    {
        var result = new List<(string, ConfigSection)>();
        switch (Get(key))
        {
            case null:
                break;
            case string s:
                foreach (string name in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                {
                    result.Add((name, new ConfigSection(PathOf(key) + "." + name)));
                }

                break;
            case ConfigSection map:
                foreach (string name in map.Keys)
                {
                    result.Add((name, map.Get(name) is null ? new ConfigSection(map.PathOf(name)) : map.Section(name)));
                }

                break;
            case List<object?> list:
                foreach (object? item in list)
                {
                    if (item is string n)
                    {
                        result.Add((n, new ConfigSection(PathOf(key) + "." + n)));
                    }
                    else if (item is ConfigSection { Count: 1 } one)
                    {
                        string name = one.Keys.Single();
                        result.Add((name, one.Get(name) is null ? new ConfigSection(one.PathOf(name)) : one.Section(name)));
                    }
                    else
                    {
                        throw new ConfigException($"'{PathOf(key)}' entries must be names or 'name: {{options}}' mappings, got '{Describe(item)}'.");
                    }
                }

                break;
        }

        return result;
    }

    private static string Describe(object? value) => value switch
    {
        null => "null",
        string s => s,
        ConfigSection s => $"a mapping with keys {string.Join(", ", s.Keys)}",
        List<object?> l => $"a list of {l.Count}",
        _ => value.ToString() ?? "?",
    };
}
