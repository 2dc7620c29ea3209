using System.Text.Json.Nodes;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Board;

/// <summary>
/// A pipeline as the Pipelines page shows it: `finetune status`'s report (the runner's own states and reasons) for
/// every stage, what each stage reads (the graph), and the board's runs over it: the stage in flight reads
/// "running", the stage a run last failed at "failed".
/// </summary>
public static class StatusView
{
    public static JsonObject Of(string name, string file, BoardRuns runs)
    {
        var o = new JsonObject { ["name"] = name };
        LoadedPipeline loaded;
        try
        {
            loaded = PipelineLoader.Load(file);
        }
        catch (PipelineValidationException e)
        {
            o["errors"] = Errors(e.Errors);
            return o;
        }
        catch (PipelineUserException e)
        {
            o["errors"] = new JsonArray(new JsonObject { ["line"] = 1, ["column"] = 1, ["message"] = e.Message });
            return o;
        }
        RunReport report;
        try
        {
            report = PipelineRunner.CreateDefault().Status(loaded);
        }
        catch (Exception e) when (e is PipelineUserException || IsUserError(e))
        {
            o["errors"] = new JsonArray(new JsonObject { ["line"] = 1, ["column"] = 1, ["message"] = e.Message });
            return o;
        }
        var mine = runs.All.Where(r => r.Request.Pipeline == name).ToArray();
        var active = mine.FirstOrDefault(r => r.State == "running");
        var stages = new JsonArray();
        foreach (var s in report.Stages)
        {
            var instance = loaded.Definition.Stages[s.Name]!;
            var (state, reason) = (s.State.Word(), s.Reason);
            if (s.State == StageState.Stale && s.Reason.StartsWith("never ran", StringComparison.Ordinal)) state = "never ran";
            // The newest run that reached this stage says whether it failed there (a later success clears it: the stage is up to date).
            var last = mine.FirstOrDefault(r => r.Done && (r.Stage == s.Name || r.FailedStage == s.Name));
            if (last is { State: "failed" } && s.State != StageState.UpToDate) { state = "failed"; reason = $"{last.Message} (run {last.Id}); before: {reason}"; }
            if (active?.Stage == s.Name) { state = "running"; reason = $"run {active.Id}: {reason}"; }
            stages.Add(new JsonObject
            {
                ["name"] = s.Name, ["kind"] = StageNames.Of(s.Kind), ["state"] = state, ["reason"] = reason,
                ["fingerprint"] = s.Fingerprint?[..12], ["reads"] = new JsonArray(instance.Reads.Values.Distinct().Select(v => (JsonNode)v).ToArray()),
                ["metrics"] = Metrics(s.Metrics),
            });
        }
        o["stages"] = stages;
        o["file"] = file;
        o["lock_holder"] = LockHolder(loaded);
        return o;
    }

    /// <summary>Who holds the pipeline's run lock (a CLI or board run in flight), from the owner line RunLock writes; null when free.</summary>
    public static string? LockHolder(LoadedPipeline loaded)
    {
        var owner = Path.Combine(StageCache.Beside(loaded.Directory).Root, "run.owner");
        try { return File.Exists(owner) ? File.ReadAllText(owner) : null; }
        catch (IOException) { return null; }
    }

    public static JsonArray Errors(IEnumerable<PipelineError> errors) =>
        new(errors.Select(e => (JsonNode)new JsonObject
        {
            ["line"] = e.Line, ["column"] = e.Column, ["path"] = e.JsonPath, ["message"] = e.Message,
            ["text"] = $"{Path.GetFileName(e.File)}:{e.Line}:{e.Column}: error: {e.JsonPath}: {e.Message}",
        }).ToArray());


    public static JsonObject Metrics(IReadOnlyDictionary<string, double>? m) =>
        new((m ?? new Dictionary<string, double>()).Where(kv => double.IsFinite(kv.Value)).OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value))));

    /// <summary>The lower layers' user errors, which carry a located message of their own (as the CLI's Guard treats them).</summary>
    public static bool IsUserError(Exception e) => e is FineTune.Models.ModelFormatException or FineTune.Models.Hub.HubException
        or FineTune.Data.DatasetException or FineTune.Tokenizers.TokenizerFormatException or FineTune.Training.TrainingException;
}
