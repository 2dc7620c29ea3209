using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using FineTune.Models.Tests;

namespace FineTune.Board.Tests;

/// <summary>
/// A temp checkout holding a copy of pipelines/identity (its pipeline.yaml, edited as a test needs, and the committed
/// pipeline.lock) and of data/, committed to a fresh git repository, with a board on a free loopback port over it.
/// </summary>
public sealed class DemoRoot : IDisposable
{
    private readonly TempDir _dir = new();

    public DemoRoot(Func<string, string>? edit = null, string? token = null)
    {
        var repo = NodeFixtures.RepoRoot;
        var yaml = File.ReadAllText(Path.Combine(repo, "pipelines", "identity", "pipeline.yaml"));
        // The board tests run on the CPU, whatever the machine has.
        Assert.Contains("device: auto", yaml);
        yaml = yaml.Replace("device: auto", "device: cpu");
        PipelineFile = _dir.Write("pipelines/identity/pipeline.yaml", edit is null ? yaml : edit(yaml));
        File.Copy(Path.Combine(repo, "pipelines", "identity", "pipeline.lock"), Path.Combine(Root, "pipelines", "identity", "pipeline.lock"));
        foreach (var f in Directory.EnumerateFiles(Path.Combine(repo, "data")))
            File.Copy(f, _dir.File("data/" + Path.GetFileName(f)).Also(p => Directory.CreateDirectory(Path.GetDirectoryName(p)!)));
        File.WriteAllText(_dir.File(".gitignore"), ".finetune/\n");
        Git("init", "-q");
        Commit("the demo");
        Token = token;
        Board = new BoardServer(new BoardOptions { Root = Root, Port = 0, Token = token, Device = "cpu" });
        Address = Board.Start();
        Client = NewClient();
    }

    public string Root => _dir.Path;
    public string PipelineFile { get; }
    public string LockFile => Path.Combine(Root, "pipelines", "identity", "pipeline.lock");
    public string? Token { get; }
    public BoardServer Board { get; private set; }
    public string Address { get; private set; }
    public HttpClient Client { get; private set; }

    public HttpClient NewClient()
    {
        var c = new HttpClient { BaseAddress = new Uri(Address), Timeout = TimeSpan.FromMinutes(5) };
        if (Token is not null) c.DefaultRequestHeaders.Authorization = new("Bearer", Token);
        var csrf = c.GetFromJsonAsync<JsonObject>("/api/session").Result!["csrf"]!.GetValue<string>();
        c.DefaultRequestHeaders.Add(BoardServer.CsrfHeader, csrf);
        return c;
    }

    /// <summary>Stops the board and starts a new one on the same root (what a restart of `finetune board` does).</summary>
    public void Restart()
    {
        Client.Dispose();
        Board.Dispose();
        Board = new BoardServer(new BoardOptions { Root = Root, Port = 0, Token = Token, Device = "cpu" });
        Address = Board.Start();
        Client = NewClient();
    }

    public void Commit(string message)
    {
        Git("add", "-A");
        Git("-c", "user.email=board@test", "-c", "user.name=board test", "commit", "-q", "-m", message);
    }

    public string Git(params string[] args)
    {
        var psi = new ProcessStartInfo("git") { WorkingDirectory = Root, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd();
        var error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"git {string.Join(' ', args)}: {error}");
        return output;
    }

    public async Task<JsonObject> Get(string path) => (await Client.GetFromJsonAsync<JsonObject>(path))!;

    public async Task<(int Status, JsonObject Body)> Post(string path, object body)
    {
        using var r = await Client.PostAsJsonAsync(path, body);
        return ((int)r.StatusCode, (await r.Content.ReadFromJsonAsync<JsonObject>())!);
    }

    /// <summary>Starts a run through the board and waits until it is done; returns its summary.</summary>
    public async Task<JsonObject> RunToEnd(object request)
    {
        var (status, run) = await Post("/api/runs", request);
        Assert.Equal(200, status);
        var id = run["id"]!.GetValue<string>();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromMinutes(5))
        {
            var now = await Get($"/api/runs/{id}");
            if (now["state"]!.GetValue<string>() is not ("queued" or "running")) return now;
            await Task.Delay(100);
        }
        throw new TimeoutException($"run {id} did not finish");
    }

    public void Dispose()
    {
        Client.Dispose();
        Board.Dispose();
        _dir.Dispose();
    }
}

internal static class Fluent
{
    public static T Also<T>(this T value, Action<T> action)
    {
        action(value);
        return value;
    }
}
