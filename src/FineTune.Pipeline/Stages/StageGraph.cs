namespace FineTune.Pipeline;

/// <summary>Which stage outputs each stage reads (<see cref="StageContext.UpstreamOutputs"/>).</summary>
public static class StageGraph
{
    public static IReadOnlyList<StageKind> Order { get; } =
        [StageKind.Download, StageKind.Register, StageKind.Split, StageKind.Train, StageKind.Eval, StageKind.Merge, StageKind.Export];

    /// <summary>
    /// download: model dir · register: normalised samples · split: tokenized train/val (needs the tokenizer)
    /// · train: adapter/model (needs base model + split) · eval: metrics (base + split + train)
    /// · merge: merged model (base + train) · export: deployable files (merged model).
    /// </summary>
    public static IReadOnlyList<StageKind> Upstream(StageKind kind) => kind switch
    {
        StageKind.Download => [],
        StageKind.Register => [],
        StageKind.Split => [StageKind.Download, StageKind.Register],
        StageKind.Train => [StageKind.Download, StageKind.Split],
        StageKind.Eval => [StageKind.Download, StageKind.Split, StageKind.Train],
        StageKind.Merge => [StageKind.Download, StageKind.Train],
        StageKind.Export => [StageKind.Merge],
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>Lower-case name used in YAML, the lock file and the CLI.</summary>
    public static string Name(StageKind kind) => kind.ToString().ToLowerInvariant();

    public static bool TryParse(string name, out StageKind kind) =>
        Enum.TryParse(name, ignoreCase: true, out kind) && Enum.IsDefined(kind);
}
