using System.Collections.Concurrent;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Board;

/// <summary>What a user asked the board to run: `finetune run` with its --stage and --force.</summary>
public sealed record RunRequest(string Pipeline, string? Stage, bool Force);

/// <summary>
/// One board run and everything it reported, in order (stage starts and ends, info lines, progress, training log
/// lines). Its record is kept in the pipeline's <c>.finetune/board/runs/&lt;id&gt;.json</c>, so a restarted board
/// finds the runs it started; a run whose board process is gone reads as interrupted.
/// </summary>
public sealed class BoardRun
{
    private readonly Lock _gate = new();
    private readonly List<JsonObject> _events = [];
    private readonly string _recordPath;
    private DateTime _savedAt;

    internal BoardRun(string id, RunRequest request, string recordPath)
    {
        Id = id;
        Request = request;
        _recordPath = recordPath;
        State = "queued";
        Queued = DateTime.UtcNow;
    }

    public string Id { get; }
    public RunRequest Request { get; }
    /// <summary>queued, running, succeeded, failed, cancelled, interrupted.</summary>
    public string State { get; private set; }
    public string? Stage { get; private set; }
    public string? FailedStage { get; private set; }
    public string? Message { get; private set; }
    public DateTime Queued { get; }
    public DateTime? Started { get; private set; }
    public DateTime? Finished { get; private set; }
    public int ProcessId { get; private set; } = Environment.ProcessId;
    internal CancellationTokenSource Cancel { get; } = new();
    public bool Done => State is "succeeded" or "failed" or "cancelled" or "interrupted";
    /// <summary>The temp output directory of the stage in flight (its trainer_log.jsonl grows there while it trains).</summary>
    internal string? LiveOutput { get; set; }

    /// <summary>Events after sequence number <paramref name="after"/> (each carries its "seq").</summary>
    public IReadOnlyList<JsonObject> EventsAfter(int after)
    {
        lock (_gate) return _events.Skip(Math.Max(0, after)).Select(e => (JsonObject)e.DeepClone()).ToArray();
    }

    public int EventCount { get { lock (_gate) return _events.Count; } }

    internal void Add(string type, JsonObject data, bool save = false)
    {
        lock (_gate)
        {
            data["type"] = type;
            data["seq"] = _events.Count + 1;
            _events.Add(data);
            // Progress ticks come many times a second: the record on disk follows them at most once a second.
            if (save || DateTime.UtcNow - _savedAt > TimeSpan.FromSeconds(1)) SaveLocked();
        }
    }

    internal void SetState(string state, string? stage = null, string? message = null)
    {
        lock (_gate)
        {
            State = state;
            if (stage is not null) Stage = stage;
            if (message is not null) Message = message;
            if (state == "running") Started ??= DateTime.UtcNow;
            if (state == "failed") FailedStage = Stage;
            if (Done) Finished = DateTime.UtcNow;
        }
        Add("state", new JsonObject { ["state"] = state, ["stage"] = Stage, ["message"] = message }, save: true);
    }

    public JsonObject Summary()
    {
        lock (_gate)
            return new JsonObject
            {
                ["id"] = Id, ["pipeline"] = Request.Pipeline, ["stage_option"] = Request.Stage, ["force"] = Request.Force, ["state"] = State,
                ["stage"] = Stage, ["failed_stage"] = FailedStage, ["message"] = Message, ["queued"] = Queued, ["started"] = Started,
                ["finished"] = Finished, ["pid"] = ProcessId,
            };
    }

    private void SaveLocked()
    {
        var record = Summary();
        record["events"] = new JsonArray(_events.TakeLast(2000).Select(e => (JsonNode)e.DeepClone()).ToArray());
        AtomicFile.WriteAllText(_recordPath, record.ToJsonString());
        _savedAt = DateTime.UtcNow;
    }

