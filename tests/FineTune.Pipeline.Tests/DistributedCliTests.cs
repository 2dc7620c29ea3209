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
        return TestPipelines.Write(dir, $$"""
            name: dp
            model:
              source: scratch
              scratch:
                hidden_size: 32
            data:
              dataset_dir: data
              dataset: [identity]
              template: qwen3
              placeholders: {name: Bot, author: Team}
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

    [Fact]
    public void A_rank_killed_mid_run_ends_every_rank_naming_it_and_the_last_checkpoint_resumes()
    {
        using var dir = new TempDir();
        Pipeline(dir, accumulation: 1, maxSteps: 8, saveSteps: 2);
        // FINETUNE_FAULT_KILL: rank 1 sends itself SIGKILL right after step 4, before step 5's gradient all-reduce.
        var killed = CliTests.Finetune(new Dictionary<string, string> { ["FINETUNE_FAULT_KILL"] = "1:4" }, "run", dir.Path, "--stage", "train", "--nproc-per-node", "2");
        Assert.Equal(137, killed.Code);
        var lines = killed.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^finetune run: rank 1 \(pid \d+\) was killed by signal 9 \(SIGKILL: the OOM killer or kill -9\); stopping the other ranks\.$", lines[0]);
        Assert.Contains("error: stage train failed: rank 0: rank 1 closed its connection during the gradient all-reduce of step 5 (it exited, crashed or was killed; its own output says why); stopping this rank.", lines);
        var checkpoints = Directory.GetDirectories(Path.Combine(dir.Path, ".finetune", "work", "train", "checkpoints")).Single();
        Assert.Equal(["checkpoint-2", "checkpoint-4"], Directory.GetDirectories(checkpoints).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.True(File.Exists(Path.Combine(checkpoints, "checkpoint-4", "optimizer.safetensors")));

        // One process with the same global batch resumes the two ranks' checkpoint (same fingerprint, same folder).
        var resumed = CliTests.Finetune("run", dir.Path, "--stage", "train", "stages.train.gradient_accumulation_steps=2", "stages.train.resume_from_checkpoint=true");
        Assert.True(resumed.Code == 0, resumed.Err);
        Assert.Contains($"Resumed from {Path.Combine(checkpoints, "checkpoint-4")} at step 4.", resumed.Out);
    }
}
