using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Pipeline.Engine;

namespace FineTune.Board;

/// <summary>pipeline.lock as one commit recorded it (null commit: the working tree's).</summary>
public sealed record LockAtCommit(string? Commit, string Title, LockFile Lock);

/// <summary>
/// pipeline.lock through git history (what `dvc metrics diff` compares): the commits that changed it, newest first,
/// each read with <c>git show REV:path</c> and parsed by <see cref="LockFile"/>. Kept small and on its own so that it
/// can give way to the shared reader of `finetune metrics diff`.
/// </summary>
public sealed class LockHistory(string root)
{
    public IReadOnlyList<LockAtCommit> Read(string lockPathInRepo, string workingLock, int max = 20)
    {
        var result = new List<LockAtCommit>();
        if (File.Exists(workingLock) && Parse(File.ReadAllText(workingLock)) is { } now) result.Add(new(null, "working tree", now));
        var log = Git("log", $"-n{max}", "--format=%H%x1f%h %ad %s", "--date=short", "--", lockPathInRepo);
        if (log is null) return result;
        foreach (var line in log.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split('\x1f');
            if (parts.Length != 2) continue;
            if (Git("show", $"{parts[0]}:{lockPathInRepo}") is { } text && Parse(text) is { } locked)
                result.Add(new(parts[0], parts[1], locked));
        }
        return result;
    }

    /// <summary>
    /// Each stage's metrics at every commit, and the parameters that changed from the commit before (older) to it, in
    /// `finetune status`'s words ("stages.train.learning_rate: 0.005 → 0.001").
    /// </summary>
    public static JsonObject Compare(IReadOnlyList<LockAtCommit> history)
    {
        var rows = new JsonArray();
        for (int i = 0; i < history.Count; i++)
        {
            var (at, before) = (history[i], i + 1 < history.Count ? history[i + 1] : null);
            var stages = new JsonObject();
            foreach (var (name, stage) in at.Lock.Stages)
            {
                var changes = before?.Lock.Stages.TryGetValue(name, out var old) == true
                    ? PipelineRunner.ParameterChanges(old.Parameters, stage.Parameters)
                    : before is null ? [] : ["(new stage)"];
                stages[name] = new JsonObject
                {
                    ["fingerprint"] = stage.Fingerprint[..Math.Min(12, stage.Fingerprint.Length)],
                    ["metrics"] = StatusView.Metrics(stage.Metrics),
                    ["changed"] = new JsonArray(changes.Select(c => (JsonNode)c).ToArray()),
                };
            }
            rows.Add(new JsonObject { ["commit"] = at.Commit, ["title"] = at.Title, ["stages"] = stages });
        }
        return new JsonObject { ["commits"] = rows };
    }

    private static LockFile? Parse(string text)
    {
        // LockFile reads files: the revision's text goes through a temp file so that one parser reads every lock.
        var tmp = Path.Combine(Path.GetTempPath(), $"finetune-board-{Guid.NewGuid():N}.lock");
        try
        {
            File.WriteAllText(tmp, text);
            return LockFile.Read(tmp);
        }
        catch (LockFileDamagedException)
        {
            return null;
        }
        finally
        {
            File.Delete(tmp);
        }
    }

    private string? Git(params string[] args)
    {
        var psi = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = root };
        foreach (var a in args) psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            _ = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(10_000)) { p.Kill(); return null; }
            return p.ExitCode == 0 ? stdout.Result : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // no git here: the working tree's lock alone
        }
    }
}
