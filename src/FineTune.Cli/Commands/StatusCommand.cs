using System.CommandLine;
using FineTune.Pipeline.Engine;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>`finetune status`: each stage up to date or stale, and why (which parameter or input changed since pipeline.lock).</summary>
public sealed class StatusCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var overrides = CliSupport.OverridesArgument();
        var verify = new Option<bool>("--verify") { Description = "Re-hash every cached file instead of trusting the size+mtime index." };
        var json = CliSupport.JsonOption();
        var command = new Command("status", "Show which stages are up to date and why the others are stale.") { pipeline, overrides, verify, json };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var stdout = r.GetValue(json) ? CliSupport.HumanOutputToStderr() : null;
            var loaded = CliSupport.Load(r.GetValue(pipeline)!, r.GetValue(overrides));
            var report = PipelineRunner.CreateDefault().Status(loaded, r.GetValue(verify));
            if (stdout is not null)
            {
                stdout.Write(CliSupport.ReportJson(loaded, report));
                return 0;
            }
            var table = new Table().Border(TableBorder.Rounded).Title($"{Markup.Escape(loaded.Definition.Name)}");
            table.AddColumn("stage").AddColumn("state").AddColumn("why").AddColumn("fingerprint").AddColumn("metrics");
            foreach (var s in report.Stages)
                table.AddRow(
                    Markup.Escape(s.Name),
                    CliSupport.StateText(s.State),
                    Markup.Escape(s.Reason),
                    s.Fingerprint is null ? "" : s.Fingerprint[..12],
                    Markup.Escape(CliSupport.Metrics(s.Metrics)));
            AnsiConsole.Write(table);
            CliSupport.PrintMissingExecutors(report);
            return 0;
        }));
        return command;
    }
}
