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
            foreach (var stage in loaded.Stages)
            {
                // Providers in the order of the kinds they are (download, split, train …); a named stage shows its kind.
                var ups = stage.Reads.OrderBy(u => u.Key).Select(u => u.Value).ToArray();
                var kind = StageNames.Of(stage.Kind);
                var label = Markup.Escape(stage.Name) + (stage.Name == kind ? "" : $" [grey]({kind})[/]") +
                    (ups.Length == 0 ? " [grey](source)[/]" : $" [grey]← {Markup.Escape(string.Join(", ", ups))}[/]") +
                    (runner.HasExecutor(stage.Kind) ? "" : " [yellow](no executor yet)[/]");
                tree.AddNode(label);
            }
            AnsiConsole.Write(tree);
            return 0;
        }));
        return command;
    }
}
