namespace FineTune.Pipeline;

/// <summary>
/// The stage executors FineTune ships. Owners add one line for their executor; a kind with no executor makes
/// `run` stop before that stage and say so (the stages before it still run).
/// </summary>
public static class StageRegistry
{
    public static IReadOnlyList<IStageExecutor> CreateDefault() =>
    [
        new DownloadStage(),      // formats
        new RegisterStage(),      // data
        new SplitStage(),         // data
        new TrainStage(),         // training
        new EvalStage(),          // training
        new MergeStage(),         // formats
        new ExportStage(),        // formats
    ];
}
