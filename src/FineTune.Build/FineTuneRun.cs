using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using Microsoft.Build.Framework;
using MsTask = Microsoft.Build.Utilities.Task;

namespace FineTune.Build;

/// <summary>
/// MSBuild task behind build/FineTune.targets: validates the pipeline (errors with file/line/column, so IDEs
/// list them) and runs it with the same <see cref="PipelineRunner"/> as the CLI, one message per stage.
/// </summary>
public sealed class FineTuneRun : MsTask, ICancelableTask
{
    private readonly CancellationTokenSource _cancel = new();

    /// <summary>pipeline.yaml or its directory.</summary>
    [Required] public string Pipeline { get; set; } = "";

    /// <summary>Stop after this stage (FineTuneStage property); empty runs all.</summary>
    public string? Stage { get; set; }

    public bool Force { get; set; }
    public bool DryRun { get; set; }
    public bool Verify { get; set; }
    public int LockTimeoutSeconds { get; set; } = 3600;

    /// <summary>File that receives the external input files (one per line) for the next quick up-to-date check.</summary>
    public string? InputsFile { get; set; }

    /// <summary>Stages run in this build.</summary>
    [Output] public int StagesRan { get; private set; }

    public void Cancel() => _cancel.Cancel();

    public override bool Execute()
    {
        LoadedPipeline loaded;
        try
        {
            loaded = PipelineLoader.Load(Pipeline);
        }
        catch (PipelineValidationException e)
        {
            foreach (var error in e.Errors)
                Log.LogError("FineTune", "FT0001", null, error.File, error.Line, error.Column, 0, 0, "{0}: {1}", error.JsonPath, error.Message);
            return false;
        }
        catch (PipelineUserException e)
        {
            Log.LogError("FineTune", "FT0002", null, Pipeline, 0, 0, 0, 0, "{0}", e.Message);
            return false;
        }

        var name = loaded.Definition.Name;
        // MSBuild cancels the task on Ctrl-C; SIGTERM (timeout, CI runners, docker stop) reaches a task that runs in the
        // build's own process only through this registration, and then stops training the same way: the step in
        // flight is saved as a checkpoint. (A task in an out-of-process node does not receive the signal.)
        using var onTerminate = OnSigterm(Cancel);
        try
        {
            string? stage = null;
            if (!string.IsNullOrEmpty(Stage))
            {
                if (loaded.Definition.Stages[Stage] is null && !loaded.Stages.Any(s => s.Name.Equals(Stage, StringComparison.OrdinalIgnoreCase)))
                {
                    Log.LogError("FineTune", "FT0003", null, loaded.FilePath, 0, 0, 0, 0,
                        "FineTuneStage={0}: no such stage; expected one of {1}", Stage, string.Join(", ", loaded.Stages.Select(s => s.Name)));
                    return false;
                }
                stage = PipelineRunner.StageNamed(loaded, Stage, "FineTuneStage=");
            }
            var options = new RunOptions
            {
                Stage = stage,
                Force = Force,
                DryRun = DryRun,
                Verify = Verify,
                LockTimeout = TimeSpan.FromSeconds(LockTimeoutSeconds),
                OnInfo = line => Log.LogMessage(MessageImportance.High, "{0}: {1}", name, line),
                OnStageStart = (stageName, why) => Log.LogMessage(MessageImportance.Normal, "{0}: {1} starting ({2})", name, stageName, why),
                OnStageDone = o => Log.LogMessage(MessageImportance.High, "{0}: {1}", name, Describe(o)),
            };
            var report = PipelineRunner.CreateDefault().Run(loaded, options, new MsBuildProgress(Log, name), _cancel.Token);
            StagesRan = report.Stages.Count(s => s.State == StageState.Ran);
            var missing = report.Stages.Where(s => s.State == StageState.NoExecutor).Select(s => s.Name).ToArray();
            if (missing.Length > 0)
                Log.LogMessage(MessageImportance.High, "{0}: no executor yet for {1}; the stages that need them were not run", name, string.Join(", ", missing));
            Log.LogMessage(MessageImportance.Normal, "{0}: FineTune overhead {1:0} ms, {2:0.#} MB hashed", name, report.OverheadSeconds * 1000, report.BytesHashed / 1e6);
            if (InputsFile is not null && !DryRun)
                AtomicFile.WriteAllText(InputsFile, string.Join("\n", report.InputFiles) + "\n");
            return true;
        }
        catch (PipelineValidationException e)
        {
            foreach (var error in e.Errors)
                Log.LogError("FineTune", "FT0001", null, error.File, error.Line, error.Column, 0, 0, "{0}: {1}", error.JsonPath, error.Message);
            return false;
        }
        catch (PipelineUserException e)
        {
            Log.LogError("FineTune", "FT0002", null, loaded.FilePath, 0, 0, 0, 0, "{0}", e.Message);
            return false;
        }
        catch (GateFailedException e)
        {
            // The eval gates failed: the build fails, pointing at each gate's line in pipeline.yaml.
            foreach (var g in e.Failed)
            {
                var at = loaded.ErrorAt($"$.stages.{g.Stage}.require.{g.Gate.Metric}", "");
                Log.LogError("FineTune", "FT0005", null, at.File, at.Line, at.Column, 0, 0, "gate failed: {0}", g.Describe());
            }
            return false;
        }
        catch (StageFailedException e)
        {
            Log.LogError("FineTune", "FT0004", null, loaded.FilePath, 0, 0, 0, 0, "{0}", e.Message);
            Log.LogMessage(MessageImportance.Low, "{0}", e.InnerException);
            return false;
        }
        catch (OperationCanceledException e)
        {
            if (e is FineTune.Training.TrainingCancelledException t)
                Log.LogWarning("{0}: cancelled: {1}", name, t.Message);
            else
                Log.LogWarning("{0}: cancelled; nothing half-written was kept", name);
            return false;
        }
    }

    private static IDisposable? OnSigterm(Action stop)
    {
        try
        {
            return System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, context =>
            {
                context.Cancel = true;
                stop();
            });
        }
        catch (PlatformNotSupportedException)
        {
            return null;
        }
    }

    private static string Describe(StageOutcome o) => o.State switch
    {
        StageState.Ran => $"{o.Name} ran ({(o.Seconds < 1 ? $"{o.Seconds * 1000:0} ms" : $"{o.Seconds:0.0} s")})",
        StageState.UpToDate => $"{o.Name} up to date",
        StageState.Stale => $"{o.Name} would run: {o.Reason}",
        StageState.NoExecutor => $"{o.Name} skipped: no executor yet",
        _ => $"{o.Name} skipped: {o.Reason}",
    };

    /// <summary>Progress as log lines at 25 % steps (MSBuild has no progress bars).</summary>
    private sealed class MsBuildProgress(Microsoft.Build.Utilities.TaskLoggingHelper log, string name) : IStageProgress
    {
        public IProgressTask Start(string description, double total) => new Step(log, name, description, total);
        public void Info(string line) => log.LogMessage(MessageImportance.Normal, "{0}: {1}", name, line);

        private sealed class Step(Microsoft.Build.Utilities.TaskLoggingHelper log, string name, string description, double total) : IProgressTask
        {
            private double _done;
            private int _quarter;
            public void Increment(double by)
            {
                _done += by;
                var q = total <= 0 ? 4 : (int)Math.Min(4, _done / total * 4);
                if (q > _quarter && q < 4)
                {
                    _quarter = q;
                    log.LogMessage(MessageImportance.Normal, "{0}: {1} {2} %", name, description, q * 25);
                }
            }
            public void SetDescription(string d) => description = d;
            public void Dispose() { }
        }
    }
}
