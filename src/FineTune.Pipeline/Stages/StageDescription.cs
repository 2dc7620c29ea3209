using System.Text.Json.Nodes;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>
/// One kind of stage, described once, beside its executor (each stage file declares its own as <c>Description</c>):
/// the block that configures it, the stages whose outputs it reads, the top-level settings that enter its
/// fingerprint, and how to make its executor. <see cref="StageTable"/> lists them; the runner, `status`, `dag`, the
/// lock file, the fingerprint and the pipeline checks read nothing else about a kind.
/// </summary>
/// <param name="Reads">The stages whose outputs it reads (<see cref="StageContext.UpstreamOutputs"/>), in pipeline order.</param>
/// <param name="Block">Its block in <c>stages</c>; null when the pipeline omits it (then the stage is not in the pipeline).</param>
/// <param name="Settings">The top-level settings (model.*, data.*) it reads, keyed as they enter its fingerprint beside
/// its block (<c>{"data": {"template": "qwen3"}}</c>); null when it reads none.</param>
/// <param name="CreateExecutor">The executor FineTune ships for it.</param>
public sealed record StageDescription(
    StageKind Kind,
    IReadOnlyList<StageKind> Reads,
    Func<StagesSection, object?> Block,
    Func<PipelineDefinition, JsonObject>? Settings,
    Func<IStageExecutor> CreateExecutor)
{
    /// <summary>Lower-case name used in YAML, the lock file and the CLI.</summary>
    public string Name { get; } = Kind.ToString().ToLowerInvariant();

    /// <summary>The chat template, for stages that render (split), generate with (eval) or ship (export) it.</summary>
    internal static JsonObject TemplateSetting(PipelineDefinition p) => new() { ["data"] = new JsonObject { ["template"] = p.Data.Template } };
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
