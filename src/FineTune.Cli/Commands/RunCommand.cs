using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>`finetune run`: bring the pipeline up to date, running only stages whose fingerprint changed.</summary>
public sealed class RunCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var overrides = CliSupport.OverridesArgument();
        var stage = new Option<string?>("--stage", "-s") { Description = "Stop after this stage, by name (download, register, split, train, eval, merge, export, or a stage's own name such as dpo); runs the stages it needs." };
        var force = new Option<bool>("--force", "-f") { Description = "Re-run even if up to date (all stages, or only --stage when given)." };
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "Show what would run; run nothing." };
        var verify = new Option<bool>("--verify") { Description = "Re-hash every cached file instead of trusting the size+mtime index." };
        var lockTimeout = new Option<int>("--lock-timeout") { Description = "Seconds to wait for another run of the same pipeline.", DefaultValueFactory = _ => 3600 };
        var json = CliSupport.JsonOption();
        var command = new Command("run", "Run the pipeline: stages whose inputs changed run, the others are reused from .finetune/.")
        {
            pipeline, overrides, stage, force, dryRun, verify, lockTimeout, json,
        };
        command.SetAction(r => CliSupport.Guard(ct =>
        {
            var stdout = r.GetValue(json) ? CliSupport.HumanOutputToStderr() : null;
            var loaded = CliSupport.Load(r.GetValue(pipeline)!, r.GetValue(overrides));
            var options = new RunOptions
            {
                Stage = r.GetValue(stage) is { } s ? PipelineRunner.StageNamed(loaded, s, "--stage") : null,
                Force = r.GetValue(force),
                DryRun = r.GetValue(dryRun),
                Verify = r.GetValue(verify),
                LockTimeout = TimeSpan.FromSeconds(r.GetValue(lockTimeout)),
                OnInfo = line => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(line)}[/]"),
                OnStageStart = (name, why) => AnsiConsole.MarkupLine($"[blue]▶ {Markup.Escape(name)}[/] [grey]({Markup.Escape(why)})[/]"),
                OnStageDone = o => AnsiConsole.MarkupLine(Line(o)),
            };
            AnsiConsole.MarkupLine($"[bold]{Markup.Escape(loaded.Definition.Name)}[/] [grey]{Markup.Escape(loaded.FilePath)}[/]{(options.DryRun ? " [yellow](dry run)[/]" : "")}");
            RunReport report;
            try
            {
                report = ConsoleStageProgress.Run(progress => PipelineRunner.CreateDefault().Run(loaded, options, progress, ct));
            }
            catch (GateFailedException e)
            {
                StepSummary.AppendIfSet(loaded, e.Report);
                throw;
            }
            StepSummary.AppendIfSet(loaded, report);
            CliSupport.PrintMissingExecutors(report);
            AnsiConsole.MarkupLine($"[grey]FineTune overhead {CliSupport.Seconds(report.OverheadSeconds)}, {report.BytesHashed / 1e6:0.#} MB hashed{(report.LockChanged ? ", pipeline.lock updated" : "")}[/]");
            stdout?.Write(CliSupport.ReportJson(loaded, report));
            return 0;
        }, stopOnSigterm: true));
        return command;
    }

    private static string Line(StageOutcome o)
    {
        var name = Markup.Escape($"{o.Name,-9}");
        return o.State switch
        {
            StageState.Ran => $"  [blue]{name}[/] ran ({CliSupport.Seconds(o.Seconds)}) [grey]{Markup.Escape(CliSupport.Metrics(o.Metrics))}[/]",
            StageState.UpToDate => $"  [green]{name}[/] {Markup.Escape(o.Reason)}",
            StageState.Stale => $"  [yellow]{name}[/] would run: {Markup.Escape(o.Reason)}",
            _ => $"  [grey]{name} {Markup.Escape(o.Reason)}[/]",
        };
    }
}
