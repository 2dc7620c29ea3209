using FineTune.Training.Objectives;

namespace FineTune.Training.Tests.Objectives;

/// <summary>The metrics under TRL's names, in their order, with values worked out by hand.</summary>
public sealed class PreferenceMetricsTests
{
    [Fact]
    public void Dpo_logs_trls_reward_and_logp_means()
    {
        // Rewards β·(π − π_ref), β = 0.5: chosen (−10+11)·0.5 = 0.5, (−20+19)·0.5 = −0.5, (−4+6)·0.5 = 1;
        // rejected (−12+11)·0.5 = −0.5, (−18+19)·0.5 = 0.5, (−5+5)·0.5 = 0. Accurate: pairs 0 and 2.
        var batch = PreferenceBatch.Pairs([-10, -20, -4], [-12, -18, -5], [5, 10, 2], [6, 9, 3], [-11, -19, -6], [-11, -19, -5]);
        var metrics = PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = 0.5 }).Compute(batch).Metrics;
        Assert.Equal(["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"], metrics.Keys);
        Assert.Equal(1.0 / 3, metrics["rewards/chosen"], 15);
        Assert.Equal(0.0, metrics["rewards/rejected"], 15);
        Assert.Equal(2.0 / 3, metrics["rewards/accuracies"], 15);
        Assert.Equal(1.0 / 3, metrics["rewards/margins"], 15);
        Assert.Equal(-34.0 / 3, metrics["logps/chosen"], 13);
        Assert.Equal(-35.0 / 3, metrics["logps/rejected"], 13);
    }

    [Fact]
    public void Orpo_rewards_are_beta_times_per_token_logps_and_it_adds_its_two_terms()
    {
        var batch = PreferenceBatch.Pairs([-3, -2], [-9, -1], [4, 2], [3, 4]); // a = −0.75, −1; b = −3, −0.25
        var metrics = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Orpo, PrefBeta = 0.2 }).Compute(batch).Metrics;
        Assert.Equal(["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "sft_loss", "odds_ratio_loss"], metrics.Keys);
        Assert.Equal(0.2 * (-0.875), metrics["rewards/chosen"], 15);
        Assert.Equal(0.2 * (-1.625), metrics["rewards/rejected"], 15);
        Assert.Equal(0.5, metrics["rewards/accuracies"], 15);
        Assert.Equal(-0.875, metrics["logps/chosen"], 15);
        Assert.Equal(0.875, metrics["sft_loss"], 15);
    }

    [Fact]
    public void Kto_means_rewards_within_each_tag_and_logs_kl()
    {
        // β = 0.1; r = 1 (D), −2 (U), −0.5 (D); KL: policy − reference = 0.3, 0.9, −0.3 → 0.3.
        var batch = PreferenceBatch.Kto([-9, -14, -20.5], [3, 4, 5], [-10, -12, -20], [true, false, true], [-5.7, -7.1, -8.3], [-6, -8, -8]);
        var metrics = PreferenceObjectives.Kto(new PreferenceSettings()).Compute(batch).Metrics;
        Assert.Equal(["rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl"], metrics.Keys);
        Assert.Equal(0.025, metrics["rewards/chosen"], 15);
        Assert.Equal(-0.2, metrics["rewards/rejected"], 15);
        Assert.Equal(0.225, metrics["rewards/margins"], 15);
        Assert.Equal(-14.75, metrics["logps/chosen"], 15);
        Assert.Equal(-14.0, metrics["logps/rejected"], 15);
        Assert.Equal(0.3, metrics["kl"], 14);
    }

    [Fact]
    public void Kto_with_only_desirable_answers_logs_no_rejected_means()
    {
        var batch = PreferenceBatch.Kto([-9, -20.5], [3, 5], [-10, -20], [true, true], [-6, -8], [-6, -8]);
        var metrics = PreferenceObjectives.Kto(new PreferenceSettings()).Compute(batch).Metrics;
        Assert.Equal(["rewards/chosen", "logps/chosen", "kl"], metrics.Keys);
    }

    [Fact]
    public void Reward_model_logs_accuracy_only()
    {
        var metrics = PreferenceObjectives.RewardModel().Compute(PreferenceBatch.Rewards([1, 2], [0, 3])).Metrics;
        Assert.Equal(["accuracy"], metrics.Keys);
        Assert.Equal(0.5, metrics["accuracy"]);
    }
}
