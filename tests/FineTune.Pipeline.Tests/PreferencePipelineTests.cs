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
}
