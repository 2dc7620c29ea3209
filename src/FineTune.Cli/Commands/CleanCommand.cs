using System.CommandLine;
using FineTune.Pipeline.Engine;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>`finetune clean`: free the cache of outputs pipeline.lock no longer references.</summary>
public sealed class CleanCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var all = new Option<bool>("--all") { Description = "Remove every cached output, including the ones pipeline.lock references." };
        var command = new Command("clean", "Remove cached stage outputs not referenced by pipeline.lock and finished training runs' checkpoints (or everything with --all).") { pipeline, all };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var loaded = CliSupport.Load(r.GetValue(pipeline)!);
            var report = CacheCleaner.Clean(loaded, r.GetValue(all), TimeSpan.FromSeconds(5));
            AnsiConsole.MarkupLine($"removed {report.EntriesRemoved} cached output(s) and the checkpoints of {report.FinishedRunsRemoved} finished training run(s), {report.BytesFreed / 1e6:0.##} MB; kept {report.EntriesKept}.");
            if (report.SharedStore is { } store)
                Console.WriteLine($"the stage outputs are in the shared cache {store}, which clean leaves alone: `finetune gc` with every pipeline that uses it removes what none of their locks references.");
            return 0;
        }));
        return command;
    }
}
