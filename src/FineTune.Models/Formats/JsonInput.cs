using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.IO;

namespace FineTune.Models;

/// <summary>
/// The JSON files and headers of a model (config.json, the safetensors index and headers) read strictly: UTF-8
/// (a byte order mark is fine), one object, each key once — System.Text.Json's nodes throw a bare ArgumentException
/// on a repeated key, which would reach the user as a crash.
/// </summary>
internal static class JsonInput
{
    private static readonly JsonDocumentOptions Options = new() { AllowTrailingCommas = true };

    /// <summary>Reads <paramref name="file"/> after checking its kind and size; <paramref name="advice"/> ends the message of a file that is not a regular one or too large.</summary>
    public static JsonObject ReadObject(string file, long maxBytes, string advice)
    {
        var name = Path.GetFileName(file);
        var bytes = InputFile.ReadAllBytes(file, maxBytes, name, p => new ModelFormatException(file, $"{p.Text}; {advice}"));
        return ParseObject(bytes, file);
    }

    /// <summary>Parses UTF-8 JSON that must be one object with no repeated key (at any depth).</summary>
    public static JsonObject ParseObject(ReadOnlySpan<byte> bytes, string file)
    {
        if (InputFile.Utf8Problem(bytes, out _) is { } encoding)
            throw new ModelFormatException(file, encoding + ".");
        var body = InputFile.WithoutByteOrderMark(bytes);
        JsonDocument doc;
        try
        {
            var reader = new Utf8JsonReader(body, new JsonReaderOptions { AllowTrailingCommas = true });
            doc = JsonDocument.ParseValue(ref reader);
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(file, $"invalid JSON at line {e.LineNumber + 1}, column {e.BytePositionInLine + 1}: {FirstSentence(e.Message)}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException(file, $"expected a JSON object at the top level, found {doc.RootElement.ValueKind.ToString().ToLowerInvariant()}.");
            if (FirstRepeatedKey(doc.RootElement, "") is { } key)
                throw new ModelFormatException(file, $"key \"{key}\" appears twice; keep one.");
            return JsonObject.Create(doc.RootElement.Clone(), new JsonNodeOptions())!;
        }
    }

    private static string? FirstRepeatedKey(JsonElement e, string path)
    {
        if (e.ValueKind == JsonValueKind.Array)
        {
            var i = 0;
            foreach (var item in e.EnumerateArray())
                if (FirstRepeatedKey(item, $"{path}[{i++}]") is { } found) return found;
            return null;
        }
        if (e.ValueKind != JsonValueKind.Object) return null;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in e.EnumerateObject())
        {
            var key = path.Length == 0 ? p.Name : $"{path}.{p.Name}";
            if (!seen.Add(p.Name)) return key;
            if (FirstRepeatedKey(p.Value, key) is { } found) return found;
        }
        return null;
    }

    private static string FirstSentence(string message)
    {
        var i = message.IndexOf(". ", StringComparison.Ordinal);
        return i < 0 ? message : message[..(i + 1)];
    }
}
