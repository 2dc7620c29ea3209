namespace FineTune.Pipeline;

/// <summary>Which stage outputs each stage reads (<see cref="StageContext.UpstreamOutputs"/>), as <see cref="StageTable"/> describes them.</summary>
public static class StageGraph
{
    public static IReadOnlyList<StageKind> Order { get; } = StageTable.All.Select(d => d.Kind).ToArray();

    public static IReadOnlyList<StageKind> Upstream(StageKind kind) => StageTable.Of(kind).Reads;

    /// <summary>Lower-case name used in YAML, the lock file and the CLI.</summary>
    public static string Name(StageKind kind) => StageTable.Of(kind).Name;

    public static bool TryParse(string name, out StageKind kind)
    {
        var d = StageTable.All.FirstOrDefault(d => d.Name.Equals(name, StringComparison.OrdinalIgnoreCase));
        kind = d?.Kind ?? default;
        return d is not null;
    }
}
