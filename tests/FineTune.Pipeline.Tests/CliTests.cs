using FineTune.Models.Tests;
using System.Diagnostics;

namespace FineTune.Pipeline.Tests;

/// <summary>The `finetune` executable as users run it.</summary>
public sealed class CliTests
{
    private static Process Start(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        return Process.Start(psi)!;
    }

    internal static (int Code, string Out, string Err) Finetune(params string[] args)
    {
        using var p = Start(args);
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
    public void DagAndStageOptionSpeakStageNames()
    {
        using var dir = new TempDir();
        var yaml = TestPipelines.Full
            .Replace("    max_steps: 10\n", "    max_steps: 10\n  dpo:\n    kind: train\n    from: train\n")
            .Replace("  eval:\n", "  eval:\n    from: dpo\n").Replace("  merge:\n", "  merge: {from: dpo}\n");
        var file = TestPipelines.Write(dir, yaml);
        var (code, stdout, err) = Finetune("dag", dir.Path);
        Assert.Equal("", err);
        Assert.Equal(0, code);
        Assert.Contains("dpo (train) ← download, split, train", stdout);
        Assert.Contains("eval ← download, split, dpo", stdout);

        (code, _, err) = Finetune("run", dir.Path, "--stage", "dpp", "--dry-run");
        Assert.Equal(2, code);
        Assert.Equal($"error: --stage dpp: no such stage in {file}; expected one of download, register, split, train, dpo, eval, merge, export; did you mean 'dpo'?\n", err);
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

    [Fact]
    public void ValidateChecksLoraTargetAgainstTheModelsModules()
    {
        using var dir = new TempDir();
        var file = ResumeTests.WritePipeline(dir, ResumeTests.Yaml.Replace("train: {device: cpu,", "train: {lora_target: q_prj, device: cpu,"));
        var (code, _, err) = Finetune("validate", dir.Path);
        Assert.Equal(2, code);
        int line = Array.FindIndex(File.ReadAllLines(file), l => l.Contains("q_prj")) + 1;
        int col = File.ReadAllLines(file)[line - 1].IndexOf("q_prj", StringComparison.Ordinal) + 1;
        Assert.Equal($"{file}:{line}:{col}: error: $.stages.train.lora_target[0]: 'q_prj' is not a linear module of this qwen3 model; did you mean 'q_proj'? " +
            "(expected all, or some of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)\n1 error(s).\n", err);
    }

    /// <summary>What `timeout`, CI runners and `docker stop` send.</summary>
    private static void Sigterm(Process p)
    {
        using var kill = Process.Start("kill", ["-TERM", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!;
        kill.WaitForExit();
        Assert.Equal(0, kill.ExitCode);
    }

    [Fact]
    public async Task SigtermDuringTrainingSavesTheStepAsACheckpointLikeCtrlC()
    {
        using var dir = new TempDir();
        ResumeTests.WritePipeline(dir, ResumeTests.Yaml.Replace("max_steps: 6", "max_steps: 100000").Replace("save_steps: 2", "save_steps: 100000"));
        using var p = Start("run", dir.Path);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        // Wait until the train stage has logged a step (logging_steps: 1) into its output in .finetune/tmp.
        var tmp = Path.Combine(dir.Path, ".finetune", "tmp");
        var clock = Stopwatch.StartNew();
        while (!(Directory.Exists(tmp) && Directory.EnumerateFiles(tmp, "trainer_log.jsonl", SearchOption.AllDirectories).Any(f => new FileInfo(f).Length > 0)))
        {
            if (p.HasExited) Assert.Fail("finetune exited before training: " + await stderr);
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), "training never started");
            await Task.Delay(20);
        }
        Sigterm(p);
        await Task.WhenAny(p.WaitForExitAsync(), Task.Delay(TimeSpan.FromMinutes(2)));
        if (!p.HasExited)
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("finetune was still running 2 minutes after SIGTERM");
        }

        var err = await stderr;
        Assert.Equal(143, p.ExitCode);
        var m = System.Text.RegularExpressions.Regex.Match(err,
            @"^cancelled: stopped after step (\d+) of 100000; saved (.*checkpoint-\1)\. Run again with resume_from_checkpoint: true to continue from it\.$",
            System.Text.RegularExpressions.RegexOptions.Multiline);
        Assert.True(m.Success, err + await stdout);
        var checkpoint = m.Groups[2].Value;
        Assert.Equal(int.Parse(m.Groups[1].Value), FineTune.Training.TrainerState.Load(checkpoint).GlobalStep);
        Assert.Equal([Path.GetFileName(checkpoint)], Directory.GetDirectories(Path.GetDirectoryName(checkpoint)!).Select(Path.GetFileName));
        // Nothing half-written became a cached output.
        Assert.Empty(Directory.EnumerateDirectories(tmp));
    }

    [Fact]
    public void DeviceAutoOnAMachineWithoutCudaSaysSoOncePerProcess()
    {
        using var dir = new TempDir();
        ResumeTests.WritePipeline(dir, ResumeTests.Yaml.Replace("train: {device: cpu,", "train: {device: auto,").Replace("val_size: 0,", "val_size: 1,")
            + "\n  eval: {device: auto, predict_with_generate: false}\n");
        var (code, stdout, stderr) = Finetune("run", dir.Path);
        Assert.True(code == 0, stderr);
        // train and eval each resolve auto; the notice comes once.
        Assert.Single((stdout + stderr).Split('\n'), l => l.Contains("device: auto → cpu (", StringComparison.Ordinal));

        var model = dir.File("model");
        FineTune.Models.ScratchModel.Generate(new FineTune.Models.ScratchModelSpec
        {
            HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16,
        }, model);
        var chat = Finetune("chat", "--model", model, "--prompt", "hi", "--max-new-tokens", "2", "--device", "auto");
        Assert.True(chat.Code == 0, chat.Err);
        Assert.Single(chat.Err.Split('\n'), l => l.StartsWith("device: auto → cpu (", StringComparison.Ordinal));
        var forwardTokens = dir.Write("tokens.json", "[[1, 2, 3]]");
        var forward = Finetune("forward", "--model", model, "--tokens", forwardTokens, "--out", dir.File("f.safetensors"), "--device", "auto");
        Assert.True(forward.Code == 0, forward.Err);
        Assert.Single(forward.Err.Split('\n'), l => l.StartsWith("device: auto → cpu (", StringComparison.Ordinal));
    }
}
