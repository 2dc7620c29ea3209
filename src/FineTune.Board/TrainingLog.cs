using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;
using FineTune.Training;

namespace FineTune.Board;

/// <summary>
/// trainer_log.jsonl, the file the train loop appends a line to at every logging step (LLaMA-Factory's fields): read
/// whole for a finished run, and followed while a stage trains into its temp output under <c>.finetune/tmp/</c>.
/// </summary>
public static class TrainingLog
{
    /// <summary>The log lines of a file as JSON objects (an unreadable line, as a line being written, ends the read).</summary>
    public static IReadOnlyList<JsonObject> Read(string path, int skip = 0)
    {
        var lines = new List<JsonObject>();
        if (!File.Exists(path)) return lines;
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        int n = 0;
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0) continue;
            if (n++ < skip) continue;
            try { lines.Add(JsonNode.Parse(TrainerLogEntry.FromJson(line).ToJson())!.AsObject()); }
            catch (Exception e) when (e is System.Text.Json.JsonException or FormatException) { break; }
        }
        return lines;
    }

    /// <summary>The trainer logs being written now under <paramref name="cacheRoot"/>/tmp (a train stage in flight, by any process).</summary>
    public static IReadOnlyList<string> Live(string cacheRoot)
    {
        var tmp = Path.Combine(cacheRoot, "tmp");
        if (!Directory.Exists(tmp)) return [];
        return Directory.EnumerateDirectories(tmp)
            .Select(d => Path.Combine(d, "out", TrainerLog.FileName))
            .Where(File.Exists)
            .OrderByDescending(File.GetLastWriteTimeUtc)
            .ToArray();
    }
}

/// <summary>Follows the trainer log of the train stage in flight of one run and adds each new line to the run as a "metrics" event.</summary>
internal sealed class TrainingLogWatcher : IDisposable
{
    private readonly BoardRun _run;
    private readonly string _tmp;
    private readonly Timer _timer;
    private readonly Lock _gate = new();
    private string? _file;
    private string? _followedStage;
    private int _seen;

    public TrainingLogWatcher(BoardRun run, string cacheRoot)
    {
        _run = run;
        _tmp = Path.Combine(cacheRoot, "tmp");
        _timer = new Timer(_ => Poll(), null, TimeSpan.FromMilliseconds(250), TimeSpan.FromMilliseconds(250));
    }

    private void Poll()
    {
        lock (_gate)
        {
            // The runner names temp outputs <stage>-<pid>-<guid>: this process's, for the stage in flight.
            if (_run.Stage is not { } stage || !Directory.Exists(_tmp)) return;
            var prefix = $"{stage}-{Environment.ProcessId}-";
            var file = Directory.EnumerateDirectories(_tmp)
                .Where(d => Path.GetFileName(d).StartsWith(prefix, StringComparison.Ordinal))
                .Select(d => Path.Combine(d, "out", TrainerLog.FileName))
                .FirstOrDefault(File.Exists);
            if (file is null) { Flush(); return; }
            if (file != _file) { Flush(); _file = file; _seen = 0; _followedStage = stage; _run.Add("metrics_reset", new JsonObject { ["stage"] = stage }); }
            Follow();
        }
    }

    private void Follow()
    {
        if (_file is null) return;
        try
        {
            foreach (var line in TrainingLog.Read(_file, _seen))
            {
                _seen++;
                _run.Add("metrics", new JsonObject { ["stage"] = _run.Stage, ["entry"] = line });
            }
        }
        catch (IOException) { } // the stage finished and its temp output was renamed into the cache between two looks
    }

    /// <summary>
    /// A stage finished: the runner renamed its temp output into the cache, perhaps before a poll read the last lines,
    /// so the rest is read from the cached trainer_log.jsonl (a stage never seen in flight sends its whole log).
    /// </summary>
    public void Complete(string stage, string? outputDirectory)
    {
        lock (_gate)
        {
            Follow();
            var file = outputDirectory is null ? null : Path.Combine(outputDirectory, TrainerLog.FileName);
            if (file is null || !File.Exists(file)) return;
            if (_followedStage != stage)
            {
                _followedStage = stage;
                _seen = 0;
                _run.Add("metrics_reset", new JsonObject { ["stage"] = stage });
            }
            foreach (var line in TrainingLog.Read(file, _seen))
            {
                _seen++;
                _run.Add("metrics", new JsonObject { ["stage"] = stage, ["entry"] = line });
            }
            _file = null;
        }
    }

    private void Flush()
    {
        Follow();
        _file = null;
    }

    public void Dispose()
    {
        _timer.Dispose();
        lock (_gate) Follow();
    }
}
