namespace FineTune.Training.Objectives;

/// <summary>
/// ORPO (<c>pref_loss: orpo</c>, Hong et al. 2024), reference-free. With the per-token averaged log-probs
/// a = log π(w)/|w| and b = log π(l)/|l| (each ≤ 0), the log odds ratio is
///     r = (a − b) − (log(1 − eᵃ) − log(1 − eᵇ))
/// and a pair's loss is  −a + β·(−log σ(r))  (+ pref_ftx·(−a), which LLaMA-Factory adds on top), then the mean.
/// a and b are clamped to ≤ <see cref="StableLog.MaxOddsLogp"/> inside the odds only (see there).
/// Rewards are β·a and β·b, as LLaMA-Factory logs them; <c>sft_loss</c> and <c>odds_ratio_loss</c> are the two terms.
/// </summary>
public sealed class OrpoObjective(PreferenceSettings settings) : IPreferenceObjective
{
    private readonly PreferenceSettings _settings = settings.Validated();

    public string Name => "dpo/orpo";
    public bool UsesReference => false;

    public ObjectiveResult Compute(PreferenceBatch batch)
    {
        var (pc, pr, nc, nr) = ObjectiveInputs.PolicyPairs(batch, Name);
        int n = pc.Length;

        double beta = _settings.PrefBeta, ftx = _settings.PrefFtx;
        var gradChosen = new double[n];
        var gradRejected = new double[n];
        var chosenRewards = new double[n];
        var rejectedRewards = new double[n];
        var chosenLogps = new double[n];
        var rejectedLogps = new double[n];
        double total = 0, sftTotal = 0, oddsTotal = 0;
        for (int i = 0; i < n; i++)
        {
            double a = pc[i] / nc[i], b = pr[i] / nr[i];
            double ac = Math.Min(a, StableLog.MaxOddsLogp), bc = Math.Min(b, StableLog.MaxOddsLogp);
            double r = (a - b) - (StableLog.Log1mExp(ac) - StableLog.Log1mExp(bc));
            // ∂r/∂a = 1 − d log(1−eᵃ)/da where a is below the clamp, 1 where the clamp holds a (its gradient is 0).
            double drda = 1 - (a < StableLog.MaxOddsLogp ? StableLog.Log1mExpDerivative(a) : 0.0);
            double drdb = -1 + (b < StableLog.MaxOddsLogp ? StableLog.Log1mExpDerivative(b) : 0.0);

            double sft = -a, odds = -StableLog.LogSigmoid(r);
            total += sft + beta * odds + ftx * sft;
            sftTotal += sft;
            oddsTotal += odds;

            double dOdds = -StableLog.Sigmoid(-r); // ∂(−log σ(r))/∂r
            double da = -1 - ftx + beta * dOdds * drda, db = beta * dOdds * drdb;
            gradChosen[i] = da / nc[i] / n;
            gradRejected[i] = db / nr[i] / n;
            chosenRewards[i] = beta * a;
            rejectedRewards[i] = beta * b;
            chosenLogps[i] = a;
            rejectedLogps[i] = b;
        }
        var metrics = PairwiseMetrics.Of(chosenRewards, rejectedRewards, chosenLogps, rejectedLogps);
        metrics["sft_loss"] = sftTotal / n;
        // The odds-ratio term itself; LLaMA-Factory logs (loss − sft_loss)/β, the same number unless pref_ftx > 0.
        metrics["odds_ratio_loss"] = oddsTotal / n;
        return new ObjectiveResult(total / n,
            new PolicyGradients { PolicyChosenLogps = gradChosen, PolicyRejectedLogps = gradRejected }, metrics);
    }
}
