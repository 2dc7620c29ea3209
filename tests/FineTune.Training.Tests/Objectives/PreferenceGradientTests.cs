using FineTune.Training.Objectives;

namespace FineTune.Training.Tests.Objectives;

/// <summary>
/// Every returned gradient against central finite differences of the returned loss, element by element, over inputs
/// away from kinks (hinge) so both sides of each difference see the same branch.
/// </summary>
public sealed class PreferenceGradientTests
{
    private static readonly double[] Pc = [-10, -20, -7.5, -3.2], Pr = [-12, -18, -9, -3], Nc = [5, 10, 4, 2], Nr = [6, 9, 3, 3],
        Rc = [-11, -19.5, -8, -3.5], Rr = [-11.5, -19, -8.2, -2.7];

    private static PreferenceBatch Pairs(double[] pc, double[] pr) => PreferenceBatch.Pairs(pc, pr, Nc, Nr, Rc, Rr);

    /// <summary>max_i |fd_i − g_i| / max_i |g_i|, the finite differences taken by (L(x+h) − L(x−h)) / 2h.</summary>
    private static double RelativeError(Func<double[], double> loss, double[] x, double[] gradient)
    {
        double worst = 0, scale = gradient.Max(Math.Abs);
        for (int i = 0; i < x.Length; i++)
        {
            double h = 1e-6 * Math.Max(Math.Abs(x[i]), 1e-2);
            var plus = (double[])x.Clone();
            var minus = (double[])x.Clone();
            plus[i] += h;
            minus[i] -= h;
            double fd = (loss(plus) - loss(minus)) / (2 * h);
            worst = Math.Max(worst, Math.Abs(fd - gradient[i]));
        }
        return worst / scale;
    }

    public static TheoryData<PreferenceLoss, double, double> PairLosses => new()
    {
        { PreferenceLoss.Sigmoid, 0.1, 0.0 },
        { PreferenceLoss.Sigmoid, 0.5, 0.3 },
        { PreferenceLoss.Hinge, 0.1, 0.0 },
        { PreferenceLoss.Ipo, 0.1, 0.0 },
        { PreferenceLoss.Orpo, 0.1, 0.0 },
        { PreferenceLoss.Simpo, 2.0, 0.0 },
    };

    [Theory]
    [MemberData(nameof(PairLosses))]
    public void Pair_gradients_equal_finite_differences(PreferenceLoss loss, double beta, double labelSmoothing)
    {
        foreach (double ftx in new[] { 0.0, 0.7 })
        {
            var settings = new PreferenceSettings { PrefLoss = loss, PrefBeta = beta, DpoLabelSmoothing = labelSmoothing, PrefFtx = ftx };
            var objective = PreferenceObjectives.Dpo(settings);
            var result = objective.Compute(Pairs(Pc, Pr));
            Assert.True(RelativeError(x => objective.Compute(Pairs(x, Pr)).Loss, Pc, result.Gradients.PolicyChosenLogps!) < 1e-6);
            Assert.True(RelativeError(x => objective.Compute(Pairs(Pc, x)).Loss, Pr, result.Gradients.PolicyRejectedLogps!) < 1e-6);
        }
    }

    [Fact]
    public void Orpo_gradients_hold_near_certain_answers_where_the_odds_use_expm1()
    {
        // Per-token averages −0.002 … −0.4: log(1 − eᵃ) on its log(−expm1(a)) branch.
        double[] pc = [-0.01, -0.3, -0.8], pr = [-0.004, -0.9, -0.05];
        double[] nc = [5, 3, 2], nr = [2, 3, 4];
        var objective = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = PreferenceLoss.Orpo, PrefBeta = 0.3 });
        var result = objective.Compute(PreferenceBatch.Pairs(pc, pr, nc, nr));
        Assert.True(RelativeError(x => objective.Compute(PreferenceBatch.Pairs(x, pr, nc, nr)).Loss, pc, result.Gradients.PolicyChosenLogps!) < 1e-6);
        Assert.True(RelativeError(x => objective.Compute(PreferenceBatch.Pairs(pc, x, nc, nr)).Loss, pr, result.Gradients.PolicyRejectedLogps!) < 1e-6);
    }

    // Tags D, U, D, U, D; KL sequences with policy − reference mean 0.24 > 0.
    private static readonly double[] Pt = [-9, -14, -20.5, -6, -11], Nt = [3, 4, 5, 2, 6], Rt = [-10, -12, -20, -6.4, -11.3],
        Pk = [-5.7, -7.1, -8.3, -4, -9], Rk = [-6, -8, -8, -4.2, -9.1];
    private static readonly bool[] Tags = [true, false, true, false, true];

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.4)]
    public void Kto_target_gradients_equal_finite_differences(double ftx)
    {
        var objective = PreferenceObjectives.Kto(new PreferenceSettings { PrefBeta = 0.5, PrefFtx = ftx, KtoChosenWeight = 1.3, KtoRejectedWeight = 0.7 });
        var result = objective.Compute(PreferenceBatch.Kto(Pt, Nt, Rt, Tags, Pk, Rk));
        Assert.True(RelativeError(x => objective.Compute(PreferenceBatch.Kto(x, Nt, Rt, Tags, Pk, Rk)).Loss, Pt, result.Gradients.PolicyTargetLogps!) < 1e-6);
    }

    [Fact]
    public void Kto_kl_gradient_is_zero_because_the_estimate_is_detached()
    {
        // Where the clamp holds (mean policy − reference of the KL sequences < 0) the loss does not move with them at all,
        // so finite differences are 0 too; elsewhere z₀ is a stop-gradient (TRL's .detach(), LLaMA-Factory's no_grad).
        var objective = PreferenceObjectives.Kto(new PreferenceSettings());
        double[] clampedKl = [-7, -9, -9, -5, -10];
        var clamped = objective.Compute(PreferenceBatch.Kto(Pt, Nt, Rt, Tags, clampedKl, Rk));
        Assert.Equal(0.0, clamped.Metrics["kl"]);
        Assert.Equal(new double[5], clamped.Gradients.PolicyKlLogps!);
        for (int i = 0; i < 5; i++)
        {
            var moved = (double[])clampedKl.Clone();
            moved[i] += 1e-3;
            Assert.Equal(clamped.Loss, objective.Compute(PreferenceBatch.Kto(Pt, Nt, Rt, Tags, moved, Rk)).Loss);
        }
        Assert.Equal(new double[5], objective.Compute(PreferenceBatch.Kto(Pt, Nt, Rt, Tags, Pk, Rk)).Gradients.PolicyKlLogps!);
    }

    [Fact]
    public void Reward_model_score_gradients_equal_finite_differences()
    {
        double[] chosen = [2.0, -1.0, 0.5, 3.3], rejected = [1.0, 1.0, 0.7, -2.2];
        var objective = PreferenceObjectives.RewardModel();
        var result = objective.Compute(PreferenceBatch.Rewards(chosen, rejected));
        Assert.True(RelativeError(x => objective.Compute(PreferenceBatch.Rewards(x, rejected)).Loss, chosen, result.Gradients.ChosenScores!) < 1e-6);
        Assert.True(RelativeError(x => objective.Compute(PreferenceBatch.Rewards(chosen, x)).Loss, rejected, result.Gradients.RejectedScores!) < 1e-6);
    }
}
