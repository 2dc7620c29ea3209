using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>`finetune dag`: the stages of a pipeline and the outputs each reads.</summary>
public sealed class DagCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var command = new Command("dag", "Show the pipeline's stage graph (what each stage reads).") { pipeline };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var loaded = CliSupport.Load(r.GetValue(pipeline)!);
            var runner = PipelineRunner.CreateDefault();
            var tree = new Tree($"[bold]{Markup.Escape(loaded.Definition.Name)}[/]");
            foreach (var kind in loaded.Stages)
            {
                var ups = StageGraph.Upstream(kind);
                var label = $"{StageNames.Of(kind)}" +
                    (ups.Count == 0 ? " [grey](source)[/]" : $" [grey]← {string.Join(", ", ups.Select(StageNames.Of))}[/]") +
                    (runner.HasExecutor(kind) ? "" : " [yellow](no executor yet)[/]");
                tree.AddNode(label);
            }
            AnsiConsole.Write(tree);
            return 0;
        }));
        return command;
    }
}
