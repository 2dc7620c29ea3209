using System.Text.Json.Nodes;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>
/// One kind of stage, described once, beside its executor (each stage file declares its own as <c>Description</c>):
/// the block that configures it, the stages whose outputs it reads, the top-level settings that enter its
/// fingerprint, and how to make its executor. <see cref="StageTable"/> lists them; the runner, `status`, `dag`, the
/// lock file, the fingerprint and the pipeline checks read nothing else about a kind.
/// </summary>
/// <param name="Reads">The kinds of stage whose outputs it reads (<see cref="StageContext.UpstreamOutputs"/>), in pipeline
/// order: one stage of each, the one its <c>from:</c> names or else the only one in the pipeline.</param>
/// <param name="Block">The record type of its block in <c>stages</c> (<see cref="TrainConfig"/>).</param>
/// <param name="Settings">The top-level settings (model.*, data.*) a stage of this kind reads, keyed as they enter its
/// fingerprint beside its block (<c>{"data": {"template": "qwen3"}}</c>); null when it reads none.</param>
/// <param name="CreateExecutor">The executor FineTune ships for it.</param>
public sealed record StageDescription(
    StageKind Kind,
    IReadOnlyList<StageKind> Reads,
    Type Block,
    Func<PipelineDefinition, StageInstance, JsonObject>? Settings,
    Func<IStageExecutor> CreateExecutor)
{
    /// <summary>Lower-case name used in YAML, the lock file and the CLI.</summary>
    public string Name { get; } = Kind.ToString().ToLowerInvariant();

    /// <summary>
    /// Kinds it may read besides <see cref="Reads"/>, only when its <c>from:</c> names a stage of that kind: a train
    /// stage builds on an earlier train stage's model (<c>dpo: {kind: train, from: [sft, pref_split]}</c>).
    /// </summary>
    public IReadOnlyList<StageKind> ReadsWhenNamed { get; init; } = [];

    /// <summary>The chat template, for stages that render (split), generate with (eval) or ship (export) it.</summary>
    internal static JsonObject TemplateSetting(PipelineDefinition p, StageInstance stage) => new() { ["data"] = new JsonObject { ["template"] = p.Data.Template } };
}

/// <summary>Every stage kind FineTune knows, in pipeline order: the one table of them.</summary>
public static class StageTable
{
    public static IReadOnlyList<StageDescription> All { get; } =
    [
        DownloadStage.Description,
        RegisterStage.Description,
        SplitStage.Description,
        TrainStage.Description,
        EvalStage.Description,
        MergeStage.Description,
        ExportStage.Description,
    ];

    private static readonly Dictionary<StageKind, StageDescription> ByKind = All.ToDictionary(d => d.Kind);

    public static StageDescription Of(StageKind kind) =>
        ByKind.TryGetValue(kind, out var d) ? d : throw new ArgumentOutOfRangeException(nameof(kind), kind, "no such stage kind");
}
