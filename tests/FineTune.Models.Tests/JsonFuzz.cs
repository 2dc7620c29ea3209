using System.Text.Json.Nodes;

namespace FineTune.Models.Tests;

/// <summary>
/// Damaged variants of a valid JSON document, for testing that a reader rejects them with its own error type:
/// every value replaced by a value of each other JSON type, every object member removed, and the text cut short.
/// </summary>
public static class JsonFuzz
{
    private static readonly string[] Replacements = ["null", "0", "-1", "1.5", "1e400", "\"x\"", "\"\"", "true", "[]", "{}", "[null]", "{\"a\": 1}"];

    public static IEnumerable<(string Label, string Text)> Mutations(string json)
    {
        var root = JsonNode.Parse(json)!;
        foreach (var path in Paths(root))
        {
            foreach (var replacement in Replacements)
            {
                var copy = JsonNode.Parse(json)!;
                if (Replace(copy, path, JsonNode.Parse(replacement)))
                    yield return ($"{string.Join('.', path)} = {replacement}", copy.ToJsonString());
            }
            var without = JsonNode.Parse(json)!;
            if (Remove(without, path))
                yield return ($"{string.Join('.', path)} removed", without.ToJsonString());
        }
        foreach (var whole in Replacements)
            yield return ($"document = {whole}", whole);
        for (int cut = 0; cut < json.Length; cut += Math.Max(1, json.Length / 24))
            yield return ($"cut after {cut} characters", json[..cut]);
    }

    /// <summary>The path (member names, "#index" for array elements) of every node below the root.</summary>
    private static IEnumerable<string[]> Paths(JsonNode? node, string[]? prefix = null)
    {
        prefix ??= [];
        var children = node switch
        {
            JsonObject o => o.Select(kv => (Key: kv.Key, Child: kv.Value)).ToList(),
            JsonArray a => a.Select((child, i) => (Key: "#" + i, Child: child)).ToList(),
            _ => [],
        };
        foreach (var (key, child) in children)
        {
            string[] p = [.. prefix, key];
            yield return p;
            foreach (var inner in Paths(child, p)) yield return inner;
        }
    }

    private static (JsonNode Parent, string Key)? Locate(JsonNode root, string[] path)
    {
        JsonNode? parent = root;
        for (int i = 0; i < path.Length - 1; i++)
            parent = Child(parent, path[i]);
        return parent is null ? null : (parent, path[^1]);
    }

    private static JsonNode? Child(JsonNode? node, string key) =>
        key.StartsWith('#') && node is JsonArray a ? a[int.Parse(key[1..])] : node is JsonObject o ? o[key] : null;

    private static bool Replace(JsonNode root, string[] path, JsonNode? value)
    {
        if (Locate(root, path) is not var (parent, key)) return false;
        if (parent is JsonArray a) a[int.Parse(key[1..])] = value;
        else ((JsonObject)parent)[key] = value;
        return true;
    }

    private static bool Remove(JsonNode root, string[] path)
    {
        if (Locate(root, path) is not var (parent, key) || parent is not JsonObject o) return false;
        return o.Remove(key);
    }

    /// <summary>Runs <paramref name="read"/> on every mutation; returns those that threw anything but <typeparamref name="TUserError"/>.</summary>
    public static IReadOnlyList<string> Misbehaving<TUserError>(string json, Action<string> read) where TUserError : Exception
    {
        var bad = new List<string>();
        foreach (var (label, text) in Mutations(json))
        {
            try { read(text); }
            catch (TUserError) { }
            catch (Exception e) { bad.Add($"{label}: {e.GetType().Name}: {e.Message}"); }
        }
        return bad;
    }
}
