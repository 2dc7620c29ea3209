using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune path`: prints the cached output directory of an up-to-date stage, so scripts can use what a
/// pipeline made (`finetune chat --model "$(finetune path pipelines/identity --stage merge)"`).
/// </summary>
public sealed class PathCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var stage = new Option<string>("--stage", "-s") { Description = "The stage's name: download, register, split, train, eval, merge, export, or a stage's own name (dpo).", Required = true };
        var command = new Command("path", "Print the output directory of an up-to-date stage (exit 2 when it is stale: run it first).") { pipeline, stage };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var loaded = CliSupport.Load(r.GetValue(pipeline)!);
            string name = PipelineRunner.StageNamed(loaded, r.GetValue(stage)!, "--stage");
            var outcome = PipelineRunner.CreateDefault().Status(loaded).Stages.First(s => s.Name == name);
            if (outcome.State != StageState.UpToDate || outcome.OutputDirectory is null)
                throw new PipelineUserException($"stage {name} is not up to date ({outcome.Reason}); run `finetune run {r.GetValue(pipeline)} --stage {name}` first.");
            Console.WriteLine(outcome.OutputDirectory);
            return 0;
        }));
        return command;
    }
}
