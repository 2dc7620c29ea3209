namespace FineTune.Pipeline;

/// <summary>
/// The stage executors FineTune ships, one per kind in <see cref="StageTable"/>; a kind with no executor makes
/// `run` stop before that stage and say so (the stages before it still run).
/// </summary>
public static class StageRegistry
{
    public static IReadOnlyList<IStageExecutor> CreateDefault() => StageTable.All.Select(d => d.CreateExecutor()).ToArray();
}
