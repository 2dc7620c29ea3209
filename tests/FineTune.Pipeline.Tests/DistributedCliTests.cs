using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// `finetune run --nproc-per-node 2` as users run it: real rank processes of the built CLI on CPU, over loopback TCP,
/// against one process with the same global batch.
/// </summary>
public sealed class DistributedCliTests
{
    /// <summary>16 samples of different lengths; micro-batch 2 and <paramref name="accumulation"/> micro-batches per rank and step.</summary>
    static string Pipeline(TempDir dir, int accumulation, int maxSteps = 6, int saveSteps = 3, string extra = "")
    {
        dir.Write("data/identity.json", "[" + string.Join(", ", Enumerable.Range(0, 16).Select(i =>
            $"{{\"instruction\": \"{string.Concat(Enumerable.Repeat($"question {i} ", 1 + i % 3))}\", \"input\": \"\", \"output\": \"I am {{{{name}}}} number {i}\"}}")) + "]");
        return TestPipelines.Write(dir, TestPipelines.Scratch("dp") + $$"""
            stages:
              download: {}
              register: {}
              split:
                val_size: 0
              train:
                device: cpu
                learning_rate: 0.005
                max_steps: {{maxSteps}}
                save_steps: {{saveSteps}}
                lora_dropout: 0.1
                per_device_train_batch_size: 2
                gradient_accumulation_steps: {{accumulation}}
            {{extra}}
            """);
    }

    static string Adapter(TempDir dir) =>
        Directory.GetFiles(StageCache.Beside(dir.Path).CacheRoot, "adapter_model.safetensors", SearchOption.AllDirectories).Single();

