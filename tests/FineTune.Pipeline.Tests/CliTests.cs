using FineTune.Models.Tests;
using System.Diagnostics;

namespace FineTune.Pipeline.Tests;

/// <summary>The `finetune` executable as users run it.</summary>
public sealed class CliTests
{
    private static Process Start(params string[] args) => Start(null, args);

    internal static Process Start(IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        return Process.Start(psi)!;
    }

    internal static (int Code, string Out, string Err) Finetune(params string[] args) => Finetune(null, args);

    internal static (int Code, string Out, string Err) Finetune(IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        using var p = Start(environment, args);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    [Fact]
    public void PerKernelDecodeColumnsInTheEnvironmentLeaveTheCudaBackendUsable()
    {
        // CudaBackend's static initializer parses FINETUNE_DECODE_COLUMNS; a per-kernel item once met a kernel list not yet
        // initialized and every CUDA run crashed. Without a GPU the run ends in the located "no CUDA driver" error.
        var (_, _, err) = Finetune(new Dictionary<string, string> { ["FINETUNE_DECODE_COLUMNS"] = "gemv_norm_set=2,gemv_residual=3" },
            "bench", "--device", "cuda", "--shape", "qwen3-0.6b", "--steps", "1", "--warmup", "0", "--matmul-size", "0");
        Assert.DoesNotContain("TypeInitializationException", err);
        Assert.DoesNotContain("Unhandled exception", err);
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
    public void TrainingWithCheckpointingAutoPrintsThePlanItChose()
    {
        using var dir = new TempDir();
        // On the CPU auto keeps every layer unless max_memory is set; the one-layer model fits 1 MiB with its layer kept.
        ResumeTests.WritePipeline(dir, ResumeTests.Yaml.Replace("train: {device: cpu,", "train: {device: cpu, gradient_checkpointing: auto, max_memory: 1MiB,"));
        var (code, stdout, stderr) = Finetune("run", dir.Path);
        Assert.True(code == 0, stderr);
        var line = Assert.Single((stdout + stderr).Split('\n'), l => l.Contains("checkpointing auto: keeping", StringComparison.Ordinal));
        Assert.Matches(@"^\s*train: checkpointing auto: keeping 1/1 layers at \d+ tokens, est\. peak 0\.\d MiB of a 1\.0 MiB budget$", line);
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

    [Fact]
    public void A_failing_eval_gate_exits_three_naming_metric_value_and_bound_and_writes_the_step_summary()
    {
        using var dir = new TempDir();
        // Ten samples: the split keeps one for validation, which eval scores.
        dir.Write("data/identity.json", "[" + string.Join(", ", Enumerable.Range(0, 10).Select(i => $"{{\"instruction\": \"q{i}\", \"input\": \"\", \"output\": \"I am {{{{name}}}} {i}\"}}")) + "]");
        TestPipelines.Write(dir, TestPipelines.Full.Replace("    max_new_tokens: 16\n", "    max_new_tokens: 16\n    require: {eval_loss: \"< 0.0001\"}\n"));
        var summary = dir.File("summary.md");
        var (code, _, err) = Finetune(new Dictionary<string, string> { ["GITHUB_STEP_SUMMARY"] = summary }, "run", dir.Path, "--stage", "eval");
        Assert.Equal(3, code);
        var evalLoss = FineTune.Pipeline.Engine.LockFile.Read(Path.Combine(dir.Path, "pipeline.lock")).Stages["eval"].Metrics["eval_loss"];
        var value = evalLoss.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal($"gate failed: eval_loss = {value}, required < 0.0001 (stages.eval.require.eval_loss)\n" +
            "the stages after it did not run; the metrics are in pipeline.lock (`finetune metrics show`).\n", err);
        var md = File.ReadAllText(summary);
        Assert.StartsWith("### FineTune: fake — gate failed\n\n| stage | state | why | metrics |\n|---|---|---|---|\n| download | ran (", md);
        Assert.Contains($"| eval | eval_loss | {FineTune.Cli.Commands.ExperimentTable.Number(evalLoss)} | < 0.0001 | **FAIL** |\n", md);

        // Loosening the bound re-checks the locked metrics: exit 0, nothing re-runs.
        File.WriteAllText(Path.Combine(dir.Path, "pipeline.yaml"), File.ReadAllText(Path.Combine(dir.Path, "pipeline.yaml")).Replace("< 0.0001", "< 1000"));
        (code, var stdout, err) = Finetune(new Dictionary<string, string> { ["GITHUB_STEP_SUMMARY"] = summary }, "run", dir.Path, "--stage", "eval");
        Assert.Equal("", err);
        Assert.Equal(0, code);
        Assert.DoesNotContain(" ran (", stdout);
        Assert.EndsWith($"| eval | eval_loss | {FineTune.Cli.Commands.ExperimentTable.Number(evalLoss)} | < 1000 | pass |\n\n", File.ReadAllText(summary));

        var (showCode, show, _) = Finetune("metrics", "show", dir.Path, "--md");
        Assert.Equal(0, showCode);
        Assert.Contains($"| eval | eval_loss | {FineTune.Cli.Commands.ExperimentTable.Number(evalLoss)} |\n", show);
        Assert.StartsWith("| stage | metric | value |\n|---|---|---|\n| download |", show);
    }

    [Fact]
    public void A_second_clone_pointed_at_a_shared_cache_runs_no_stage_and_gc_lists_what_no_lock_references()
    {
        using var root = new TempDir();
        var env = new Dictionary<string, string> { ["FINETUNE_CACHE"] = root.File("shared") };
        string Clone(string name)
        {
            root.Write($"{name}/data/identity.json", "[" + string.Join(", ", Enumerable.Range(0, 10).Select(i => $"{{\"instruction\": \"q{i}\", \"input\": \"\", \"output\": \"I am {{{{name}}}} {i}\"}}")) + "]");
            root.Write($"{name}/data/dataset_info.json", """{"identity": {"file_name": "identity.json"}}""");
            root.Write($"{name}/pipeline.yaml", TestPipelines.Full);
            return root.File(name);
        }
        var (a, b) = (Clone("a"), Clone("b"));
        var (code, _, err) = Finetune(env, "run", a);
        Assert.Equal((0, ""), (code, err));
        (code, var stdout, err) = Finetune(env, "run", b);
        Assert.Equal((0, ""), (code, err));
        foreach (var stage in new[] { "download", "register", "split", "train", "eval", "merge", "export" })
            Assert.Contains($"  {stage,-9} up to date (output reused from the cache)\n", stdout);
        Assert.DoesNotContain(" ran (", stdout);
        Assert.Equal(File.ReadAllText(Path.Combine(a, "pipeline.lock")), File.ReadAllText(Path.Combine(b, "pipeline.lock")));

        // b moves on; a's lock still holds the old train…export entries, so gc of b alone would remove exactly those four.
        File.WriteAllText(Path.Combine(b, "pipeline.yaml"), TestPipelines.Full.Replace("learning_rate: 0.005", "learning_rate: 0.001"));
        Assert.Equal(0, Finetune(env, "run", b).Code);
        (code, stdout, err) = Finetune(env, "gc", a, b);
        Assert.Equal((0, "", "removed 0 cache entries, 0 bytes; kept 11.\n"), (code, err, stdout));
        (code, stdout, _) = Finetune(env, "gc", b, "--dry-run");
        Assert.Equal(0, code);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(5, lines.Length);
        Assert.All(lines[..4], l => Assert.Matches($@"^would remove [0-9a-f]{{12}} \((train|eval|merge|export), [0-9,]+ bytes\) from {System.Text.RegularExpressions.Regex.Escape(root.File("shared"))}$", l));
        Assert.Matches(@"^would remove 4 cache entries, [0-9,]+ bytes; kept 7\.$", lines[4]);
        Assert.Equal(11, Directory.GetDirectories(Path.Combine(root.File("shared"), "cache")).Length);
    }
}
