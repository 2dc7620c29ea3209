namespace FineTune.Training.Objectives;

/// <summary>
/// KTO (<c>stage: kto</c>, Ethayarajh et al. 2024, eq. 7 as TRL's KTOTrainer computes it) on unpaired answers, each
/// tagged desirable or undesirable. With r = log π(y) − log π_ref(y) (sums) and the KL estimate
///     z₀ = max(0, mean over the batch of (log π(y') − log π_ref(y')))     (y' a mismatched completion; detached)
/// an answer's loss is  λ_D·(1 − σ(β·(r − z₀)))  if desirable,  λ_U·(1 − σ(β·(z₀ − r)))  if undesirable
/// (λ = kto_chosen_weight / kto_rejected_weight), and the loss is their mean over all N answers. With pref_ftx > 0,
/// LLaMA-Factory adds  ftx · mean_D(−log π(y)/|y|) · N / N_D  (its "rescale"), and so does this.
/// Rewards are β·r. Metrics are means within each tag; <c>kl</c> is z₀. There is no <c>rewards/accuracies</c>:
/// unpaired answers have no pair to compare, and TRL logs none.
/// </summary>
public sealed class KtoObjective(PreferenceSettings settings) : IPreferenceObjective
{
    private readonly PreferenceSettings _settings = settings.Validated();

    public string Name => "kto";
    public bool UsesReference => true;

    public ObjectiveResult Compute(PreferenceBatch batch)
    {
        var policy = ObjectiveInputs.Require(batch.PolicyTargetLogps, nameof(batch.PolicyTargetLogps), Name);
        int n = policy.Length;
        var tokens = ObjectiveInputs.RequireTokens(batch.TargetTokens, nameof(batch.TargetTokens), Name, n);
        var reference = ObjectiveInputs.Require(batch.ReferenceTargetLogps, nameof(batch.ReferenceTargetLogps), Name, n);
        var desirable = ObjectiveInputs.Require(batch.KtoTags, nameof(batch.KtoTags), Name, n);
        var policyKl = ObjectiveInputs.Require(batch.PolicyKlLogps, nameof(batch.PolicyKlLogps), Name, n);
        var referenceKl = ObjectiveInputs.Require(batch.ReferenceKlLogps, nameof(batch.ReferenceKlLogps), Name, n);

        double beta = _settings.PrefBeta, ftx = _settings.PrefFtx;
        double kl = 0;
        for (int i = 0; i < n; i++) kl += policyKl[i] - referenceKl[i];
        kl = Math.Max(0.0, kl / n);

        int nDesirable = 0;
        foreach (bool d in desirable) if (d) nDesirable++;
        int nUndesirable = n - nDesirable;
        // LLaMA-Factory: losses.nanmean() + ftx · sft.nanmean() / N_D · N, only when there is a desirable answer.
        double ftxScale = nDesirable > 0 ? ftx * n / ((double)nDesirable * nDesirable) : 0.0;

        var grad = new double[n];
        double total = 0, sft = 0;
        double chosenReward = 0, rejectedReward = 0, chosenLogp = 0, rejectedLogp = 0;
        for (int i = 0; i < n; i++)
        {
            double r = policy[i] - reference[i];
            if (desirable[i])
            {
                double x = beta * (r - kl), s = StableLog.Sigmoid(x);
                total += _settings.KtoChosenWeight * (1 - s);
                // ∂/∂r of λ_D(1 − σ(x)) = −λ_D·β·σ(x)σ(−x); the SFT term adds −ftxScale/|y|.
                grad[i] = -_settings.KtoChosenWeight * beta * s * StableLog.Sigmoid(-x) / n - ftxScale / tokens[i];
                sft += -policy[i] / tokens[i];
                chosenReward += beta * r;
                chosenLogp += policy[i];
            }
            else
            {
                double x = beta * (kl - r), s = StableLog.Sigmoid(x);
                total += _settings.KtoRejectedWeight * (1 - s);
                grad[i] = _settings.KtoRejectedWeight * beta * s * StableLog.Sigmoid(-x) / n;
                rejectedReward += beta * r;
                rejectedLogp += policy[i];
            }
        }
        double loss = total / n + ftxScale * sft;

        var metrics = new OrderedDictionary<string, double>();
        if (nDesirable > 0)
        {
            metrics["rewards/chosen"] = chosenReward / nDesirable;
        }
        if (nUndesirable > 0)
        {
            metrics["rewards/rejected"] = rejectedReward / nUndesirable;
        }
        if (nDesirable > 0 && nUndesirable > 0)
            metrics["rewards/margins"] = chosenReward / nDesirable - rejectedReward / nUndesirable;
        if (nDesirable > 0) metrics["logps/chosen"] = chosenLogp / nDesirable;
        if (nUndesirable > 0) metrics["logps/rejected"] = rejectedLogp / nUndesirable;
        metrics["kl"] = kl;
        return new ObjectiveResult(loss,
            new PolicyGradients { PolicyTargetLogps = grad, PolicyKlLogps = new double[n] }, metrics);
    }
}
