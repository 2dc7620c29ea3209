using System.Text.Json.Nodes;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Engine;

/// <summary>
/// A stage's identity: SHA-256 over the canonical JSON of {kind, format version, resolved parameters (the stage's
/// block plus the top-level settings it reads), upstream output hashes, external input content hashes}.
/// Two runs with equal fingerprints produce interchangeable outputs.
/// </summary>
public sealed record StageFingerprint(
    StageKind Kind,
    JsonObject Parameters,
    IReadOnlyDictionary<StageKind, string> Upstream,
    IReadOnlyList<(string Name, string Hash)> Inputs)
{
    /// <summary>Bump when the meaning of a stage's output changes for the same parameters (a format or algorithm change).</summary>
    public const int FormatVersion = 1;

    public string Hash => ContentHasher.Sha256Hex(CanonicalJson.Serialize(Document()));

    /// <summary>The hashed document. Input names (paths) are left out: only their content hashes count.</summary>
    public JsonObject Document() => new()
    {
        ["kind"] = Engine.StageNames.Of(Kind),
        ["format"] = FormatVersion,
        ["params"] = Parameters.DeepClone(),
        ["upstream"] = new JsonObject(Upstream.OrderBy(u => u.Key)
            .Select(u => KeyValuePair.Create(Engine.StageNames.Of(u.Key), (JsonNode?)JsonValue.Create(u.Value)))),
        ["inputs"] = new JsonArray(Inputs.Select(i => (JsonNode?)JsonValue.Create(i.Hash)).ToArray()),
    };

    /// <summary>
    /// The resolved settings a stage reads: its own block and the top-level keys it uses. Paths stay out
    /// (a local model directory is fingerprinted by content through <see cref="IStageExecutor.ExternalInputs"/>).
    /// </summary>
    /// <remarks>
    /// The block is keyed by the stage's kind, not its name: renaming a stage re-runs nothing, and two stages doing the same
    /// work share one cache entry. Its name, <c>kind:</c> and <c>from:</c> are structure, covered by the upstream hashes.
    /// </remarks>
    public static JsonObject ParametersOf(StageInstance stage, PipelineDefinition p)
    {
        var result = new JsonObject { [Engine.StageNames.Of(stage.Kind)] = CanonicalJson.FromRecord(stage.Block) };
        if (StageTable.Of(stage.Kind).Settings is { } settings)
            foreach (var (key, value) in settings(p, stage))
                result[key] = value?.DeepClone();
        return result;
    }

    /// <summary>The parameters of the pipeline's only stage of <paramref name="kind"/>.</summary>
    public static JsonObject ParametersOf(StageKind kind, PipelineDefinition p) =>
        ParametersOf(p.Stages.OfKind(kind) is [var only] ? only : throw new InvalidOperationException($"the pipeline has {p.Stages.OfKind(kind).Count} {kind} stages, not one"), p);
}

public static class StageNames
{
    public static string Of(StageKind kind) => StageGraph.Name(kind);
}
