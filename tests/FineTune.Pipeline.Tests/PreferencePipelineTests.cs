using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using FineTune.Training;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// pipelines/preference as it is committed (on the CPU): the demo model SFT'd on identity, then DPO on identity_pref from
/// the SFT adapter. The DPO stage must end preferring the chosen answers: rewards/accuracies ≥ 0.8 and a positive margin
/// on its last train log line, and the merged model must carry the DPO-trained adapter.
/// </summary>
public sealed class PreferencePipelineTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Dpo_after_sft_learns_to_prefer_the_chosen_answers()
    {
        string yaml = File.ReadAllText(Path.Combine(ServeTests.RepoRoot, "pipelines", "preference", "pipeline.yaml"));
        Assert.Contains("device: auto", yaml);
        yaml = yaml.Replace("device: auto", "device: cpu").Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(ServeTests.RepoRoot, "data")}\n");
        string file = _dir.Write("preference/pipeline.yaml", yaml);
        var report = new PipelineRunner(StageRegistry.CreateDefault()).Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        var dpo = report.Stages.Single(s => s.Name == "dpo");
        var log = TrainerLog.Read(Path.Combine(dpo.OutputDirectory!, TrainerLog.FileName)).Where(e => e.Loss is not null).ToList();
        Assert.Equal(20, log.Count);
        // Step 1 scores the policy as the reference (sft's result): DPO's loss is log 2 and every reward 0.
        Assert.Equal(Math.Round(Math.Log(2), 4), log[0].Loss);
        Assert.Equal(0.0, log[0].Metric("rewards/margins"));
        var last = log[^1];
        Assert.True(last.Metric("rewards/accuracies") >= 0.8, string.Join(" ", log.Select(e => e.Metric("rewards/accuracies"))));
        Assert.True(last.Metric("rewards/margins") > 0, string.Join(" ", log.Select(e => e.Metric("rewards/margins"))));
        Assert.True(last.Metric("rewards/chosen") > last.Metric("rewards/rejected"));
        Assert.InRange(dpo.Metrics!["eval_rewards/accuracies"], 0.0, 1.0);
        // DPO continued sft's adapter, so the merge folds one adapter that holds both trainings.
        var merge = report.Stages.Single(s => s.Name == "merge");
        Assert.True(File.Exists(Path.Combine(merge.OutputDirectory!, "model.safetensors")));
    }

    [Fact]
    public void A_reward_model_trains_on_pairs_and_the_eval_stage_scores_it_as_training_did()
    {
        string yaml = $$"""
            name: rm
            model:
              source: scratch
              scratch: {architecture: qwen3, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4,
                        num_key_value_heads: 2, head_dim: 16, tie_word_embeddings: false, seed: 0}
            data:
              dataset_dir: {{Path.Combine(ServeTests.RepoRoot, "data")}}
              dataset: [identity_pref]
              template: qwen3
              placeholders: {name: FineTune Assistant, author: the FineTune team}
            stages:
              download: {}
              register: {}
              split: {val_size: 8, seed: 42, cutoff_len: 128}
              train: {stage: rm, device: cpu, finetuning_type: lora, lora_rank: 8, learning_rate: 5.0e-3, num_train_epochs: 3,
                      per_device_train_batch_size: 8, lr_scheduler_type: constant, logging_steps: 1, eval_steps: 15, seed: 42,
                      gradient_checkpointing: false}
              eval: {device: cpu, per_device_eval_batch_size: 4}
            """;
        string file = _dir.Write("rm/pipeline.yaml", yaml);
        var report = new PipelineRunner(StageRegistry.CreateDefault()).Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        var train = report.Stages.Single(s => s.Name == "train");
        var eval = report.Stages.Single(s => s.Name == "eval");
        Assert.Equal(15, train.Metrics!["global_step"]);
        Assert.True(File.Exists(Path.Combine(train.OutputDirectory!, FineTune.Models.CausalLM.ValueHeadFileName)));
        var log = TrainerLog.Read(Path.Combine(train.OutputDirectory!, TrainerLog.FileName)).Where(e => e.Loss is not null).ToList();
        Assert.True(log[^1].Loss < log[0].Loss, $"{log[0].Loss} → {log[^1].Loss}");
        // The eval stage loads the adapter with its value head and scores the same 8 pairs as the train stage's last evaluation.
        Assert.Equal(train.Metrics["eval_accuracy"], eval.Metrics!["eval_accuracy"], 4);
        Assert.Equal(train.Metrics["eval_loss"], eval.Metrics["eval_loss"], 4);
        Assert.Equal(8, eval.Metrics["eval_samples"]);
    }
}
