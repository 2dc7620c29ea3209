using FineTune.Training.Objectives;

namespace FineTune.Training.Tests.Objectives;

/// <summary>
/// Loss values against the papers' formulas written out here in plain double math (log(1 + eˣ), 1/(1 + e⁻ˣ)), not
/// through the code under test. Log-probs are sums over the response tokens; counts are the tokens.
/// </summary>
public sealed class PreferenceLossValueTests
{
    // Two pairs: policy chosen/rejected sums, their token counts, reference sums.
    private static readonly double[] Pc = [-10, -20], Pr = [-12, -18], Nc = [5, 10], Nr = [6, 9], Rc = [-11, -19], Rr = [-11, -19];

    private static PreferenceBatch TwoPairs() => PreferenceBatch.Pairs(Pc, Pr, Nc, Nr, Rc, Rr);
    private static double NegLogSigmoid(double x) => Math.Log(1 + Math.Exp(-x));
    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    [Fact]
    public void Dpo_sigmoid_is_the_mean_of_minus_log_sigmoid_of_beta_times_the_log_ratio_margin()
    {
        // pair 0: z = (−10 + 12) − (−11 + 11) = 2; pair 1: z = (−20 + 18) − 0 = −2; β = 0.1
        double expected = (NegLogSigmoid(0.2) + NegLogSigmoid(-0.2)) / 2;
        var result = PreferenceObjectives.Dpo(new PreferenceSettings()).Compute(TwoPairs());
        Assert.Equal(expected, result.Loss, 14);
        Assert.Equal(0.698138869, result.Loss, 9); // (0.598138869 + 0.798138869) / 2 by calculator
    }

    [Fact]
    public void Dpo_label_smoothing_mixes_in_the_flipped_label_with_weight_epsilon()
    {
        // cDPO: −(1−ε)·log σ(βz) − ε·log σ(−βz), ε = 0.2, β = 0.5
        var settings = new PreferenceSettings { PrefBeta = 0.5, DpoLabelSmoothing = 0.2 };
        double Pair(double z) => 0.8 * NegLogSigmoid(0.5 * z) + 0.2 * NegLogSigmoid(-0.5 * z);
        double expected = (Pair(2) + Pair(-2)) / 2;
        Assert.Equal(expected, PreferenceObjectives.Dpo(settings).Compute(TwoPairs()).Loss, 14);
    }

    [Fact]
    public void Pref_ftx_adds_the_chosen_answers_per_token_nll()
    {
        // + ftx · (−Σ log π(w) / |w|): 0.5 · (10/5) and 0.5 · (20/10)
        var settings = new PreferenceSettings { PrefFtx = 0.5 };
        double expected = (NegLogSigmoid(0.2) + 0.5 * 2 + NegLogSigmoid(-0.2) + 0.5 * 2) / 2;
        Assert.Equal(expected, PreferenceObjectives.Dpo(settings).Compute(TwoPairs()).Loss, 14);
    }

