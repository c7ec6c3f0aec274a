using System.Text.Json;
using ComposerSharp.Events;

namespace ComposerSharp.Training.Checkpoints;

/// <summary>Turns JSON into the plain values <see cref="IStatefulCallback.LoadStateDict"/> receives (double or long numbers, strings, bools, lists, dictionaries).</summary>
internal static class JsonValues
{
    internal static IReadOnlyDictionary<string, object?> ToDictionary(JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ArgumentException($"Callback state must be a JSON object, found {element.ValueKind}.", nameof(element));
        }

        var result = new Dictionary<string, object?>();
        foreach (JsonProperty p in element.EnumerateObject())
        {
            result[p.Name] = ToValue(p.Value);
        }

        return result;
    }

    private static object? ToValue(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null or JsonValueKind.Undefined => null,
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.String => e.GetString() switch
        {
            "NaN" => double.NaN,
            "Infinity" => double.PositiveInfinity,
            "-Infinity" => double.NegativeInfinity,
            string s => s,
            null => null,
        },
        JsonValueKind.Number => e.TryGetInt64(out long l) ? l : e.GetDouble(),
        JsonValueKind.Array => e.EnumerateArray().Select(ToValue).ToList(),
        JsonValueKind.Object => ToDictionary(e),
        _ => throw new ArgumentException($"Unsupported JSON value {e.ValueKind}."),
    };
}