    /// <summary>A run recorded on disk by an earlier board process (or this one's, re-read); queued or running ones whose process is gone are interrupted.</summary>
    internal static BoardRun? Load(string path)
    {
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var run = new BoardRun(o["id"]!.GetValue<string>(),
                new RunRequest(o["pipeline"]!.GetValue<string>(), o["stage_option"]?.GetValue<string>(), o["force"]?.GetValue<bool>() ?? false), path)
            {
                ProcessId = o["pid"]?.GetValue<int>() ?? 0,
            };
            run.State = o["state"]!.GetValue<string>();
            run.Stage = o["stage"]?.GetValue<string>();
            run.FailedStage = o["failed_stage"]?.GetValue<string>();
            run.Message = o["message"]?.GetValue<string>();
            run.Started = o["started"]?.GetValue<DateTime>();
            run.Finished = o["finished"]?.GetValue<DateTime>();
            foreach (var e in o["events"]?.AsArray() ?? []) run._events.Add(e!.AsObject().DeepClone().AsObject());
            if (!run.Done && !ProcessAlive(run.ProcessId))
                run.SetState("interrupted", message: $"the board process (pid {run.ProcessId}) that ran it stopped; completed stages are in the cache, an interrupted train stage resumes with resume_from_checkpoint: true");
            return run;
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException or NullReferenceException or FormatException)
        {
            return null; // a record cut short by a kill: the run's stages are in the cache and the lock either way
        }
    }

    private static bool ProcessAlive(int pid)
    {
        if (pid == Environment.ProcessId) return false; // this process just started: it runs nothing it did not start itself
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }
}

/// <summary>
/// The board's run queue: one worker runs the queued requests one after another through <see cref="PipelineRunner"/>
/// (so through the same <see cref="RunLock"/> as the CLI: a board run and a CLI run of one pipeline serialise). A run
/// lives on the worker, not on a request, so a browser that disconnects stops nothing; Stop cancels it as Ctrl-C does
/// (training finishes the step in flight and saves it as a checkpoint).
/// </summary>
public sealed class BoardRuns : IDisposable
{
    private readonly PipelineCatalog _catalog;
    private readonly ConcurrentDictionary<string, BoardRun> _runs = new(StringComparer.Ordinal);
    private readonly BlockingCollection<BoardRun> _queue = [];
    private readonly Thread _worker;
    private readonly CancellationTokenSource _shutdown = new();

    public BoardRuns(PipelineCatalog catalog)
    {
        _catalog = catalog;
        foreach (var name in catalog.Names())
        {
            var dir = RunsDirectory(name);
            if (!Directory.Exists(dir)) continue;
            foreach (var file in Directory.EnumerateFiles(dir, "*.json"))
                if (BoardRun.Load(file) is { } run) _runs[run.Id] = run;
        }
        _worker = new Thread(Work) { IsBackground = true, Name = "board runs" };
        _worker.Start();
    }

    private string RunsDirectory(string pipeline) =>
        Path.Combine(Path.GetDirectoryName(_catalog.FileOf(pipeline)!)!, StageCache.DirectoryName, "board", "runs");

    /// <summary>Every run, newest first.</summary>
    public IReadOnlyList<BoardRun> All => _runs.Values.OrderByDescending(r => r.Queued).ThenByDescending(r => r.Id, StringComparer.Ordinal).ToArray();

    public BoardRun? Get(string id) => _runs.GetValueOrDefault(id);

    public BoardRun Enqueue(RunRequest request)
    {
        var file = _catalog.FileOf(request.Pipeline) ?? throw new PipelineUserException($"no pipeline '{request.Pipeline}' under {_catalog.Root}/pipelines");
        var loaded = PipelineLoader.Load(file); // located errors now, not in the queue
        var stage = request.Stage is { Length: > 0 } s ? PipelineRunner.StageNamed(loaded, s, "stage") : null;
        var id = $"{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Guid.NewGuid().ToString("N")[..6]}";
        Directory.CreateDirectory(RunsDirectory(request.Pipeline));
        var run = new BoardRun(id, request with { Stage = stage }, Path.Combine(RunsDirectory(request.Pipeline), id + ".json"));
        _runs[id] = run;
        run.SetState("queued");
        _queue.Add(run);
        return run;
    }

    /// <summary>Stops a run as Ctrl-C does (a queued one never starts). False when it is already done.</summary>
    public bool Stop(string id)
    {
        if (Get(id) is not { Done: false } run) return false;
        run.Add("info", new JsonObject { ["line"] = "stop requested: the step in flight finishes and is saved" }, save: true);
        run.Cancel.Cancel();
        return true;
    }

