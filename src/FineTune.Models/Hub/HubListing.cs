using System.Text.Json;

namespace FineTune.Models.Hub;

/// <summary>
/// Reads the two JSON documents that list a snapshot's files — the hub's revision answer and the store's own
/// <c>snapshots/{commit}.json</c> — field by field. A missing field, a value of the wrong type, a malformed id or a
/// path that leaves the repository is reported through <c>fail</c> with the field's JSON path, never as a crash.
/// Everything that later names a file on disk (the commit, the hashes, the repository paths) is checked here.
/// </summary>
internal static class HubListing
{
    public const string PathRule = "absolute paths, drive letters, backslashes and empty, '.' or '..' segments are refused";

    /// <summary>The hub's answer to <c>GET /api/models/{repo}/revision/{rev}?blobs=true</c>.</summary>
    /// <param name="fail">Makes the exception for "field: problem".</param>
    public static HubSnapshot FromHubAnswer(JsonElement root, string repoId, Func<string, HubException> fail)
    {
        var r = new Reader(fail);
        r.Object(root, "");
        var commit = r.Commit(root, "sha");
        var files = new List<HubFile>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (s, at) in r.Array(root, "siblings"))
        {
            r.Object(s, at);
            var path = r.RepositoryPath(s, at, "rfilename", seen);
            var lfs = r.OptionalObject(s, at, "lfs");
            long? size = r.OptionalSize(s, at, "size");
            if (lfs is { } l)
                files.Add(new HubFile(path, r.OptionalSize(l, at + ".lfs", "size") ?? size, r.Hex(l, at + ".lfs", "sha256", 64, "a SHA-256"), null));
            else
                files.Add(new HubFile(path, size, null, r.OptionalHex(s, at, "blobId", 40, "a git blob id")));
        }
        return new HubSnapshot(repoId, commit, files);
    }

    /// <summary>The store's manifest of a commit (written by <see cref="HubStore.ManifestJson"/>).</summary>
    public static HubSnapshot FromManifest(JsonElement root, string repoId, string commit, Func<string, HubException> fail)
    {
        var r = new Reader(fail);
        r.Object(root, "");
        if (r.String(root, "", "repo") != repoId)
            throw fail($"\"repo\" is not {repoId}");
        if (r.Commit(root, "commit") != commit)
            throw fail($"\"commit\" is not {commit}");
        var files = new List<HubFile>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (f, at) in r.Array(root, "files"))
        {
            r.Object(f, at);
            files.Add(new HubFile(
                r.RepositoryPath(f, at, "path", seen),
                r.OptionalSize(f, at, "size"),
                r.OptionalHex(f, at, "sha256", 64, "a SHA-256"),
                r.OptionalHex(f, at, "blob_id", 40, "a git blob id")));
        }
        return new HubSnapshot(repoId, commit, files);
    }

    /// <summary>A path a repository can hold and a directory can contain: relative, '/'-separated, no way out.</summary>
    public static bool IsRepositoryPath(string path) =>
        path.Length > 0
        && path[0] != '/'
        && !path.Contains('\\')
        && !(path.Length >= 2 && path[1] == ':' && char.IsAsciiLetter(path[0]))
        && !path.Any(char.IsControl)
        && path.Split('/').All(segment => segment is not ("" or "." or ".."));

    public static bool IsHex(string s, int length) => s.Length == length && s.All(char.IsAsciiHexDigit);

    private sealed class Reader(Func<string, HubException> fail)
    {
        private static string Field(string at, string name) => at.Length == 0 ? name : $"{at}.{name}";

        private static string Kind(JsonElement e) => e.ValueKind switch
        {
            JsonValueKind.Object => "an object",
            JsonValueKind.Array => "an array",
            JsonValueKind.String => "a string",
            JsonValueKind.Number => "a number",
            JsonValueKind.True or JsonValueKind.False => "a boolean",
            _ => "null",
        };

        private HubException Wrong(string field, JsonElement e, string expected) =>
            fail(field.Length == 0 ? $"the document is {Kind(e)}, expected {expected}" : $"\"{field}\" is {Kind(e)}, expected {expected}");

        public void Object(JsonElement e, string field)
        {
            if (e.ValueKind != JsonValueKind.Object) throw Wrong(field, e, "an object");
        }

        private JsonElement Required(JsonElement o, string at, string name, string expected)
        {
            if (!o.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
                throw fail($"\"{Field(at, name)}\" is missing, expected {expected}");
            return v;
        }

        private static JsonElement? Optional(JsonElement o, string name) =>
            o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        public string String(JsonElement o, string at, string name)
        {
            var v = Required(o, at, name, "a string");
            return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Wrong(Field(at, name), v, "a string");
        }

        public string Commit(JsonElement o, string name)
        {
            const string expected = "a commit id (40 hex digits)";
            var v = Required(o, "", name, expected);
            if (v.ValueKind != JsonValueKind.String) throw Wrong(name, v, expected);
            var s = v.GetString()!;
            return IsHex(s, 40) ? s.ToLowerInvariant() : throw fail($"\"{name}\" is {Quote(s)}, expected {expected}");
        }

        public IEnumerable<(JsonElement Item, string At)> Array(JsonElement o, string name)
        {
            var v = Required(o, "", name, "an array");
            if (v.ValueKind != JsonValueKind.Array) throw Wrong(name, v, "an array");
            return v.EnumerateArray().Select((item, i) => (item, $"{name}[{i}]")).ToList();
        }

        public JsonElement? OptionalObject(JsonElement o, string at, string name)
        {
            if (Optional(o, name) is not { } v) return null;
            return v.ValueKind == JsonValueKind.Object ? v : throw Wrong(Field(at, name), v, "an object");
        }

        public long? OptionalSize(JsonElement o, string at, string name)
        {
            const string expected = "a size in bytes (a whole number, 0 or more)";
            if (Optional(o, name) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Number) throw Wrong(Field(at, name), v, expected);
            return v.TryGetInt64(out var n) && n >= 0 ? n : throw fail($"\"{Field(at, name)}\" is {v.GetRawText()}, expected {expected}");
        }

        public string Hex(JsonElement o, string at, string name, int digits, string what)
        {
            var expected = $"{what} ({digits} hex digits)";
            var v = Required(o, at, name, expected);
            return HexValue(v, Field(at, name), digits, expected);
        }

        public string? OptionalHex(JsonElement o, string at, string name, int digits, string what) =>
            Optional(o, name) is { } v ? HexValue(v, Field(at, name), digits, $"{what} ({digits} hex digits)") : null;

        private string HexValue(JsonElement v, string field, int digits, string expected)
        {
            if (v.ValueKind != JsonValueKind.String) throw Wrong(field, v, expected);
            var s = v.GetString()!;
            return IsHex(s, digits) ? s.ToLowerInvariant() : throw fail($"\"{field}\" is {Quote(s)}, expected {expected}");
        }

        public string RepositoryPath(JsonElement o, string at, string name, HashSet<string> seen)
        {
            var field = Field(at, name);
            var v = Required(o, at, name, "a file path");
            if (v.ValueKind != JsonValueKind.String) throw Wrong(field, v, "a file path");
            var path = v.GetString()!;
            if (!IsRepositoryPath(path))
                throw fail($"\"{field}\" is {Quote(path)}, which is not a path inside the repository ({PathRule})");
            if (!seen.Add(path))
                throw fail($"\"{field}\" is {Quote(path)}, which is listed twice");
            return path;
        }

        // Quotes as written (a backslash stays one backslash), so the message shows the path the listing gave.
        private static string Quote(string s) => $"\"{s}\"";
    }
}
