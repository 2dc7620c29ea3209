using System.Text.Json.Nodes;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Engine;

/// <summary>One metric of one stage at two revisions; null where that side has none.</summary>
public sealed record MetricChange(string Stage, string Metric, double? Old, double? New)
{
    public double? Change => Old is double a && New is double b ? b - a : null;
    public bool Changed => Old != New;
}

/// <summary>One resolved parameter (<c>stages.train.learning_rate</c>) at two revisions, as canonical JSON; null where unset.</summary>
public sealed record ParamChange(string Param, string? Old, string? New)
{
    public bool Changed => Old != New;
}

/// <summary>
/// DVC's <c>metrics show|diff</c> and <c>params diff</c> over FineTune's records: a revision's metrics are its
/// pipeline.lock's (what ran at that commit), its params the stages' resolved fingerprint parameters from its
/// pipeline.yaml (<see cref="StageFingerprint.ParametersOf(Config.StageInstance, Config.PipelineDefinition)"/>). A revision
/// is read through <c>git show REV:path</c>; null stands for the working tree ("workspace").
/// </summary>
public static class ExperimentDiff
{
    public const string Workspace = "workspace";

    /// <summary>The lock of the pipeline at a revision (empty when the revision has none), or in the working tree.</summary>
    public static LockFile LockAt(string pipelineFile, string? revision)
    {
        var lockPath = LockFile.PathBeside(pipelineFile);
        if (revision is null) return LockFile.Read(lockPath);
        var text = GitRevision.Show(lockPath, revision);
        return text is null ? LockFile.Empty : LockFile.Parse(text, $"{revision}:{LockFile.FileName}");
    }

    /// <summary>Every stage's metrics at both sides, in the newer lock's order; unchanged rows only with <paramref name="all"/>.</summary>
    public static IReadOnlyList<MetricChange> Metrics(LockFile old, LockFile @new, bool all)
    {
        var rows = new List<MetricChange>();
        foreach (var stage in @new.Stages.Keys.Concat(old.Stages.Keys).Distinct(StringComparer.Ordinal))
        {
            var a = old.Stages.TryGetValue(stage, out var x) ? x.Metrics : new Dictionary<string, double>();
            var b = @new.Stages.TryGetValue(stage, out var y) ? y.Metrics : new Dictionary<string, double>();
            foreach (var metric in a.Keys.Union(b.Keys).Order(StringComparer.Ordinal))
            {
                var row = new MetricChange(stage, metric, a.TryGetValue(metric, out var va) ? va : null, b.TryGetValue(metric, out var vb) ? vb : null);
                if (all || row.Changed) rows.Add(row);
            }
        }
        return rows;
    }

    /// <summary>
    /// The pipeline's resolved parameters at a revision (its pipeline.yaml, loaded as the working tree's would be) or in the
    /// working tree; where that revision's file no longer loads, its lock's record of the parameters that ran. Empty when
    /// the revision has no pipeline file.
    /// </summary>
    public static IReadOnlyDictionary<string, string> ParamsAt(string pipelineFile, string? revision)
    {
        LoadedPipeline loaded;
        if (revision is null) loaded = PipelineLoader.Load(pipelineFile);
        else
        {
            var text = GitRevision.Show(pipelineFile, revision);
            if (text is null) return new Dictionary<string, string>();
            try { loaded = PipelineLoader.Parse(text, pipelineFile); }
            catch (PipelineValidationException)
            {
                return Flatten(LockAt(pipelineFile, revision).Stages.Select(s => (s.Key, s.Value.Parameters)));
            }
        }
        return Flatten(loaded.Stages.Select(s => (s.Name, StageFingerprint.ParametersOf(s, loaded.Definition))));
    }

    public static IReadOnlyList<ParamChange> Params(IReadOnlyDictionary<string, string> old, IReadOnlyDictionary<string, string> @new, bool all) =>
        old.Keys.Union(@new.Keys).Order(StringComparer.Ordinal)
            .Select(k => new ParamChange(k, old.TryGetValue(k, out var a) ? a : null, @new.TryGetValue(k, out var b) ? b : null))
            .Where(r => all || r.Changed).ToArray();

    /// <summary>
    /// "stages.&lt;stage&gt;.&lt;key&gt;" for each leaf of a stage's block (stored under its kind's name), "model.…"/"data.…" for the
    /// top-level settings it reads (the same for every stage that reads them: listed once).
    /// </summary>
    private static Dictionary<string, string> Flatten(IEnumerable<(string Stage, JsonObject Parameters)> stages)
    {
        var kinds = StageGraph.Order.Select(StageNames.Of).ToHashSet(StringComparer.Ordinal);
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (stage, parameters) in stages)
            foreach (var (top, node) in parameters)
            {
                var prefix = kinds.Contains(top) ? $"stages.{stage}" : top is "model" or "data" ? top : $"stages.{stage}.{top}";
                Leaves(node, prefix, result);
            }
        return result;
    }

    private static void Leaves(JsonNode? node, string prefix, Dictionary<string, string> into)
    {
        if (node is JsonObject o && o.Count > 0)
            foreach (var (k, v) in o) Leaves(v, $"{prefix}.{k}", into);
        else
            into.TryAdd(prefix, node is null ? "null" : CanonicalJson.Serialize(node));
    }
}
