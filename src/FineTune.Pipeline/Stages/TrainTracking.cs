using System.Text.Json.Nodes;
using FineTune.Pipeline.Config;
using FineTune.Training;
using FineTune.Training.Tracking;

namespace FineTune.Pipeline;

/// <summary>
/// A train stage's <c>report_to</c>: an MLflow run opened before training (params, tags: git commit, the stage's
/// fingerprint) and closed after it (the log's metrics per step, the reports as artifacts, FINISHED; FAILED or KILLED
/// when training throws), and TensorBoard event files written into the output from the finished log. What the trackers
/// receive is the HF Trainer's log history (<see cref="TrainerLogHistory"/>). A tracking server that fails costs a
/// warning, never the trained result; a missing or malformed MLFLOW_TRACKING_URI stops the stage before it trains.
/// </summary>
internal sealed class TrainTracking
{
    /// <summary>Where the event file goes in the train output (the HF Trainer's logging_dir is output_dir/runs/…).</summary>
    public const string TensorBoardFile = "runs/events.out.tfevents.finetune";

    private readonly IStageProgress _progress;
    private readonly string _stageName;
    private readonly bool _tensorBoard;
    private readonly DateTimeOffset _started = DateTimeOffset.UtcNow;
    private MlflowClient? _mlflow;
    private MlflowRun? _run;

    private TrainTracking(IStageProgress progress, string stageName, bool tensorBoard)
    {
        _progress = progress;
        _stageName = stageName;
        _tensorBoard = tensorBoard;
    }

    public static TrainTracking Start(StageContext ctx, TrainConfig cfg, string stageName, string fingerprint, Func<string, string?> environment)
    {
        var tracking = new TrainTracking(ctx.Progress, stageName, cfg.ReportTo is ReportTo.Tensorboard or ReportTo.All);
        if (cfg.ReportTo is ReportTo.Mlflow or ReportTo.All)
            tracking.OpenMlflow(ctx, cfg, fingerprint, environment);
        return tracking;
    }

