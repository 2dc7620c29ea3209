using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Engine;

/// <summary>
/// Canonical JSON of configuration values: keys sorted, no whitespace, numbers in shortest round-trip form,
/// enums by their YAML names, defaults applied. Equal settings give equal bytes however the YAML spelled them.
/// </summary>
public static class CanonicalJson
{
    /// <summary>The fingerprinted keys of a configuration record as a JSON object (keys sorted).</summary>
    public static JsonObject FromRecord(object record)
    {
        var obj = new JsonObject();
        foreach (var key in ConfigModel.Keys(record.GetType()).Where(k => k.Fingerprinted).OrderBy(k => k.Name, StringComparer.Ordinal))
        {
            var value = key.Property.GetValue(record);
            if (value is null && key.OmittedWhenUnset) continue;
            obj[key.Name] = key.FingerprintOneAsScalar && value is System.Collections.IList { Count: 1 } one ? Value(one[0]) : Value(value);
        }
        return obj;
    }

    public static JsonNode? Value(object? v) => v switch
    {
        null => null,
        string s => JsonValue.Create(s),
        bool b => JsonValue.Create(b),
        int i => JsonValue.Create(i),
        double d => JsonValue.Create(d),
        // A setting whose values include YAML's true and false (gradient_checkpointing) records them as booleans.
        Enum e => ConfigModel.EnumName(e) switch
        {
            "true" => JsonValue.Create(true),
            "false" => JsonValue.Create(false),
            var name => JsonValue.Create(name),
        },
        IReadOnlyDictionary<string, string> map => new JsonObject(map.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
        System.Collections.IEnumerable list => new JsonArray(list.Cast<object?>().Select(Value).ToArray()),
        _ when v.GetType().Namespace == typeof(PipelineDefinition).Namespace => FromRecord(v),
        _ => throw new InvalidOperationException($"no canonical form for {v.GetType()}"),
    };

    /// <summary>A deep copy with object keys sorted at every level.</summary>
    public static JsonNode? Sorted(JsonNode? node) => node switch
    {
        JsonObject o => new JsonObject(o.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => KeyValuePair.Create(kv.Key, Sorted(kv.Value)))),
        JsonArray a => new JsonArray(a.Select(Sorted).ToArray()),
        null => null,
        _ => node.DeepClone(),
    };

    /// <summary>Serialises (by default with object keys sorted at every level.</summary>
    public static string Serialize(JsonNode? node, bool indented = false, bool sortKeys = true)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = indented, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            Write(w, node, sortKeys);
        var text = Encoding.UTF8.GetString(ms.ToArray());
        return indented ? text.Replace("\r\n", "\n") : text;
    }

    private static void Write(Utf8JsonWriter w, JsonNode? node, bool sortKeys)
    {
        switch (node)
        {
            case null: w.WriteNullValue(); break;
            case JsonObject o:
                w.WriteStartObject();
                foreach (var (k, v) in sortKeys ? o.OrderBy(kv => kv.Key, StringComparer.Ordinal) : o.AsEnumerable())
                {
                    w.WritePropertyName(k);
                    Write(w, v, sortKeys);
                }
                w.WriteEndObject();
                break;
            case JsonArray a:
                w.WriteStartArray();
                foreach (var item in a) Write(w, item, sortKeys);
                w.WriteEndArray();
                break;
            case JsonValue v when v.TryGetValue<double>(out var d) && v.GetValueKind() == JsonValueKind.Number:
                if (d == Math.Floor(d) && Math.Abs(d) < 1e15) w.WriteNumberValue((long)d);
                else w.WriteNumberValue(d);
                break;
            default:
                node.WriteTo(w);
                break;
        }
    }
}
