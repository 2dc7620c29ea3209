using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Cli.Commands;

/// <summary>`finetune params diff [A [B]]`: the resolved stage parameters that differ between git revisions, as `dvc params diff`.</summary>
public sealed class ParamsCommand : ICliCommand
{
    public Command Create()
    {
        var revisions = MetricsCommand.RevisionsArgument();
        var pipeline = MetricsCommand.PipelineOption();
        var json = MetricsCommand.JsonOption();
        var md = MetricsCommand.MarkdownOption();
        var all = MetricsCommand.AllOption();
        var diff = new Command("diff", "Compare the stages' resolved parameters (defaults applied) between git revisions (default: HEAD and the working tree).")
        {
            revisions, pipeline, json, md, all,
        };
        diff.SetAction(r => CliSupport.Guard(_ =>
        {
            var file = PipelineLoader.ResolvePipelineFile(r.GetValue(pipeline)!);
            var (oldRev, newRev, oldName, newName) = MetricsCommand.Sides(r.GetValue(revisions) ?? []);
            var rows = ExperimentDiff.Params(ExperimentDiff.ParamsAt(file, oldRev), ExperimentDiff.ParamsAt(file, newRev), r.GetValue(all));
            if (r.GetValue(json))
            {
                var o = new JsonObject(rows.Select(x => KeyValuePair.Create(x.Param, (JsonNode?)new JsonObject
                {
                    ["old"] = x.Old is null ? null : JsonNode.Parse(x.Old), ["new"] = x.New is null ? null : JsonNode.Parse(x.New),
                })));
                Console.Write(o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
                return 0;
            }
            if (rows.Count == 0 && !r.GetValue(md))
            {
                Console.Error.WriteLine($"no parameter changed between {oldName} and {newName}.");
                return 0;
            }
            Console.Write(ExperimentTable.Render(["param", oldName, newName],
                rows.Select(x => (IReadOnlyList<string>)[x.Param, x.Old ?? "-", x.New ?? "-"]).ToList(), r.GetValue(md)));
            return 0;
        }));
        var command = new Command("params", "Compare the pipeline's parameters between git revisions.");
        command.Subcommands.Add(diff);
        return command;
    }
}