    private void OpenMlflow(StageContext ctx, TrainConfig cfg, string fingerprint, Func<string, string?> environment)
    {
        var uriText = environment(MlflowClient.UriVariable);
        if (string.IsNullOrWhiteSpace(uriText))
            throw new PipelineUserException($"stages.{_stageName}.report_to is {ConfigName(cfg.ReportTo)}, but {MlflowClient.UriVariable} is not set; " +
                "set it to the tracking server's URL (http://host:5000), or set report_to: none or tensorboard.");
        if (!Uri.TryCreate(uriText, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new PipelineUserException($"{MlflowClient.UriVariable}={uriText}: FineTune talks to an MLflow tracking server over its REST API, " +
                "so this must be an http:// or https:// URL (a local ./mlruns store is MLflow's own client's; start `mlflow server` and point at it).");
        _mlflow = new MlflowClient(uri, environment("MLFLOW_TRACKING_TOKEN"), environment("MLFLOW_TRACKING_USERNAME"), environment("MLFLOW_TRACKING_PASSWORD"));
        var experiment = environment("MLFLOW_EXPERIMENT_NAME") is { Length: > 0 } e ? e : ctx.Pipeline.Name;
        var tags = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["finetune.fingerprint"] = fingerprint,
            ["finetune.pipeline"] = ctx.Pipeline.Name,
            ["finetune.stage"] = _stageName,
            ["mlflow.source.type"] = "LOCAL",
        };
        if (Engine.GitRevision.Head(ctx.PipelineDirectory) is { } commit)
            tags["mlflow.source.git.commit"] = commit;
        Tracked(() =>
        {
            _run = _mlflow.CreateRun(_mlflow.ExperimentId(experiment), $"{ctx.Pipeline.Name}/{_stageName}", _started, tags);
            _mlflow.LogBatch(_run.RunId, [], Params(ctx, cfg), new Dictionary<string, string>());
            _progress.Info($"{_stageName}: MLflow run {_run.RunId} in experiment {experiment} at {_mlflow.TrackingUri}");
        });
    }

    /// <summary>The train block's keys (all of them, fingerprinted or not) and the base model, flattened to strings.</summary>
    private static Dictionary<string, string> Params(StageContext ctx, TrainConfig cfg)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["model_name_or_path"] = TrainStage.BaseModelName(ctx.Pipeline.Model),
            ["finetune.objective"] = cfg.Objective.ToString().ToLowerInvariant(),
        };
        foreach (var key in Validation.ConfigModel.Keys(typeof(TrainConfig)))
        {
            var value = Engine.CanonicalJson.Value(key.Property.GetValue(cfg));
            if (value is null) continue;
            result[key.Name] = value is JsonValue v && v.GetValueKind() == System.Text.Json.JsonValueKind.String ? v.GetValue<string>() : value.ToJsonString();
        }
        return result;
    }

    /// <summary>After training: writes the event file, sends the log and the reports; returns the report files it added to the output.</summary>
    public IReadOnlyList<string> Finish(TrainResult result, string outputDirectory)
    {
        var log = TrainerLog.Read(Path.Combine(outputDirectory, TrainerLog.FileName));
        var history = TrainerLogHistory.From(log, result.TrainLoss, result.RuntimeSeconds);
        var added = new List<string>();
        if (_tensorBoard)
        {
            TrainerLogHistory.WriteTensorBoard(Path.Combine(outputDirectory, TensorBoardFile), history, _started);
            added.Add(TensorBoardFile);
        }
        if (_mlflow is not null && _run is { } run)
            Tracked(() =>
            {
                var metrics = history.SelectMany(h => h.Values.Select(kv => new MlflowMetric(kv.Key, kv.Value,
                    (_started + TimeSpan.FromSeconds(h.ElapsedSeconds)).ToUnixTimeMilliseconds(), h.Step))).ToList();
                _mlflow.LogBatch(run.RunId, metrics, new Dictionary<string, string>(), new Dictionary<string, string>());
                var artifacts = new[] { TrainerLog.FileName, FineTuneRecipe.TrainResultsFile, LossPlot.TrainFile, LossPlot.EvalFile, TensorBoardFile }
                    .Where(f => File.Exists(Path.Combine(outputDirectory, f))).ToList();
                var uploaded = artifacts.Where(f => _mlflow.UploadArtifact(run, f, Path.Combine(outputDirectory, f))).Count();
                if (artifacts.Count > 0 && uploaded == 0)
                    _progress.Info($"{_stageName}: MLflow stores this run's artifacts at {run.ArtifactUri}, which its server does not proxy (mlflow server --serve-artifacts); the reports were not uploaded.");
                _mlflow.UpdateRun(run.RunId, "FINISHED", DateTimeOffset.UtcNow);
            });
        _mlflow?.Dispose();
        return added;
    }

    /// <summary>Training threw: the MLflow run ends FAILED (KILLED when it was cancelled).</summary>
    public void Failed(Exception e)
    {
        if (_mlflow is not null && _run is { } run)
            Tracked(() => _mlflow.UpdateRun(run.RunId, e is OperationCanceledException ? "KILLED" : "FAILED", DateTimeOffset.UtcNow));
        _mlflow?.Dispose();
    }

    private void Tracked(Action send)
    {
        try { send(); }
        // A field of the wrong type in an answer (InvalidOperationException, FormatException) is the server's fault too.
        catch (Exception e) when (e is MlflowException or InvalidOperationException or FormatException or IOException)
        {
            _progress.Info($"warning: {_stageName}: MLflow tracking stopped: {e.Message}; the trained result is kept, the run is not tracked further.");
            _run = null;
        }
    }

    private static string ConfigName(ReportTo r) => Validation.ConfigModel.EnumName(r);
}
