using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune metrics show [P]` and `finetune metrics diff [A [B]]`: the stages' metrics from pipeline.lock, now or at git
/// revisions, as `dvc metrics show|diff` shows them. diff compares HEAD with the working tree by default, A with the
/// working tree given one revision, A with B given two.
/// </summary>
public sealed class MetricsCommand : ICliCommand
{
    public Command Create()
    {
        var command = new Command("metrics", "Show the stages' metrics from pipeline.lock, or compare them between git revisions.");
        command.Subcommands.Add(Show());
        command.Subcommands.Add(Diff());
        return command;
    }

    internal static Option<bool> JsonOption() => new("--json") { Description = "Write JSON instead of a table." };
    internal static Option<bool> MarkdownOption() => new("--md") { Description = "Write a markdown table." };
    internal static Option<bool> AllOption() => new("--all", "-a") { Description = "List unchanged rows too." };
    internal static Option<string> PipelineOption() => new("--pipeline", "-p")
    {
        Description = "The pipeline.yaml, or the directory that holds it (default: the current directory).",
        DefaultValueFactory = _ => ".",
    };
    internal static Argument<string[]> RevisionsArgument() => new("revisions")
    {
        Description = "Zero, one or two git revisions: none compares HEAD with the working tree, one compares it with the working tree, two compare each other.",
        Arity = new ArgumentArity(0, 2),
    };

    /// <summary>(old, new) revisions with their column names; null = the working tree.</summary>
    internal static (string? Old, string? New, string OldName, string NewName) Sides(string[] revisions) => revisions switch
    {
        [] => ("HEAD", null, "HEAD", ExperimentDiff.Workspace),
        [var a] => (a, null, a, ExperimentDiff.Workspace),
        [var a, var b] => (a, b, a, b),
        _ => throw new InvalidOperationException("at most two revisions"),
    };

    private static Command Show()
    {
        var pipeline = CliSupport.PipelineArgument();
        var json = JsonOption();
        var md = MarkdownOption();
        var command = new Command("show", "The metrics pipeline.lock records for each stage.") { pipeline, json, md };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var file = PipelineLoader.ResolvePipelineFile(r.GetValue(pipeline)!);
            var lockFile = ExperimentDiff.LockAt(file, null);
            if (r.GetValue(json))
            {
                var o = new JsonObject(lockFile.Stages.Where(s => s.Value.Metrics.Count > 0).Select(s => KeyValuePair.Create(s.Key,
                    (JsonNode?)new JsonObject(s.Value.Metrics.OrderBy(m => m.Key, StringComparer.Ordinal).Select(m => KeyValuePair.Create(m.Key, (JsonNode?)m.Value))))));
                Console.Write(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                return 0;
            }
            var rows = lockFile.Stages.SelectMany(s => s.Value.Metrics.OrderBy(m => m.Key, StringComparer.Ordinal)
                .Select(m => (IReadOnlyList<string>)[s.Key, m.Key, ExperimentTable.Number(m.Value)])).ToList();
            if (rows.Count == 0 && !r.GetValue(md))
            {
                Console.Error.WriteLine($"{LockFile.PathBeside(file)}: no metrics recorded yet; run the pipeline first (`finetune run`).");
                return 0;
            }
            Console.Write(ExperimentTable.Render(["stage", "metric", "value"], rows, r.GetValue(md)));
            return 0;
        }));
        return command;
    }

    private static Command Diff()
    {
        var revisions = RevisionsArgument();
        var pipeline = PipelineOption();
        var json = JsonOption();
        var md = MarkdownOption();
        var all = AllOption();
        var command = new Command("diff", "Compare the stages' metrics between git revisions (default: HEAD and the working tree).") { revisions, pipeline, json, md, all };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var file = PipelineLoader.ResolvePipelineFile(r.GetValue(pipeline)!);
            var (oldRev, newRev, oldName, newName) = Sides(r.GetValue(revisions) ?? []);
            var rows = ExperimentDiff.Metrics(ExperimentDiff.LockAt(file, oldRev), ExperimentDiff.LockAt(file, newRev), r.GetValue(all));
            if (r.GetValue(json))
            {
                var o = new JsonObject();
                foreach (var g in rows.GroupBy(x => x.Stage))
                    o[g.Key] = new JsonObject(g.Select(x => KeyValuePair.Create(x.Metric, (JsonNode?)new JsonObject
                    {
                        ["old"] = x.Old, ["new"] = x.New, ["diff"] = x.Change,
                    })));
                Console.Write(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                return 0;
            }
            if (rows.Count == 0 && !r.GetValue(md))
            {
                Console.Error.WriteLine($"no metric changed between {oldName} and {newName}.");
                return 0;
            }
            Console.Write(ExperimentTable.Render(["stage", "metric", oldName, newName, "change"],
                rows.Select(x => (IReadOnlyList<string>)[x.Stage, x.Metric, ExperimentTable.Number(x.Old), ExperimentTable.Number(x.New), ExperimentTable.Signed(x.Change)]).ToList(),
                r.GetValue(md)));
            return 0;
        }));
        return command;
    }
}
