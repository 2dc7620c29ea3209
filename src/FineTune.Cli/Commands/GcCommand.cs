using System.CommandLine;
using FineTune.Pipeline.Engine;

namespace FineTune.Cli.Commands;

/// <summary>`finetune gc [P…] [--dry-run]`: remove cache entries that no lock of the given pipelines references.</summary>
public sealed class GcCommand : ICliCommand
{
    public Command Create()
    {
        var pipelines = new Argument<string[]>("pipelines")
        {
            Description = "The pipelines whose locks say what to keep (files or directories; default: the current directory). Name every pipeline that shares a cache.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var dryRun = new Option<bool>("--dry-run", "-n") { Description = "List what would be removed; remove nothing." };
        var command = new Command("gc", "Remove cached stage outputs that no pipeline.lock of the given pipelines references (in their .finetune/ or the shared cache they use).")
        {
            pipelines, dryRun,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var names = r.GetValue(pipelines) is { Length: > 0 } given ? given : ["."];
            var loaded = names.Select(name => CliSupport.Load(name)).ToList();
            var report = CacheCollector.Collect(loaded, r.GetValue(dryRun));
            var verb = report.DryRun ? "would remove" : "removed";
            foreach (var e in report.Removed)
                Console.WriteLine($"{verb} {e.Fingerprint[..Math.Min(12, e.Fingerprint.Length)]} ({e.Kind ?? "unknown stage"}, {e.Bytes.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)} bytes) from {e.Store}");
            Console.WriteLine($"{verb} {report.Removed.Count} cache entr{(report.Removed.Count == 1 ? "y" : "ies")}, {report.Bytes.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)} bytes; kept {report.Kept}.");
            return 0;
        }));
        return command;
    }
}
