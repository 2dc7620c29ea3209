using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FineTune.Models;

/// <summary>
/// Typed reads of an HF JSON config object (config.json, adapter_config.json), every wrong value reported with the file
/// and the key ("\"r\" must be an integer, got \"four\"."), so both files speak to the user the same way.
/// </summary>
/// <param name="prefix">Prepended to key names in messages, for nested objects ("rope_parameters.").</param>
internal sealed class ConfigReader(JsonObject obj, string file, string prefix = "")
{
    public ModelFormatException Error(string message) => new(file, message + ".");

    /// <summary>Refuses a setting FineTune cannot apply (the message says which and what it applies instead).</summary>
    public void Refuse(string message) => throw Error(message);

    /// <summary>Whether the key holds something other than null, an empty list or an empty mapping.</summary>
    public bool IsSet(string key) => obj[key] switch
    {
        null => false,
        JsonArray a => a.Count > 0,
        JsonObject m => m.Count > 0,
        _ => true,
    };

    /// <summary><paramref name="value"/> if it lies in [min, max], else an error naming the key, the value and the range.</summary>
    public int Range(string key, int value, int min, int max) => value >= min && value <= max ? value
        : throw new ModelFormatException(file, $"\"{prefix}{key}\" must be an integer in [{min}, {max}], got {value}.");

    public double Range(string key, double value, double min, bool minInclusive, double max, bool maxInclusive, string range) =>
        double.IsFinite(value) && (minInclusive ? value >= min : value > min) && (maxInclusive ? value <= max : value < max) ? value
        : throw new ModelFormatException(file, $"\"{prefix}{key}\" must be a number in {range}, got {Show(value)}.");

    public string? String(string key) => obj[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw Wrong(key, "a string", other),
    };

    public int? Int(string key) => obj[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<long>(out var l) && l is >= int.MinValue and <= int.MaxValue => (int)l,
        JsonValue v when v.TryGetValue<double>(out var d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue => (int)d,
        var other => throw Wrong(key, "an integer", other),
    };

    public int RequiredInt(string key) =>
        Int(key) ?? throw new ModelFormatException(file, $"missing \"{key}\" (an integer); every {obj["model_type"]} config.json must set it.");

    public double? Double(string key) => obj[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) => d,
        var other => throw Wrong(key, "a number", other),
    };

    public bool? Bool(string key) => obj[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        var other => throw Wrong(key, "true or false", other),
    };

    public IReadOnlyList<int> IntOrList(string key) => obj[key] switch
    {
        null => [],
        JsonArray a => a.Select((n, i) => n is JsonValue v && v.TryGetValue<long>(out var l) ? (int)l
            : throw Wrong($"{key}[{i}]", "an integer", n)).ToArray(),
        _ => [Int(key)!.Value],
    };

    /// <summary>A list of strings, or one string as a list of one (PEFT accepts both for module names).</summary>
    public IReadOnlyList<string> Strings(string key) => obj[key] switch
    {
        null => [],
        JsonArray a => a.Select((n, i) => n is JsonValue v && v.TryGetValue<string>(out var s) ? s
            : throw Wrong($"{key}[{i}]", "a string", n)).ToArray(),
        _ => [String(key)!],
    };

    /// <summary>A mapping of regular expressions to values (PEFT's rank_pattern, alpha_pattern), in file order.</summary>
    public IReadOnlyList<KeyValuePair<string, T>> Pattern<T>(string key, Func<ConfigReader, string, T?> read) where T : struct
    {
        if (obj[key] is null) return [];
        if (obj[key] is not JsonObject map) throw Wrong(key, "a mapping of module patterns", obj[key]);
        var values = new ConfigReader(map, file, $"{prefix}{key}.");
        var result = new List<KeyValuePair<string, T>>();
        foreach (var (pattern, _) in map)
        {
            try { _ = new Regex(pattern); }
            catch (ArgumentException e) { throw new ModelFormatException(file, $"\"{prefix}{key}\" key '{pattern}' is not a valid regular expression ({e.Message}).", e); }
            result.Add(KeyValuePair.Create(pattern, read(values, pattern) ?? throw Wrong($"{key}.{pattern}", "a number", null)));
        }
        return result;
    }

    private ModelFormatException Wrong(string key, string expected, JsonNode? got) =>
        new(file, $"\"{prefix}{key}\" must be {expected}, got {got?.ToJsonString() ?? "null"}.");

    private static string Show(double v) => v.ToString(CultureInfo.InvariantCulture);
}