    private void Work()
    {
        try
        {
            foreach (var run in _queue.GetConsumingEnumerable(_shutdown.Token))
                Execute(run);
        }
        catch (OperationCanceledException) { }
    }

    private void Execute(BoardRun run)
    {
        if (run.Cancel.IsCancellationRequested)
        {
            run.SetState("cancelled", message: "stopped before it started");
            return;
        }
        run.SetState("running");
        var cacheRoot = Path.Combine(Path.GetDirectoryName(_catalog.FileOf(run.Request.Pipeline)!)!, StageCache.DirectoryName);
        using var watcher = new TrainingLogWatcher(run, cacheRoot);
        try
        {
            var loaded = PipelineLoader.Load(_catalog.FileOf(run.Request.Pipeline)!);
            var options = new RunOptions
            {
                Stage = run.Request.Stage,
                Force = run.Request.Force,
                OnInfo = line => run.Add("info", new JsonObject { ["line"] = line }, save: true),
                OnStageStart = (name, why) =>
                {
                    run.SetState("running", stage: name);
                    run.Add("stage_start", new JsonObject { ["stage"] = name, ["why"] = why }, save: true);
                },
                OnStageDone = o =>
                {
                    watcher.Complete(o.Name, o.OutputDirectory);
                    run.Add("stage_done", new JsonObject
                {
                    ["stage"] = o.Name, ["state"] = o.State.Word(), ["reason"] = o.Reason, ["seconds"] = Math.Round(o.Seconds, 3),
                    ["metrics"] = StatusView.Metrics(o.Metrics),
                    }, save: true);
                },
            };
            var report = PipelineRunner.CreateDefault().Run(loaded, options, new BoardProgress(run), run.Cancel.Token);
            run.SetState("succeeded", message: $"FineTune overhead {report.OverheadSeconds:0.00} s{(report.LockChanged ? ", pipeline.lock updated" : "")}");
        }
        catch (Exception e) when (Cancelled(e) is { } oce)
        {
            run.SetState("cancelled", message: oce is FineTune.Training.TrainingCancelledException t ? t.Message : "cancelled; nothing half-written was kept");
        }
        catch (PipelineValidationException e)
        {
            run.SetState("failed", message: string.Join("\n", e.Errors.Select(x => $"{x.File}:{x.Line}:{x.Column}: error: {x.JsonPath}: {x.Message}")));
        }
        catch (Exception e) when (e is PipelineUserException or StageFailedException || StatusView.IsUserError(e))
        {
            run.SetState("failed", message: e.Message);
        }
        catch (Exception e)
        {
            run.SetState("failed", message: $"{e.GetType().Name}: {e.Message}");
        }
    }

    private static OperationCanceledException? Cancelled(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is OperationCanceledException oce) return oce;
        return null;
    }

    public void Dispose()
    {
        // A board that stops cancels what it runs (as Ctrl-C on `finetune run`): training saves its step.
        foreach (var run in _runs.Values.Where(r => !r.Done && r.ProcessId == Environment.ProcessId)) run.Cancel.Cancel();
        _shutdown.Cancel();
        _worker.Join(TimeSpan.FromSeconds(30));
    }

    /// <summary>The runner's progress events as run events: a task per bar, its description (the train loop's line), its share done.</summary>
    private sealed class BoardProgress(BoardRun run) : IStageProgress
    {
        public IProgressTask Start(string description, double total)
        {
            run.Add("task", new JsonObject { ["description"] = description, ["total"] = total, ["done"] = 0.0 });
            return new Task(run, description, total);
        }

        public void Info(string line) => run.Add("info", new JsonObject { ["line"] = line }, save: true);

        private sealed class Task(BoardRun run, string description, double total) : IProgressTask
        {
            private double _done;
            private DateTime _sent;

            public void Increment(double by)
            {
                _done += by;
                if (DateTime.UtcNow - _sent < TimeSpan.FromMilliseconds(200) && _done < total) return;
                _sent = DateTime.UtcNow;
                Send();
            }

            public void SetDescription(string text)
            {
                description = text;
                Send();
            }

            private void Send() => run.Add("task", new JsonObject { ["description"] = description, ["total"] = total, ["done"] = _done });

            public void Dispose() => run.Add("task", new JsonObject { ["description"] = description, ["total"] = total, ["done"] = total, ["finished"] = true });
        }
    }
}
