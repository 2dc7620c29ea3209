using System.Diagnostics;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FineTune.Board.Tests;

/// <summary>Runs started from the board: the runner's events over SSE, Stop as Ctrl-C, a browser leaving, a restart.</summary>
public sealed class BoardRunTests
{
    [Fact]
    public async Task Stop_ActsAsCtrlC_ABrowserLeavingStopsNothing_AndARestartFindsTheRun()
    {
        // A log line every step, so the first point comes after one step.
        using var demo = new DemoRoot(y => y.Replace("logging_steps: 10", "logging_steps: 1"));
        var (_, run) = await demo.Post("/api/runs", new { pipeline = "identity", stage = "train" });
        var id = run["id"]!.GetValue<string>();

        // A browser follows the run until the first training point, then leaves.
        JsonObject firstPoint;
        using (var response = await demo.Client.GetAsync($"/api/runs/{id}/events", HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            firstPoint = await NextEvent(reader, "metrics");
        }
        var entry = firstPoint["entry"]!;
        Assert.Equal(1, entry["current_steps"]!.GetValue<int>());
        Assert.Equal(240, entry["total_steps"]!.GetValue<int>());
        // The first step of a random model over the demo's 269-token vocabulary: about ln 269 ≈ 5.6.
        Assert.InRange(entry["loss"]!.GetValue<double>(), 4.5, 7.0);
        Assert.NotNull(entry["grad_norm"]);
        Assert.NotNull(entry["throughput"]);

        // The run went on without its viewer: more points arrive.
        var seen = Points(await demo.Get($"/api/runs/{id}"));
        var clock = Stopwatch.StartNew();
        while (Points(await demo.Get($"/api/runs/{id}")) <= seen + 1 && clock.Elapsed < TimeSpan.FromMinutes(2)) await Task.Delay(100);
        var now = await demo.Get($"/api/runs/{id}");
        Assert.Equal("running", now["state"]!.GetValue<string>());
        Assert.True(Points(now) > seen + 1);

        var (stopStatus, _) = await demo.Post($"/api/runs/{id}/stop", new { });
        Assert.Equal(200, stopStatus);
        JsonObject done;
        do { await Task.Delay(100); done = await demo.Get($"/api/runs/{id}"); } while (done["state"]!.GetValue<string>() == "running");
        Assert.Equal("cancelled", done["state"]!.GetValue<string>());
        var message = done["message"]!.GetValue<string>();
        var m = Regex.Match(message, @"^stopped after step (\d+) of 240; saved (.+checkpoint-(\d+))\. Run again with resume_from_checkpoint: true to continue from it\.$");
        Assert.True(m.Success, message);
        Assert.Equal(m.Groups[1].Value, m.Groups[3].Value);
        Assert.True(Directory.Exists(m.Groups[2].Value));
        // The status page says the same as `finetune status`: the step can be resumed.
        var train = (await demo.Get("/api/pipelines/identity"))["stages"]!.AsArray().Single(s => s!["name"]!.GetValue<string>() == "train")!;
        Assert.Contains($"checkpoint-{m.Groups[1].Value} (step {m.Groups[1].Value} of 240) can be resumed", train["reason"]!.GetValue<string>());

        // A board that starts again finds the run, with its events, from disk.
        var events = done["events"]!.AsArray().Count;
        demo.Restart();
        var again = await demo.Get($"/api/runs/{id}");
        Assert.Equal("cancelled", again["state"]!.GetValue<string>());
        Assert.Equal(message, again["message"]!.GetValue<string>());
        Assert.Equal(events, again["events"]!.AsArray().Count);
    }

    [Fact]
    public async Task ARunWhoseBoardDied_ReadsAsInterruptedAfterARestart()
    {
        using var demo = new DemoRoot();
        var dir = Path.Combine(demo.Root, "pipelines", "identity", ".finetune", "board", "runs");
        Directory.CreateDirectory(dir);
        // A process id above the kernel's pid_max: no process has it.
        File.WriteAllText(Path.Combine(dir, "20260101-000000-abcdef.json"), """
            {"id":"20260101-000000-abcdef","pipeline":"identity","stage_option":null,"force":false,"state":"running","stage":"train","pid":2147483600,
             "queued":"2026-01-01T00:00:00Z","started":"2026-01-01T00:00:01Z","events":[{"type":"state","state":"running","seq":1}]}
            """);
        demo.Restart();
        var run = await demo.Get("/api/runs/20260101-000000-abcdef");
        Assert.Equal("interrupted", run["state"]!.GetValue<string>());
        Assert.Equal("the board process (pid 2147483600) that ran it stopped; completed stages are in the cache, an interrupted train stage resumes with resume_from_checkpoint: true",
            run["message"]!.GetValue<string>());
    }

    [Fact]
    public async Task ABoardRun_WaitsForTheRunLockACliRunHolds()
    {
        using var demo = new DemoRoot();
        var cacheRoot = Path.Combine(demo.Root, "pipelines", "identity", ".finetune");
        string id;
        // The lock `finetune run` takes, held here as a CLI run in flight holds it.
        using (FineTune.Pipeline.Engine.RunLock.Acquire(cacheRoot, TimeSpan.FromSeconds(5), null, CancellationToken.None))
        {
            var (_, run) = await demo.Post("/api/runs", new { pipeline = "identity", stage = "register" });
            id = run["id"]!.GetValue<string>();
            var clock = Stopwatch.StartNew();
            JsonObject now;
            do { await Task.Delay(100); now = await demo.Get($"/api/runs/{id}"); }
            while (!now["events"]!.AsArray().Any(e => e!["type"]!.GetValue<string>() == "info") && clock.Elapsed < TimeSpan.FromSeconds(30));
            var info = now["events"]!.AsArray().First(e => e!["type"]!.GetValue<string>() == "info")!["line"]!.GetValue<string>();
            Assert.Matches(@"^waiting for another finetune run of this pipeline \(pid \d+ on .+ since .+ UTC\) to finish…$", info);
            Assert.Equal("running", now["state"]!.GetValue<string>());
            Assert.Null(now["stage"]); // no stage started while the lock is held
        }
        JsonObject done;
        do { await Task.Delay(100); done = await demo.Get($"/api/runs/{id}"); } while (done["state"]!.GetValue<string>() == "running");
        Assert.Equal("succeeded", done["state"]!.GetValue<string>());
    }

    private static int Points(JsonObject run) => run["events"]!.AsArray().Count(e => e!["type"]!.GetValue<string>() == "metrics");

    private static async Task<JsonObject> NextEvent(StreamReader reader, string type)
    {
        string? name = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) name = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal) && name == type) return JsonNode.Parse(line[6..])!.AsObject();
        }
        throw new InvalidOperationException($"the stream ended before a {type} event");
    }
}