    [Fact]
    public void Hinge_is_relu_of_one_minus_beta_z_and_zero_past_the_margin()
    {
        // β = 1: pair 0 max(0, 1 − 2) = 0, pair 1 max(0, 1 + 2) = 3
        var result = PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = 1, PrefLoss = PreferenceLoss.Hinge }).Compute(TwoPairs());
        Assert.Equal(1.5, result.Loss, 15);
        Assert.Equal(0.0, result.Gradients.PolicyChosenLogps![0]);
        Assert.Equal(-0.5, result.Gradients.PolicyChosenLogps![1], 15); // −β / N
    }

    [Fact]
    public void Ipo_squares_the_distance_of_the_per_token_margin_from_one_over_two_beta()
    {
        // Averaged per token, policy and reference alike.
        double z0 = (-10.0 / 5 - -12.0 / 6) - (-11.0 / 5 - -11.0 / 6);
        double z1 = (-20.0 / 10 - -18.0 / 9) - (-19.0 / 10 - -19.0 / 9);
        double expected = (Math.Pow(z0 - 1 / 0.2, 2) + Math.Pow(z1 - 1 / 0.2, 2)) / 2;
        var result = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Ipo }).Compute(TwoPairs());
        Assert.Equal(expected, result.Loss, 12);
        // rewards/chosen: mean of β·(a − a_ref) = 0.1 · ((−2 + 2.2) + (−2 + 1.9)) / 2
        Assert.Equal(0.005, result.Metrics["rewards/chosen"], 14);
    }

    [Fact]
    public void Orpo_is_the_chosen_nll_plus_beta_times_minus_log_sigmoid_of_the_log_odds_ratio()
    {
        // a, b: per-token averages; log odds = log(eᵃ/(1−eᵃ)) − log(eᵇ/(1−eᵇ)).
        double Pair(double a, double b)
        {
            double logOdds = Math.Log(Math.Exp(a) / (1 - Math.Exp(a))) - Math.Log(Math.Exp(b) / (1 - Math.Exp(b)));
            return -a + 0.1 * NegLogSigmoid(logOdds);
        }
        double expected = (Pair(-2, -2) + Pair(-2, -2)) / 2; // −10/5, −12/6; −20/10, −18/9
        var result = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Orpo }).Compute(TwoPairs());
        Assert.Equal(expected, result.Loss, 14);
        Assert.Equal(2 + 0.1 * Math.Log(2), result.Loss, 14); // equal odds: −log σ(0) = log 2
    }

    [Fact]
    public void Orpo_with_unequal_answers_matches_the_odds_written_out()
    {
        double a = -3.0 / 4, b = -9.0 / 3, beta = 0.25;
        double logOdds = Math.Log(Math.Exp(a) / (1 - Math.Exp(a))) - Math.Log(Math.Exp(b) / (1 - Math.Exp(b)));
        double expected = -a + beta * NegLogSigmoid(logOdds);
        var batch = PreferenceBatch.Pairs([-3], [-9], [4], [3]);
        var result = PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = beta, PrefLoss = PreferenceLoss.Orpo }).Compute(batch);
        Assert.Equal(expected, result.Loss, 14);
        Assert.Equal(NegLogSigmoid(logOdds), result.Metrics["odds_ratio_loss"], 14);
        Assert.Equal(0.75, result.Metrics["sft_loss"], 15);
    }

    [Fact]
    public void Orpo_stays_finite_when_the_model_is_certain_of_the_chosen_answer()
    {
        // a = 0: log(1 − e⁰) = −∞ (torch gives inf); the odds clamp a to −1e−6.
        double clamped = -1e-6, b = -1.0;
        double logOdds = (0 - b) - (Math.Log(-(Math.Exp(clamped) - 1)) - Math.Log(1 - Math.Exp(b)));
        var result = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Orpo })
            .Compute(PreferenceBatch.Pairs([0], [-2], [3], [2]));
        Assert.Equal(0.1 * NegLogSigmoid(logOdds), result.Loss, 9);
        Assert.True(double.IsFinite(result.Gradients.PolicyChosenLogps![0]));
    }

    [Fact]
    public void Simpo_subtracts_gamma_from_the_beta_scaled_per_token_margin()
    {
        // −log σ(β(a − b) − γ), β = 2, γ = 0.5; pair 0: a − b = −2 + 2 = 0; pair 1: −2 + 2 = 0
        var settings = new PreferenceSettings { PrefBeta = 2, PrefLoss = PreferenceLoss.Simpo };
        Assert.Equal(NegLogSigmoid(-0.5), PreferenceObjectives.Dpo(settings).Compute(TwoPairs()).Loss, 14);
        var uneven = PreferenceBatch.Pairs([-3], [-9], [4], [3]); // a − b = −0.75 + 3 = 2.25
        Assert.Equal(NegLogSigmoid(2 * 2.25 - 0.5), PreferenceObjectives.Dpo(settings).Compute(uneven).Loss, 14);
    }

    [Fact]
    public void Kto_weights_desirable_and_undesirable_answers_around_the_kl_estimate()
    {
        // Tags D, U, D. r = policy − reference: 1, −2, −0.5. KL sequences: policy − reference = 0.3, 0.9, −0.3 → z₀ = 0.3.
        var batch = PreferenceBatch.Kto([-9, -14, -20.5], [3, 4, 5], [-10, -12, -20], [true, false, true],
            [-5.7, -7.1, -8.3], [-6, -8, -8]);
        var settings = new PreferenceSettings { PrefBeta = 0.5, KtoChosenWeight = 1.5, KtoRejectedWeight = 0.8 };
        double z0 = 0.3;
        double expected = (1.5 * (1 - Sigmoid(0.5 * (1 - z0))) + 0.8 * (1 - Sigmoid(0.5 * (z0 - -2))) + 1.5 * (1 - Sigmoid(0.5 * (-0.5 - z0)))) / 3;
        var result = PreferenceObjectives.Kto(settings).Compute(batch);
        Assert.Equal(expected, result.Loss, 13);
        Assert.Equal(z0, result.Metrics["kl"], 13);
    }

    [Fact]
    public void Kto_clamps_a_negative_kl_estimate_at_zero()
    {
        // KL sequences: policy − reference = −1, −3 → mean −2 → z₀ = 0.
        var batch = PreferenceBatch.Kto([-9, -14], [3, 4], [-10, -12], [true, false], [-7, -9], [-6, -6]);
        double expected = ((1 - Sigmoid(0.1 * 1)) + (1 - Sigmoid(0.1 * 2))) / 2;
        var result = PreferenceObjectives.Kto(new PreferenceSettings()).Compute(batch);
        Assert.Equal(expected, result.Loss, 14);
        Assert.Equal(0.0, result.Metrics["kl"]);
    }

    [Fact]
    public void Kto_ftx_is_rescaled_by_the_batch_over_the_desirable_count_as_llamafactory_does()
    {
        // ftx · mean_D(−log π/|y|) / N_D · N: desirable answers 0 and 2 of 3: mean(9/3, 20.5/5) = 3.55; × 3 / 2.
        var batch = PreferenceBatch.Kto([-9, -14, -20.5], [3, 4, 5], [-10, -12, -20], [true, false, true],
            [-6, -8, -8], [-6, -8, -8]);
        var plain = PreferenceObjectives.Kto(new PreferenceSettings()).Compute(batch).Loss;
        var withFtx = PreferenceObjectives.Kto(new PreferenceSettings { PrefFtx = 0.2 }).Compute(batch).Loss;
        Assert.Equal(0.2 * 3.55 * 3 / 2, withFtx - plain, 13);
    }

    [Fact]
    public void Reward_model_loss_is_minus_log_sigmoid_of_the_score_difference()
    {
        var result = PreferenceObjectives.RewardModel().Compute(PreferenceBatch.Rewards([2.0, -1.0, 0.5], [1.0, 1.0, 0.5]));
        Assert.Equal((NegLogSigmoid(1) + NegLogSigmoid(-2) + Math.Log(2)) / 3, result.Loss, 14);
        Assert.Equal(1.0 / 3, result.Metrics["accuracy"], 15); // the tie does not count
    }

    [Fact]
    public void Extreme_margins_give_exact_losses_instead_of_overflow()
    {
        // βz = ±1000: −log σ(1000) = e⁻¹⁰⁰⁰ ≈ 0, −log σ(−1000) = 1000 + log(1 + e⁻¹⁰⁰⁰) = 1000.
        var batch = PreferenceBatch.Pairs([0, -10000], [-10000, 0], [1, 1], [1, 1], [0, 0], [0, 0]);
        var result = PreferenceObjectives.Dpo(new PreferenceSettings()).Compute(batch);
        Assert.Equal(500.0, result.Loss, 12);
        Assert.Equal([0.0, -0.05], result.Gradients.PolicyChosenLogps!); // −β·σ(−βz)/N
    }

    [Fact]
    public void The_mean_over_a_step_equals_the_mean_of_equal_micro_batches()
    {
        // Accumulation: two micro-batches of 2 pairs equal one step of 4 pairs (losses and gradients halve).
        double[] pc = [-10, -20, -7, -15], pr = [-12, -18, -9, -14], nc = [5, 10, 4, 6], nr = [6, 9, 3, 8], rc = [-11, -19, -8, -15], rr = [-11, -19, -8.5, -13];
        var objective = PreferenceObjectives.Dpo(new PreferenceSettings { PrefFtx = 0.3 });
        var all = objective.Compute(PreferenceBatch.Pairs(pc, pr, nc, nr, rc, rr));
        var first = objective.Compute(PreferenceBatch.Pairs(pc[..2], pr[..2], nc[..2], nr[..2], rc[..2], rr[..2]));
        var second = objective.Compute(PreferenceBatch.Pairs(pc[2..], pr[2..], nc[2..], nr[2..], rc[2..], rr[2..]));
        Assert.Equal((first.Loss + second.Loss) / 2, all.Loss, 14);
        Assert.Equal(first.Gradients.PolicyChosenLogps![1] / 2, all.Gradients.PolicyChosenLogps![1], 15);
        Assert.Equal(second.Gradients.PolicyRejectedLogps![0] / 2, all.Gradients.PolicyRejectedLogps![2], 15);
    }
}
