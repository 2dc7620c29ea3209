using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline;

/// <summary>Which kinds of stage each kind reads (<see cref="StageContext.UpstreamOutputs"/>), as <see cref="StageTable"/> describes them.</summary>
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

/// <summary>
/// The provider rule: for each kind a stage reads, the stage of that kind its <c>from:</c> names, else the only stage of that
/// kind in the pipeline, else the one named after the kind (<c>split</c> beside <c>pref_split</c>); several and none of them
/// so named is an error, as is a <c>from:</c> naming an unknown stage, itself, a kind the stage does not read, or a stage
/// after it.
/// </summary>
public static class StageProviders
{
    /// <summary>The stage <paramref name="stage"/> reads per kind; what is wrong goes to <paramref name="problems"/> (JSON path, message).</summary>
    public static IReadOnlyDictionary<StageKind, string> Resolve(StagesSection stages, StageInstance stage, List<(string JsonPath, string Message)>? problems)
    {
        var d = StageTable.Of(stage.Kind);
        var path = $"$.stages.{stage.Name}";
        var order = stages.All.Select(s => s.Name).ToList();
        var named = new Dictionary<StageKind, string>();
        var before = problems?.Count ?? 0;
        for (var i = 0; i < stage.From.Count; i++)
        {
            var name = stage.From[i];
            var at = $"{path}.from[{i}]";
            var up = stages[name];
            if (name == stage.Name)
                problems?.Add((at, $"stage {stage.Name} cannot read itself; name the stages it reads"));
            else if (up is null)
            {
                var others = order.Where(n => n != stage.Name).ToArray();
                var suggestion = DidYouMean.Suggest(name, others);
                problems?.Add((at, $"no stage named '{name}' in stages; " + (suggestion is not null
                    ? $"did you mean '{suggestion}'?"
                    : $"the pipeline has: {string.Join(", ", others)}")));
            }
            else if (!d.Reads.Contains(up.Kind) && !d.ReadsWhenNamed.Contains(up.Kind))
                problems?.Add((at, $"stage {stage.Name} does not read a {StageGraph.Name(up.Kind)} stage ('{name}' is one); it reads "
                    + string.Join(", ", d.Reads.Concat(d.ReadsWhenNamed).Select(StageGraph.Name)) + " stages"));
            else if (order.IndexOf(name) > order.IndexOf(stage.Name))
                problems?.Add((at, $"stage '{name}' comes after stage {stage.Name}; a stage reads only stages before it (in pipeline order, and in the file's order among stages of one kind)"));
            else if (named.TryGetValue(up.Kind, out var first))
                problems?.Add((at, $"from names two {StageGraph.Name(up.Kind)} stages ({first}, {name}); a stage reads one stage of each kind"));
            else
                named[up.Kind] = name;
        }

        // A wrong from: item is the error to fix first; what the stage would read without it follows from the fix.
        var fromFailed = (problems?.Count ?? 0) > before;
        var reads = new Dictionary<StageKind, string>();
        foreach (var kind in d.Reads)
        {
            if (named.TryGetValue(kind, out var chosen)) { reads[kind] = chosen; continue; }
            var candidates = stages.OfKind(kind);
            var kindName = StageGraph.Name(kind);
            if (candidates.Count == 1)
                reads[kind] = candidates[0].Name;
            // Several: the one under the kind's own name is the default (a second register or split beside today's
            // stages leaves those reading what they read before).
            else if (candidates.FirstOrDefault(c => c.Name == kindName) is { } byName)
                reads[kind] = byName.Name;
            else if (fromFailed)
                continue;
            else if (candidates.Count == 0)
                problems?.Add((path, $"stage {stage.Name} needs stage {kindName}: add a '{kindName}:' block to stages"));
            else
            {
                var names = string.Join(", ", candidates.Select(c => c.Name));
                var last = candidates[^1].Name;
                problems?.Add(stage.From.Count == 0
                    ? (path, $"stages.{stage.Name} reads a {kindName} stage and the pipeline has {candidates.Count} ({names}): add from: {last}")
                    : ($"{path}.from", $"stages.{stage.Name} reads a {kindName} stage and the pipeline has {candidates.Count} ({names}): name one in from (from: [{string.Join(", ", stage.From)}, {last}])"));
            }
        }
        foreach (var kind in d.ReadsWhenNamed)
            if (named.TryGetValue(kind, out var chosen))
                reads[kind] = chosen;
        return reads;
    }
}
