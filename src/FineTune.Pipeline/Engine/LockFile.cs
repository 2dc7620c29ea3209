using System.Text.Json.Nodes;

namespace FineTune.Pipeline.Engine;

/// <summary>pipeline.lock cannot be read as FineTune writes it (cut short, a merge conflict, a value of the wrong type).</summary>
public sealed class LockFileDamagedException(string path, string problem)
    : PipelineUserException($"{path}: {problem}; restore it (`git checkout {LockFile.FileName}`) or delete it, then run again.")
{
    public string LockPath { get; } = path;
    /// <summary>What is wrong, with the field's JSON path: "\"stages.train.fingerprint\" is a number, expected a string".</summary>
    public string Problem { get; } = problem;
}

/// <summary>What pipeline.lock records for one stage: enough to say whether it is up to date and, if not, why.</summary>
/// <param name="Inputs">External inputs: path relative to the pipeline directory → content hash (paths only explain; they are not fingerprinted).</param>
/// <param name="Files">Output files that make up the result: relative path → SHA-256.</param>
/// <param name="Reports">Output files that report the run (logs, timings): named, not hashed, since they differ run to run.</param>
/// <param name="Metrics">The stage's metrics without timings (those are shown by `finetune status`, not locked).</param>
public sealed record LockedStage(
    string Fingerprint,
    JsonObject Parameters,
    IReadOnlyDictionary<string, string> Upstream,
    IReadOnlyDictionary<string, string> Inputs,
    string OutputHash,
    IReadOnlyDictionary<string, string> Files,
    IReadOnlyDictionary<string, double> Metrics,
    IReadOnlyList<string>? Reports = null);

/// <summary>
/// pipeline.lock beside the pipeline (committed to git): per stage its fingerprint, the parameters and input hashes
/// that made it, and the hashes of what it produced. Written as sorted, indented JSON so diffs are readable and
/// the bytes depend only on content. Entries are keyed by stage name (the key under stages) and written in
/// <see cref="Order"/> (the pipeline's order), then any others in the order they were read or added.
/// </summary>
public sealed record LockFile(IReadOnlyDictionary<string, LockedStage> Stages)
{
    public const string FileName = "pipeline.lock";
    public const int Version = 1;

    public static LockFile Empty { get; } = new(new Dictionary<string, LockedStage>());

    /// <summary>
    /// The command-line overrides (<c>stages.train.learning_rate=1e-4</c>) the last run applied over the pipeline file: the
    /// lock then records a pipeline the file alone does not say. Written only when there are any, so a run without
    /// overrides keeps the lock's bytes.
    /// </summary>
    public IReadOnlyList<string> Overrides { get; init; } = [];

    /// <summary>The order entries are written in: the pipeline's stages (<see cref="Only"/> sets it).</summary>
    public IReadOnlyList<string> Order { get; init; } = [];

    // Entries in the order they were read or added: where Order says nothing.
    private IReadOnlyList<string> Arrival { get; init; } = [];

    public static string PathBeside(string pipelineFile) => Path.Combine(Path.GetDirectoryName(pipelineFile)!, FileName);

    /// <summary>
    /// Reads the lock; a missing file is <see cref="Empty"/>. Every field is checked against what <see cref="Serialize"/>
    /// writes, so a truncated file, a merge conflict or a value of the wrong type is a <see cref="LockFileDamagedException"/>
    /// naming the file and the field — never a crash.
    /// </summary>
    public static LockFile Read(string path) => File.Exists(path) ? Parse(File.ReadAllText(path), path) : Empty;

