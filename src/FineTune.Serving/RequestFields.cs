using System.Globalization;
using System.Text.Json;

namespace FineTune.Serving;

/// <summary>
/// The top-level fields of a JSON request body, read strictly: a key outside the endpoint's list, a value of the wrong
/// type or outside its range is an <see cref="OpenAiError"/> naming the field. JSON null counts as absent, as in
/// OpenAI's API.
/// </summary>
internal sealed class RequestFields
{
    private readonly Dictionary<string, JsonElement> _fields = new(StringComparer.Ordinal);

    public RequestFields(JsonElement root, IReadOnlyCollection<string> allowed)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw OpenAiError.BadRequest($"The request body must be a JSON object, got {Kind(root)}.");
        foreach (var p in root.EnumerateObject())
        {
            if (!allowed.Contains(p.Name))
                throw OpenAiError.BadRequest($"Unrecognized request argument supplied: {p.Name}", p.Name, "unknown_parameter");
            if (!_fields.TryAdd(p.Name, p.Value))
                throw OpenAiError.BadRequest($"Duplicate request argument: {p.Name}", p.Name, "duplicate_parameter");
        }
    }

    public static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        _ => "null",
    };

    public static OpenAiError WrongType(string param, string expected, JsonElement got) =>
        OpenAiError.BadRequest($"Invalid type for '{param}': expected {expected}, but got {Kind(got)} instead.", param, "invalid_type");

    public bool Has(string name) => Get(name) is not null;

    public JsonElement? Get(string name) =>
        _fields.TryGetValue(name, out var e) && e.ValueKind != JsonValueKind.Null ? e : null;

    public JsonElement Required(string name) =>
        Get(name) ?? throw OpenAiError.BadRequest($"Missing required parameter: '{name}'.", name, "missing_required_parameter");

    public string? String(string name)
    {
        if (Get(name) is not { } e) return null;
        return e.ValueKind == JsonValueKind.String ? e.GetString() : throw WrongType(name, "a string", e);
    }

    public bool? Bool(string name)
    {
        if (Get(name) is not { } e) return null;
        return e.ValueKind is JsonValueKind.True or JsonValueKind.False ? e.GetBoolean() : throw WrongType(name, "a boolean", e);
    }

    public double? Number(string name, double min, double max, bool minExclusive = false)
    {
        if (Get(name) is not { } e) return null;
        if (e.ValueKind != JsonValueKind.Number) throw WrongType(name, "a number", e);
        double v = e.GetDouble();
        if (v < min || v > max || (minExclusive && v == min))
            throw OpenAiError.BadRequest($"Invalid '{name}': expected a number in {(minExclusive ? "(" : "[")}{F(min)}, {F(max)}], but got {F(v)} instead.", name, "invalid_value");
        return v;
    }

    public long? Integer(string name, long min, long max)
    {
        if (Get(name) is not { } e) return null;
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v)) throw WrongType(name, "an integer", e);
        if (v < min || v > max)
            throw OpenAiError.BadRequest($"Invalid '{name}': expected an integer in [{min}, {max}], but got {v} instead.", name, "invalid_value");
        return v;
    }

    /// <summary>A string or an array of strings (stop sequences).</summary>
    public IReadOnlyList<string> Strings(string name, int maxCount)
    {
        if (Get(name) is not { } e) return [];
        if (e.ValueKind == JsonValueKind.String) return Nonempty([e.GetString()!]);
        if (e.ValueKind != JsonValueKind.Array) throw WrongType(name, "a string or an array of strings", e);
        var list = new List<string>();
        foreach (var x in e.EnumerateArray())
            list.Add(x.ValueKind == JsonValueKind.String ? x.GetString()! : throw WrongType($"{name}[{list.Count}]", "a string", x));
        if (list.Count > maxCount)
            throw OpenAiError.BadRequest($"Invalid '{name}': at most {maxCount} stop sequences, got {list.Count}.", name, "invalid_value");
        return Nonempty(list);

        IReadOnlyList<string> Nonempty(List<string> l) => l.Any(s => s.Length == 0)
            ? throw OpenAiError.BadRequest($"Invalid '{name}': a stop sequence may not be empty.", name, "invalid_value") : l;
    }

    /// <summary>Accepted for compatibility only with its neutral value (e.g. presence_penalty 0); anything else is refused.</summary>
    public void OnlyNeutral(string name, Func<JsonElement, bool> neutral, string what)
    {
        if (Get(name) is { } e && !neutral(e))
            throw OpenAiError.BadRequest($"'{name}' is not supported by this server: {what}.", name, "unsupported_parameter");
    }

    private static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
}