    [Fact]
    public void Two_cpu_ranks_train_the_adapter_and_lock_of_one_process_with_the_same_global_batch()
    {
        using var one = new TempDir();
        Pipeline(one, accumulation: 2);
        var single = CliTests.Finetune("run", one.Path, "--stage", "train");
        Assert.True(single.Code == 0, single.Err);

        using var two = new TempDir();
        Pipeline(two, accumulation: 1, extra: "    zero_stage: 1");
        var parallel = CliTests.Finetune("run", two.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.True(parallel.Code == 0, parallel.Err);
        Assert.Contains("train: 2 rank(s) over tcp, global batch 2 × 1 × 2, ZeRO-1", parallel.Out);

        // Same fingerprints and output hashes (the lock records gradient_accumulation_steps 2, the global count), same bytes.
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, "pipeline.lock")), File.ReadAllText(Path.Combine(two.Path, "pipeline.lock")));
        Assert.Equal(File.ReadAllBytes(Adapter(one)), File.ReadAllBytes(Adapter(two)));
    }

    /// <summary>The train stage's output model (full fine-tuning): the model.safetensors beside train_results.json.</summary>
    static string TrainedModel(TempDir dir) =>
        Directory.GetFiles(StageCache.Beside(dir.Path).CacheRoot, "model.safetensors", SearchOption.AllDirectories)
            .Single(f => File.Exists(Path.Combine(Path.GetDirectoryName(f)!, "train_results.json")));

    [Fact]
    public void Zero_3_on_two_cpu_ranks_trains_the_model_and_lock_of_one_process()
    {
        // Freeze fine-tuning of every layer's MLP: the trained weights' gradients are products alone, which one process
        // accumulates as C + A·B and the ranks' reduce-scatter sums in the same order, so the bytes match. (Full fine-tuning
        // adds norm and embedding gradients row by row, which associate differently: DataParallelTests bound that at 1e-7.)
        const string freeze = "    finetuning_type: freeze\n    freeze_trainable_modules: mlp";
        using var one = new TempDir();
        Pipeline(one, accumulation: 2, maxSteps: 4, saveSteps: 2, extra: freeze);
        var single = CliTests.Finetune("run", one.Path, "--stage", "train");
        Assert.True(single.Code == 0, single.Err);

        using var two = new TempDir();
        Pipeline(two, accumulation: 1, maxSteps: 4, saveSteps: 2, extra: freeze + "\n    zero_stage: 3");
        var parallel = CliTests.Finetune("run", two.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.True(parallel.Code == 0, parallel.Err + parallel.Out);
        Assert.Contains("train: 2 rank(s) over tcp, global batch 2 × 1 × 2, ZeRO-3", parallel.Out);
        Assert.Matches(@"trainable parameters [\d.]+ MiB, gradients [\d.]+ MiB, optimizer states [\d.]+ MiB on this rank \(unsharded [\d.]+, [\d.]+, [\d.]+ MiB; ZeRO-3, rank 0 of 2\)", parallel.Out);
        // Checkpoints and the output model come from the gathered masters: the same lock and model bytes as one process.
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, "pipeline.lock")), File.ReadAllText(Path.Combine(two.Path, "pipeline.lock")));
        Assert.Equal(File.ReadAllBytes(TrainedModel(one)), File.ReadAllBytes(TrainedModel(two)));
    }

    [Fact]
    public void A_rank_killed_under_zero_3_ends_every_rank_at_the_next_gather()
    {
        using var dir = new TempDir();
        Pipeline(dir, accumulation: 1, maxSteps: 6, saveSteps: 2, extra: "    finetuning_type: freeze\n    freeze_trainable_modules: mlp\n    zero_stage: 3");
        // Rank 1 kills itself right after step 3 (checkpoint-2 written from both ranks' chunks); rank 0's next collective is
        // step 4's gather of layer 0's MLP.
        var killed = CliTests.Finetune(new Dictionary<string, string> { ["FINETUNE_FAULT_KILL"] = "1:3" }, "run", dir.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.Equal(137, killed.Code);
        Assert.Contains("error: stage train failed: rank 0: rank 1 closed its connection during the parameter all-gather of layer 0 in step 4 (it exited, crashed or was killed; its own output says why); stopping this rank.",
            killed.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        var checkpoints = Directory.GetDirectories(Path.Combine(dir.Path, ".finetune", "work", "train", "checkpoints")).Single();
        Assert.True(File.Exists(Path.Combine(checkpoints, "checkpoint-2", "model.safetensors")));
    }

    [Fact]
    public void Zero_3_of_lora_is_refused_naming_the_key_and_what_to_use()
    {
        using var dir = new TempDir();
        Pipeline(dir, accumulation: 1, maxSteps: 2, extra: "    zero_stage: 3");
        var run = CliTests.Finetune("run", dir.Path, "--stage", "train");
        Assert.Equal(2, run.Code);
        Assert.Contains("stages.train.zero_stage: 3 (parameters sharded, gathered per layer) shards the weights of finetuning_type full and freeze; " +
            "LoRA's adapters are small and its base stays whole on every rank: use zero_stage: 2 with lora.", run.Err);
        Assert.DoesNotContain("   at ", run.Err);
    }

    [Fact]
    public void Dpo_on_two_cpu_ranks_trains_the_adapter_and_lock_of_one_process()
    {
        // 8 preference pairs: the same questions, a chosen answer that names the bot and a rejected one that does not.
        static void Preference(TempDir dir, int accumulation, string extra)
        {
            Pipeline(dir, accumulation, maxSteps: 4, saveSteps: 2, extra: "    stage: dpo\n" + extra);
            dir.Write("data/dataset_info.json", """{"pref": {"file_name": "pref.json", "ranking": true, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}""");
            dir.Write("data/pref.json", "[" + string.Join(", ", Enumerable.Range(0, 8).Select(i =>
                $"{{\"instruction\": \"question {i}\", \"chosen\": \"I am Bot number {i}\", \"rejected\": \"{string.Concat(Enumerable.Repeat("no ", 1 + i % 3))}\"}}")) + "]");
            File.WriteAllText(Path.Combine(dir.Path, "pipeline.yaml"), File.ReadAllText(Path.Combine(dir.Path, "pipeline.yaml")).Replace("dataset: [identity]", "dataset: [pref]"));
        }
        using var one = new TempDir();
        Preference(one, 2, "");
        var single = CliTests.Finetune("run", one.Path, "--stage", "train");
        Assert.True(single.Code == 0, single.Err + single.Out);

        using var two = new TempDir();
        Preference(two, 1, "    zero_stage: 1");
        var parallel = CliTests.Finetune("run", two.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.True(parallel.Code == 0, parallel.Err + parallel.Out);
        Assert.Contains("train: 2 rank(s) over tcp, global batch 2 × 1 × 2, ZeRO-1", parallel.Out);
        Assert.Equal(File.ReadAllText(Path.Combine(one.Path, "pipeline.lock")), File.ReadAllText(Path.Combine(two.Path, "pipeline.lock")));
        Assert.Equal(File.ReadAllBytes(Adapter(one)), File.ReadAllBytes(Adapter(two)));
    }

    [Fact]
    public void A_rank_killed_mid_run_ends_every_rank_naming_it_and_the_last_checkpoint_resumes()
    {
        using var dir = new TempDir();
        Pipeline(dir, accumulation: 1, maxSteps: 8, saveSteps: 2);
        // FINETUNE_FAULT_KILL: rank 1 sends itself SIGKILL right after step 4, before step 5's gradient all-reduce.
        var killed = CliTests.Finetune(new Dictionary<string, string> { ["FINETUNE_FAULT_KILL"] = "1:4" }, "run", dir.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.Equal(137, killed.Code);
        var lines = killed.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // The launcher's line and rank 0's may come in either order: rank 0 prints as soon as it sees the closed
        // connection, the launcher at its next poll (both write to the one inherited stderr).
        Assert.Single(lines, l => System.Text.RegularExpressions.Regex.IsMatch(l, @"^finetune run: rank 1 \(pid \d+\) was killed by signal 9 \(SIGKILL: the OOM killer or kill -9\); stopping the other ranks\.$"));
        Assert.Contains("error: stage train failed: rank 0: rank 1 closed its connection during the gradient all-reduce of step 5 (it exited, crashed or was killed; its own output says why); stopping this rank.", lines);
        var checkpoints = Directory.GetDirectories(Path.Combine(dir.Path, ".finetune", "work", "train", "checkpoints")).Single();
        Assert.Equal(["checkpoint-2", "checkpoint-4"], Directory.GetDirectories(checkpoints).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.True(File.Exists(Path.Combine(checkpoints, "checkpoint-4", "optimizer.safetensors")));

        // One process with the same global batch resumes the two ranks' checkpoint (same fingerprint, same folder).
        var resumed = CliTests.Finetune("run", dir.Path, "--stage", "train", "stages.train.gradient_accumulation_steps=2", "stages.train.resume_from_checkpoint=true");
        Assert.True(resumed.Code == 0, resumed.Err);
        Assert.Contains($"Resumed from {Path.Combine(checkpoints, "checkpoint-4")} at step 4.", resumed.Out);
    }

    // sigintIgnored: the launcher starts as a background job of a non-interactive shell does (CI scripts, `cmd &`):
    // with SIGINT ignored, which its children inherit and .NET keeps (a SIGINT forwarded to them would change nothing).
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Sigterm_to_the_launcher_stops_every_rank_after_the_same_step_and_rank_0_saves_it(bool sigintIgnored)
    {
        using var dir = new TempDir();
        Pipeline(dir, accumulation: 1, maxSteps: 100000, saveSteps: 100000, extra: "    logging_steps: 1");
        string[] args = ["run", dir.Path, "--stage", "train", "--nproc-per-node", "2"];
        using var p = sigintIgnored ? StartWithSigintIgnored(args) : CliTests.Start(null, args);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        var tmp = Path.Combine(dir.Path, ".finetune", "tmp");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!(Directory.Exists(tmp) && Directory.EnumerateFiles(tmp, "trainer_log.jsonl", SearchOption.AllDirectories).Any(f => new FileInfo(f).Length > 0)))
        {
            if (p.HasExited) Assert.Fail("finetune exited before training: " + await stderr);
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), "training never started");
            await Task.Delay(20);
        }
        using (var kill = System.Diagnostics.Process.Start("kill", ["-TERM", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!)
            kill.WaitForExit();
        await Task.WhenAny(p.WaitForExitAsync(), Task.Delay(TimeSpan.FromMinutes(2)));
        if (!p.HasExited)
        {
            var tree = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("ps", "-eo pid,ppid,stat,etime,args") { RedirectStandardOutput = true })!;
            string processes = await tree.StandardOutput.ReadToEndAsync();
            p.Kill(entireProcessTree: true);
            Assert.Fail($"finetune was still running 2 minutes after SIGTERM; its stderr:\n{await stderr}\nprocesses then:\n{processes}");
        }
        // The launcher forwards it as SIGTERM (a SIGINT may reach the ranks ignored: see the next test); the step's host
        // all-reduce carries it to both ranks, which stop after the same step; the launcher exits as they do.
        var err = await stderr;
        Assert.Equal(143, p.ExitCode);
        var saved = System.Text.RegularExpressions.Regex.Match(err, @"^cancelled: stopped after step (\d+) of 100000; saved (.*checkpoint-\1)\. Run again", System.Text.RegularExpressions.RegexOptions.Multiline);
        Assert.True(saved.Success, err + await stdout);
        Assert.Contains($"cancelled: stopped after step {saved.Groups[1].Value} of 100000; saved by rank 0. Run again with resume_from_checkpoint: true to continue from it.", err);
        Assert.Equal(int.Parse(saved.Groups[1].Value), FineTune.Training.TrainerState.Load(saved.Groups[2].Value).GlobalStep);
    }

    // `trap "" INT; exec dotnet finetune.dll …`: the same process (exec keeps the pid the test signals), SIGINT ignored.
    static System.Diagnostics.Process StartWithSigintIgnored(string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add("trap '' INT; exec dotnet \"$@\"");
        psi.ArgumentList.Add("bash");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "finetune.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["NO_COLOR"] = "1";
        return System.Diagnostics.Process.Start(psi)!;
    }
}