    /// <summary>Reads a lock's text; <paramref name="path"/> names it in messages (a file, or <c>HEAD:pipelines/x/pipeline.lock</c>).</summary>
    public static LockFile Parse(string text, string path)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(text); }
        catch (System.Text.Json.JsonException e)
        {
            throw new LockFileDamagedException(path, $"not valid JSON ({e.Message})");
        }
        try
        {
            return Read(new Reader(path), root);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
        {
            // What the field checks do not foresee (a key written twice): still a damaged file, not a crash.
            throw new LockFileDamagedException(path, $"not what FineTune writes ({e.Message})");
        }
    }

    private static LockFile Read(Reader r, JsonNode? root)
    {
        var top = r.Object(root, "");
        var version = r.Required(top, "", "version");
        if (version is not JsonValue v || v.GetValueKind() != System.Text.Json.JsonValueKind.Number)
            throw r.Wrong("version", version, $"the number {Version}");
        if (!v.TryGetValue<int>(out var number) || number != Version)
            throw r.Fail($"\"version\" is {version.ToJsonString()}, expected {Version} (the lock format this FineTune reads and writes)");
        var stages = new Dictionary<string, LockedStage>(StringComparer.Ordinal);
        var arrival = new List<string>();
        foreach (var (name, node) in r.Object(r.Required(top, "", "stages"), "stages"))
        {
            var at = $"stages.{name}";
            var s = r.Object(node, at);
            arrival.Add(name);
            stages[name] = new LockedStage(
                r.String(s, at, "fingerprint"),
                (JsonObject)r.Object(r.Required(s, at, "params"), at + ".params").DeepClone(),
                r.Strings(s, at, "upstream"), r.Strings(s, at, "inputs"),
                r.String(s, at, "output_hash"),
                r.Strings(s, at, "files"),
                r.Metrics(s, at, "metrics"),
                r.OptionalStringList(s, at, "reports"));
        }
        return new LockFile(stages) { Arrival = arrival, Overrides = r.OptionalStringList(top, "", "overrides") ?? [] };
    }

    /// <summary>Field-by-field reading with the JSON path of whatever is wrong.</summary>
    private sealed class Reader(string path)
    {
        private static string Kind(JsonNode? n) => n switch
        {
            null => "null",
            JsonObject => "an object",
            JsonArray => "an array",
            JsonValue v => v.GetValueKind() switch
            {
                System.Text.Json.JsonValueKind.String => "a string",
                System.Text.Json.JsonValueKind.Number => "a number",
                System.Text.Json.JsonValueKind.True or System.Text.Json.JsonValueKind.False => "a boolean",
                _ => "null",
            },
            _ => "unknown",
        };

        public LockFileDamagedException Fail(string problem) => new(path, problem);

        public LockFileDamagedException Wrong(string field, JsonNode? n, string expected) =>
            new(path, field.Length == 0 ? $"the document is {Kind(n)}, expected {expected}" : $"\"{field}\" is {Kind(n)}, expected {expected}");

        public JsonNode Required(JsonObject o, string at, string name)
        {
            var field = at.Length == 0 ? name : $"{at}.{name}";
            return o.TryGetPropertyValue(name, out var n) && n is not null ? n : throw new LockFileDamagedException(path, $"\"{field}\" is missing");
        }

        public JsonObject Object(JsonNode? n, string field) => n as JsonObject ?? throw Wrong(field, n, "an object");

        private static bool IsString(JsonNode? n) => n is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.String;

        public string String(JsonObject o, string at, string name)
        {
            var n = Required(o, at, name);
            return IsString(n) ? n.GetValue<string>() : throw Wrong($"{at}.{name}", n, "a string");
        }

        public Dictionary<string, string> Strings(JsonObject o, string at, string name)
        {
            var map = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (key, n) in Object(Required(o, at, name), $"{at}.{name}"))
                map[key] = IsString(n) ? n!.GetValue<string>() : throw Wrong($"{at}.{name}.{key}", n, "a string");
            return map;
        }

        /// <summary>Numbers; null stands for a value that was not finite (NaN, ∞) and is left out.</summary>
        public Dictionary<string, double> Metrics(JsonObject o, string at, string name)
        {
            var map = new Dictionary<string, double>(StringComparer.Ordinal);
            foreach (var (key, n) in Object(Required(o, at, name), $"{at}.{name}"))
            {
                if (n is null) continue;
                if (n is not JsonValue v || v.GetValueKind() != System.Text.Json.JsonValueKind.Number || !v.TryGetValue<double>(out var d) || !double.IsFinite(d))
                    throw Wrong($"{at}.{name}.{key}", n, "a number");
                map[key] = d;
            }
            return map;
        }

        public List<string>? OptionalStringList(JsonObject o, string at, string name)
        {
            if (!o.TryGetPropertyValue(name, out var n) || n is null) return null;
            if (n is not JsonArray a) throw Wrong($"{at}.{name}", n, "an array of strings");
            return a.Select((item, i) => IsString(item) ? item!.GetValue<string>() : throw Wrong($"{at}.{name}[{i}]", item, "a string")).ToList();
        }
    }

    public string Serialize()
    {
        var stages = new JsonObject();
        foreach (var name in Order.Concat(Arrival).Concat(Stages.Keys.Order(StringComparer.Ordinal)).Distinct(StringComparer.Ordinal))
        {
            if (!Stages.TryGetValue(name, out var s)) continue;
            stages[name] = new JsonObject
            {
                ["fingerprint"] = s.Fingerprint,
                ["params"] = CanonicalJson.Sorted(s.Parameters),
                ["upstream"] = Map(s.Upstream),
                ["inputs"] = Map(s.Inputs),
                ["output_hash"] = s.OutputHash,
                ["files"] = Map(s.Files),
                ["metrics"] = StageCache.MetricsNode(s.Metrics),
            };
            if (s.Reports is { Count: > 0 } reports)
                stages[name]!["reports"] = new JsonArray(reports.Order(StringComparer.Ordinal).Select(r => (JsonNode?)JsonValue.Create(r)).ToArray());
        }
        var root = new JsonObject { ["version"] = Version };
        if (Overrides.Count > 0)
            root["overrides"] = new JsonArray(Overrides.Select(o => (JsonNode?)JsonValue.Create(o)).ToArray());
        root["stages"] = stages;
        // Stages in pipeline order, everything inside sorted: the bytes depend only on content.
        var text = CanonicalJson.Serialize(root, indented: true, sortKeys: false);
        return text + "\n";
    }

    private static JsonObject Map(IReadOnlyDictionary<string, string> map) =>
        new(map.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value))));

    /// <summary>Writes the file only when its bytes change, so an unchanged pipeline leaves it (and its mtime) alone.</summary>
    public bool WriteIfChanged(string path)
    {
        var text = Serialize();
        if (File.Exists(path) && File.ReadAllText(path) == text) return false;
        AtomicFile.SweepStale(path);
        AtomicFile.WriteAllText(path, text);
        return true;
    }

    public LockFile With(string name, LockedStage stage)
    {
        var d = new Dictionary<string, LockedStage>(Stages, StringComparer.Ordinal) { [name] = stage };
        return this with { Stages = d, Arrival = Arrival.Contains(name) ? Arrival : [.. Arrival, name] };
    }

    /// <summary>Writes entries in this order (the pipeline's stages) from now on.</summary>
    public LockFile InOrder(IEnumerable<string> names) => this with { Order = names.ToArray() };

    /// <summary>Drops stages no longer in the pipeline and writes the others in its order.</summary>
    public LockFile Only(IEnumerable<string> names)
    {
        var keep = names.ToArray();
        return new LockFile(Stages.Where(s => keep.Contains(s.Key)).ToDictionary(StringComparer.Ordinal)) { Order = keep, Arrival = Arrival.Where(keep.Contains).ToArray(), Overrides = Overrides };
    }
}
