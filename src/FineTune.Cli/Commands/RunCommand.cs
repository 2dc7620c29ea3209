using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
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
        var nprocPerNode = new Option<int?>("--nproc-per-node") { Description = "Start this many processes on this machine (one per GPU, or CPU ranks), as torchrun does; the train stage runs data parallel on all of them, the other stages once (rank 0)." };
        var nnodes = new Option<int>("--nnodes") { Description = "Machines in the job (with --nproc-per-node; each machine runs the same command with its own --node-rank).", DefaultValueFactory = _ => 1 };
        var nodeRank = new Option<int>("--node-rank") { Description = "This machine's index among --nnodes (0 runs rank 0).", DefaultValueFactory = _ => 0 };
        var masterAddr = new Option<string>("--master-addr") { Description = "Host of node 0, where rank 0 listens (MASTER_ADDR).", DefaultValueFactory = _ => "127.0.0.1" };
        var masterPort = new Option<int?>("--master-port") { Description = "Port rank 0 listens on (MASTER_PORT); default: a free port (one machine)." };
        var command = new Command("run", "Run the pipeline: stages whose inputs changed run, the others are reused from .finetune/.")
        {
            pipeline, overrides, stage, force, dryRun, verify, lockTimeout, json, nprocPerNode, nnodes, nodeRank, masterAddr, masterPort,
        };
        command.SetAction(r => CliSupport.Guard(ct =>
        {
            if (r.GetValue(nprocPerNode) is int procs)
            {
                if (Environment.GetEnvironmentVariable(FineTune.Engine.Collectives.Rendezvous.RankVariable) is not null)
                    throw new PipelineUserException("--nproc-per-node inside a launched rank (RANK is set): start `finetune run` without it under torchrun, or with it alone.");
                return RankLauncher.Launch(new RankLauncher.Settings(procs, r.GetValue(nnodes), r.GetValue(nodeRank), r.GetValue(masterAddr)!, r.GetValue(masterPort)),
                    RankLauncher.WithoutLauncherFlags(Environment.GetCommandLineArgs()[1..]), ct);
            }
            // torchrun's variables (set by the launcher above, torchrun, Slurm or Kubeflow): join the job's ranks first,
            // so that a rank that fails to load the pipeline ends the others at once.
            using var ranks = TrainingRanks.FromEnvironment();
            var stdout = r.GetValue(json) ? CliSupport.HumanOutputToStderr() : null;
            var loaded = CliSupport.Load(r.GetValue(pipeline)!, r.GetValue(overrides));
            if (ranks is not null) loaded = ranks.Scale(loaded);
            if (ranks is { Rank: > 0 }) return Follow(ranks, loaded, ct);
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
                Ranks = ranks,
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
            ranks?.Finish();
            return 0;
        }, stopOnSigterm: true));
        return command;
    }

    /// <summary>A rank other than 0: trains each stage rank 0 sends, writes nothing, and exits when rank 0 ends the run.</summary>
    private static int Follow(TrainingRanks ranks, LoadedPipeline loaded, CancellationToken ct)
    {
        while (ranks.Receive() is { } job)
        {
            var stage = loaded.Definition.Stages[job.Stage]
                ?? throw new PipelineUserException($"{loaded.FilePath}: rank 0 trains stage {job.Stage}, which this rank's pipeline does not have; start every rank on the same pipeline and overrides.");
            var ctx = new StageContext(loaded.Definition, loaded.Directory, job.UpstreamOutputs, "", new NullStageProgress(), ct,
                job.WorkDirectory, job.UpstreamHashes) { Stage = stage, Ranks = ranks };
            new TrainStage().Execute(ctx);
        }
        return 0;
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
