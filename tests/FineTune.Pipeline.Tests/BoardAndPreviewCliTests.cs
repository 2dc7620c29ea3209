using System.Diagnostics;
using FineTune.Models.Tests;

namespace FineTune.Pipeline.Tests;

/// <summary>`finetune data preview` (its code now in FineTune.Pipeline's DataPreview, shared with the board) and `finetune board`'s refusals, as users run them.</summary>
public sealed class BoardAndPreviewCliTests
{
    private static (int Code, string Out, string Err) Finetune(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        psi.Environment["FINETUNE_BOARD_TOKEN"] = null;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    [Fact]
    public void DataPreview_PrintsTheTemplatedSampleAndItsCounts()
    {
        using var dir = new TempDir();
        TestPipelines.Write(dir);
        var (code, stdout, err) = Finetune("data", "preview", dir.Path);
        stdout = System.Text.RegularExpressions.Regex.Replace(stdout, "\x1b\\[[0-9;]*m", ""); // Spectre's bold and colours
        Assert.Equal("", err);
        Assert.Equal(0, code);
        Assert.Contains("template qwen3", stdout);
        Assert.Contains("identity:identity.json#1", stdout);
        Assert.Contains("<|im_start|>user", stdout);
        Assert.Contains("I am Bot", stdout);
        Assert.EndsWith("1 of 1 samples shown.\n", stdout);

        (code, _, err) = Finetune("data", "preview", dir.Path, "--dataset", "alpaca");
        Assert.Equal(2, code);
        Assert.Equal("error: --dataset alpaca: the pipeline's data.dataset lists identity.\n", err);
    }

    [Fact]
    public void Board_RefusesAnOpenHostWithoutAToken()
    {
        using var dir = new TempDir();
        var (code, stdout, err) = Finetune("board", "--root", dir.Path, "--host", "0.0.0.0", "--port", "0");
        Assert.Equal(2, code);
        Assert.Equal("", stdout);
        Assert.Equal("error: --host 0.0.0.0: the board starts and stops runs and edits pipelines, so any host but 127.0.0.1 needs a token: " +
            "pass --token T (or set FINETUNE_BOARD_TOKEN) and open the board as http://HOST:PORT/?token=T.\n", err);
    }
}
