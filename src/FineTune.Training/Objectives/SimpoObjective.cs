namespace FineTune.Training.Objectives;

/// <summary>
/// SimPO (<c>pref_loss: simpo</c>, Meng et al. 2024), reference-free and length-normalised. With
/// a = log π(w)/|w| and b = log π(l)/|l|, a pair's loss is
///     −log σ(β·(a − b) − γ)        (γ = simpo_gamma; LLaMA-Factory writes it β·((a − b) − γ/β))
/// plus pref_ftx·(−a), then the mean over pairs. Rewards are β·a and β·b, as LLaMA-Factory logs them.
/// </summary>
public sealed class SimpoObjective(PreferenceSettings settings) : IPreferenceObjective
{
    private readonly PreferenceSettings _settings = settings.Validated();

    public string Name => "dpo/simpo";
    public bool UsesReference => false;

    public ObjectiveResult Compute(PreferenceBatch batch)
    {
        var (pc, pr, nc, nr) = ObjectiveInputs.PolicyPairs(batch, Name);
        int n = pc.Length;

        double beta = _settings.PrefBeta, gamma = _settings.SimpoGamma, ftx = _settings.PrefFtx;
        var gradChosen = new double[n];
        var gradRejected = new double[n];
        var chosenRewards = new double[n];
        var rejectedRewards = new double[n];
        var chosenLogps = new double[n];
        var rejectedLogps = new double[n];
        double total = 0;
        for (int i = 0; i < n; i++)
        {
            double a = pc[i] / nc[i], b = pr[i] / nr[i];
            double x = beta * (a - b) - gamma;
            total += -StableLog.LogSigmoid(x) + ftx * -a;
            double dx = -StableLog.Sigmoid(-x); // ∂(−log σ(x))/∂x
            gradChosen[i] = (dx * beta - ftx) / nc[i] / n;
            gradRejected[i] = -dx * beta / nr[i] / n;
            chosenRewards[i] = beta * a;
            rejectedRewards[i] = beta * b;
            chosenLogps[i] = a;
            rejectedLogps[i] = b;
        }
        return new ObjectiveResult(total / n,
            new PolicyGradients { PolicyChosenLogps = gradChosen, PolicyRejectedLogps = gradRejected },
            PairwiseMetrics.Of(chosenRewards, rejectedRewards, chosenLogps, rejectedLogps));
    }
}
