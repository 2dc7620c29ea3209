namespace FineTune.Training.Objectives;

/// <summary>
/// DPO and its reference-based relatives (<c>pref_loss: sigmoid | hinge | ipo</c>). Per pair, with policy π and
/// reference π_ref log-probs of the chosen (w) and rejected (l) answers,
///     z = (log π(w) − log π(l)) − (log π_ref(w) − log π_ref(l))
///     sigmoid: −(1−ε)·log σ(βz) − ε·log σ(−βz)      (DPO; ε = dpo_label_smoothing, cDPO)
///     hinge:   max(0, 1 − βz)                          (SLiC)
///     ipo:     (z − 1/(2β))²                           (IPO, eq. 17; log-probs averaged per token, policy and reference)
/// plus pref_ftx · (−log π(w)/|w|) (the chosen answer's per-token NLL), then the mean over pairs.
/// Rewards are β·(log π − log π_ref) of each answer, detached.
/// </summary>
public sealed class DpoObjective : IPreferenceObjective
{
    private readonly PreferenceSettings _settings;

    public DpoObjective(PreferenceSettings settings)
    {
        _settings = settings.Validated();
        if (!settings.UsesReference)
            throw new ArgumentException($"pref_loss {PreferenceSettings.Name(settings.PrefLoss)} has no reference model; use its own objective.", nameof(settings));
    }

    public string Name => "dpo/" + PreferenceSettings.Name(_settings.PrefLoss);
    public bool UsesReference => true;

    /// <summary>IPO compares length-averaged log-probs, as LLaMA-Factory feeds it; sigmoid and hinge compare sums.</summary>
    private bool LengthAveraged => _settings.PrefLoss == PreferenceLoss.Ipo;

    public ObjectiveResult Compute(PreferenceBatch batch)
    {
        var (pc, pr, nc, nr) = ObjectiveInputs.PolicyPairs(batch, Name);
        int n = pc.Length;
        var rc = ObjectiveInputs.Require(batch.ReferenceChosenLogps, nameof(batch.ReferenceChosenLogps), Name, n);
        var rr = ObjectiveInputs.Require(batch.ReferenceRejectedLogps, nameof(batch.ReferenceRejectedLogps), Name, n);

        double beta = _settings.PrefBeta, eps = _settings.DpoLabelSmoothing, ftx = _settings.PrefFtx;
        var gradChosen = new double[n];
        var gradRejected = new double[n];
        var chosenRewards = new double[n];
        var rejectedRewards = new double[n];
        var chosenLogps = new double[n];
        var rejectedLogps = new double[n];
        double total = 0;
        for (int i = 0; i < n; i++)
        {
            // scale: ∂(averaged log-prob)/∂(sum) — 1/tokens where IPO averages, 1 otherwise.
            double sc = LengthAveraged ? 1.0 / nc[i] : 1.0, sr = LengthAveraged ? 1.0 / nr[i] : 1.0;
            double wPolicy = pc[i] * sc, lPolicy = pr[i] * sr, wRef = rc[i] * sc, lRef = rr[i] * sr;
            double z = (wPolicy - lPolicy) - (wRef - lRef);

            double loss, dz; // the pair's loss and ∂loss/∂z
            switch (_settings.PrefLoss)
            {
                case PreferenceLoss.Sigmoid:
                    loss = -(1 - eps) * StableLog.LogSigmoid(beta * z) - eps * StableLog.LogSigmoid(-beta * z);
                    dz = -(1 - eps) * beta * StableLog.Sigmoid(-beta * z) + eps * beta * StableLog.Sigmoid(beta * z);
                    break;
                case PreferenceLoss.Hinge:
                    loss = Math.Max(0.0, 1 - beta * z);
                    dz = 1 - beta * z > 0 ? -beta : 0.0; // relu's gradient at 0 is 0, as torch's
                    break;
                default: // Ipo
                    double d = z - 1 / (2 * beta);
                    loss = d * d;
                    dz = 2 * d;
                    break;
            }
            // SFT on the chosen answer, per token: −Σ log π(w) / |w|.
            loss += ftx * (-pc[i] / nc[i]);

            total += loss;
            gradChosen[i] = (dz * sc - ftx / nc[i]) / n;
            gradRejected[i] = -dz * sr / n;
            chosenRewards[i] = beta * (wPolicy - wRef);
            rejectedRewards[i] = beta * (lPolicy - lRef);
            chosenLogps[i] = wPolicy;
            rejectedLogps[i] = lPolicy;
        }
        return new ObjectiveResult(total / n,
            new PolicyGradients { PolicyChosenLogps = gradChosen, PolicyRejectedLogps = gradRejected },
            PairwiseMetrics.Of(chosenRewards, rejectedRewards, chosenLogps, rejectedLogps));
    }
}
