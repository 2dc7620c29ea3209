using System.CommandLine;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>`finetune validate`: check a pipeline file, listing every error as file:line:col.</summary>
public sealed class ValidateCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var overrides = CliSupport.OverridesArgument();
        var command = new Command("validate", "Check a pipeline file against the schema; print every error as file:line:col (exit 2 on errors).") { pipeline, overrides };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var loaded = CliSupport.Load(r.GetValue(pipeline)!, r.GetValue(overrides));
            AnsiConsole.MarkupLine($"[green]{Markup.Escape(loaded.FilePath)}: valid[/] ({loaded.Stages.Count} stages: {string.Join(" → ", loaded.Stages.Select(s => s.Name))})");
            return 0;
        }));
        return command;
    }
}
