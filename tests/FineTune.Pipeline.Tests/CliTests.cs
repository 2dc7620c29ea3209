using FineTune.Models.Tests;
using System.Diagnostics;

namespace FineTune.Pipeline.Tests;

/// <summary>The `finetune` executable as users run it.</summary>
public sealed class CliTests
{
    private static (int Code, string Out, string Err) Finetune(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    [Fact]
    public void ValidateReportsAllErrorsWithoutStackTraceAndExitsTwo()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("learning_rate: 0.005", "learning_rate: fast").Replace("template: qwen3", "templat: qwen3"));
        var (code, _, err) = Finetune("validate", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal(
            $"{file}:7:3: error: $.data.template: stage split with stage: sft needs data.template (e.g. qwen3, chatml, llama3)\n" +
            $"{file}:9:3: error: $.data.templat: unknown key 'templat' in data; did you mean 'template'?\n" +
            $"{file}:17:20: error: $.stages.train.learning_rate: expected a number in (0, 10], got 'fast'\n" +
            "3 error(s).\n", err);
    }

    [Fact]
    public void DamagedLockIsNoCrash_StatusIgnoresItAndCleanRefusesIt()
    {
        using var dir = new TempDir();
        TestPipelines.Write(dir);
        var lockPath = dir.Write("pipeline.lock", """{"version": 1, "stages": {"download": {"fingerprint": 5}}}""");

        var (code, stdout, err) = Finetune("status", dir.Path);
        Assert.Equal(0, code);
        Assert.Equal("", err);
        Assert.Contains("damaged", stdout); // the reason column says "no record to compare with (pipeline.lock is damaged and ignored)"

        Directory.CreateDirectory(dir.File(".finetune"));
        (code, _, err) = Finetune("clean", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal($"error: {lockPath}: \"stages.download.fingerprint\" is a number, expected a string; clean decides from the lock what to keep, " +
            "so it removed nothing: restore the lock (`git checkout pipeline.lock`) or run the pipeline to rewrite it, then clean again.\n", err);
    }

    [Fact]
    public void MissingPipelineIsAUserError()
    {
        var (code, _, err) = Finetune("status", "/nonexistent/pipe");
        Assert.Equal(2, code);
        Assert.Equal("error: /nonexistent/pipe: no such file or directory; pass a pipeline.yaml or the directory holding it.\n", err);
    }
    [Fact]
    public void DeeplyNestedPipelineIsAUserErrorNotAStackOverflow()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, "name: x\nmodel: " + new string('[', 100_000) + new string(']', 100_000) + "\n");
        var (code, _, err) = Finetune("validate", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal($"{file}:2:71: error: $: YAML nested deeper than 64 levels; a pipeline needs 4 (flatten the value here)\n1 error(s).\n", err);
    }

    [Fact]
    public void WrongTypesInEveryTopLevelBlockAreLocatedErrors()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, "name: [1]\nmodel: 5\ndata: [identity]\nstages: text\n");
        var (code, _, err) = Finetune("validate", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal(
            $"{file}:1:7: error: $.name: expected a string matching the pattern ^[A-Za-z0-9][A-Za-z0-9._-]*$, got a list\n" +
            $"{file}:2:8: error: $.model: expected a mapping, got '5'\n" +
            $"{file}:3:7: error: $.data: expected a mapping, got a list\n" +
            $"{file}:4:9: error: $.stages: expected a mapping, got 'text'\n" +
            "4 error(s).\n", err);
    }

    [Fact]
    public void TruncatedPipelineIsALocatedSyntaxError()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full[..TestPipelines.Full.IndexOf("placeholders: {name: Bot", StringComparison.Ordinal)] + "placeholders: {name: Bo");
        var (code, _, err) = Finetune("validate", dir.Path);
        Assert.Equal(2, code);
        Assert.Equal($"{file}:11:1: error: $: YAML syntax: While parsing a flow mapping, did not find expected ',' or '}}'.\n1 error(s).\n", err);
    }

    [Fact]
    public void DatasetThatIsNotUtf8StopsRegisterWithALocatedErrorAndExitTwo()
    {
        using var dir = new TempDir();
        var data = dir.Write("data/identity.json", "");
        File.WriteAllBytes(data, System.Text.Encoding.Latin1.GetBytes("[{\"instruction\": \"hi\", \"input\": \"\", \"output\": \"I am caf\u00e9\"}]"));
        TestPipelines.Write(dir);
        var (code, _, err) = Finetune("run", dir.Path, "--stage", "register");
        Assert.Equal(2, code);
        Assert.Contains($"{data}: record 1 (line 1): byte 0xE9 at offset 55 (line 1, column 56) is not UTF-8: save the file as UTF-8", err);
        Assert.DoesNotContain("   at ", err);
    }
}
