using System.Text.Json.Nodes;

namespace FineTune.Pipeline.Engine;

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
/// the bytes depend only on content.
/// </summary>
public sealed record LockFile(IReadOnlyDictionary<StageKind, LockedStage> Stages)
{
    public const string FileName = "pipeline.lock";
    public const int Version = 1;

    public static LockFile Empty { get; } = new(new Dictionary<StageKind, LockedStage>());

    public static string PathBeside(string pipelineFile) => Path.Combine(Path.GetDirectoryName(pipelineFile)!, FileName);

    public static LockFile Read(string path)
    {
        if (!File.Exists(path)) return Empty;
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (System.Text.Json.JsonException e)
        {
            throw new PipelineUserException($"{path}: not valid JSON ({e.Message}); delete it or restore it from git (`git checkout {FileName}`), then run again.");
        }
        var stages = new Dictionary<StageKind, LockedStage>();
        if (root?["stages"] is JsonObject obj)
            foreach (var (name, node) in obj)
            {
                if (!StageGraph.TryParse(name, out var kind) || node is not JsonObject s) continue;
                stages[kind] = new LockedStage(
                    (string?)s["fingerprint"] ?? "",
                    s["params"] as JsonObject ?? new JsonObject(),
                    Strings(s["upstream"]), Strings(s["inputs"]),
                    (string?)s["output_hash"] ?? "",
                    Strings(s["files"]),
                    (s["metrics"] as JsonObject ?? new JsonObject())
                        .Where(kv => kv.Value is JsonValue)
                        .ToDictionary(kv => kv.Key, kv => (double)kv.Value!),
                    s["reports"] is JsonArray reports ? reports.Select(r => (string?)r).OfType<string>().ToList() : null);
            }
        return new LockFile(stages);
    }

    private static Dictionary<string, string> Strings(JsonNode? node) =>
        node is JsonObject o ? o.Where(kv => kv.Value is not null).ToDictionary(kv => kv.Key, kv => (string)kv.Value!) : [];

    public string Serialize()
    {
        var stages = new JsonObject();
        foreach (var kind in StageGraph.Order)
        {
            if (!Stages.TryGetValue(kind, out var s)) continue;
            stages[StageNames.Of(kind)] = new JsonObject
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
                stages[StageNames.Of(kind)]!["reports"] = new JsonArray(reports.Order(StringComparer.Ordinal).Select(r => (JsonNode?)JsonValue.Create(r)).ToArray());
        }
        var root = new JsonObject { ["version"] = Version, ["stages"] = stages };
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
        AtomicFile.WriteAllText(path, text);
        return true;
    }

    public LockFile With(StageKind kind, LockedStage stage)
    {
        var d = Stages.ToDictionary();
        d[kind] = stage;
        return new LockFile(d);
    }

    /// <summary>Drops stages no longer in the pipeline.</summary>
    public LockFile Only(IEnumerable<StageKind> kinds)
    {
        var keep = kinds.ToHashSet();
        return new LockFile(Stages.Where(s => keep.Contains(s.Key)).ToDictionary());
    }
}
