using System.Diagnostics;
using System.Text.Json;
using FineTune.Cli.Commands;
using FineTune.Models.Tests;

namespace FineTune.Pipeline.Tests;

/// <summary>What the CLI prints: numbers as people write them, every metric, plain text when redirected, JSON on request.</summary>
public sealed class OutputTests
{
    [Fact]
    public void MetricsShowIntegersAsIntegersFloatsWithFourDigitsAndEveryMetric()
    {
        var metrics = new Dictionary<string, double>
        {
            ["vocab_size"] = 151936, ["lr"] = 0, ["eval_loss"] = 0.0908123, ["predict_bleu-4"] = 50.3, ["predict_rouge-l"] = 60.5,
            ["perplexity"] = 1.0923, ["tokens"] = 1234567, ["learning_rate"] = 5e-6,
        };
        Assert.Equal("eval_loss=0.09081, learning_rate=5e-06, lr=0, perplexity=1.092, predict_bleu-4=50.3, predict_rouge-l=60.5, tokens=1234567, vocab_size=151936",
            CliSupport.Metrics(metrics));
    }

    /// <summary>The CLI with stdout and stderr redirected (as in CI logs) and NO_COLOR unset.</summary>
    private static (int Code, string Out, string Err) Redirected(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("NO_COLOR");
        psi.Environment["TERM"] = "xterm-256color";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    [Fact]
    public void RedirectedOutputHasNoAnsiCodesAndNoHardWraps()
    {
        using var dir = new TempDir();
        var deep = Path.Combine(dir.Path, "a-folder-name-long-enough-that-the-path-passes-eighty-columns", "and-then-some-more");
        Directory.CreateDirectory(deep);
        using var inner = new TempDir();
        var file = TestPipelines.Write(inner);
        File.Copy(file, Path.Combine(deep, "pipeline.yaml"));
        Directory.CreateDirectory(Path.Combine(deep, "data"));
        foreach (var f in Directory.GetFiles(Path.Combine(inner.Path, "data"))) File.Copy(f, Path.Combine(deep, "data", Path.GetFileName(f)));
        var (code, stdout, err) = Redirected("validate", deep);
        Assert.Equal("", err);
        Assert.Equal(0, code);
        Assert.Equal($"{deep}/pipeline.yaml: valid (7 stages: download → register → split → train → eval → merge → export)\n", stdout);
    }

    [Fact]
    public void StatusJsonIsMachineReadable()
    {
        using var dir = new TempDir();
        TestPipelines.Write(dir);
        var (code, stdout, err) = Redirected("status", dir.Path, "--json");
        Assert.Equal("", err);
        Assert.Equal(0, code);
        using var json = JsonDocument.Parse(stdout);
        var stages = json.RootElement.GetProperty("stages").EnumerateArray().ToArray();
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], stages.Select(s => s.GetProperty("name").GetString()));
        Assert.All(stages, s => Assert.Equal("stale", s.GetProperty("state").GetString()));
        Assert.Equal("never ran (not in pipeline.lock)", stages[0].GetProperty("reason").GetString());
        Assert.Equal("fake", json.RootElement.GetProperty("pipeline").GetString());

        // run --json: the human lines go to stderr, stdout is the JSON alone (here a dry run with an override).
        (code, stdout, err) = Redirected("run", dir.Path, "stages.train.max_steps=5", "--dry-run", "--json");
        Assert.Equal(0, code);
        Assert.Contains("(dry run)", err);
        using var run = JsonDocument.Parse(stdout);
        Assert.Equal(["stages.train.max_steps=5"], run.RootElement.GetProperty("overrides").EnumerateArray().Select(o => o.GetString()));
        Assert.Equal(7, run.RootElement.GetProperty("stages").GetArrayLength());
    }
}
