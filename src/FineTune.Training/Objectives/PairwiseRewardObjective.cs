namespace FineTune.Training.Objectives;

/// <summary>
/// The reward model's pairwise loss (<c>stage: rm</c>, Bradley–Terry as in InstructGPT): with the value head's
/// scores s_w and s_l at the last token of the chosen and rejected sequences, a pair's loss is
/// −log σ(s_w − s_l) = softplus(s_l − s_w), and the loss is the mean. <c>accuracy</c> is the share of pairs with
/// s_w &gt; s_l, strictly, as LLaMA-Factory's ComputeAccuracy counts it.
/// </summary>
public sealed class PairwiseRewardObjective : IPreferenceObjective
{
    public string Name => "rm";
    public bool UsesReference => false;

    public ObjectiveResult Compute(PreferenceBatch batch)
    {
        var chosen = ObjectiveInputs.Require(batch.ChosenScores, nameof(batch.ChosenScores), Name);
        int n = chosen.Length;
        var rejected = ObjectiveInputs.Require(batch.RejectedScores, nameof(batch.RejectedScores), Name, n);

        var gradChosen = new double[n];
        var gradRejected = new double[n];
        double total = 0, accurate = 0;
        for (int i = 0; i < n; i++)
        {
            double d = chosen[i] - rejected[i];
            total += -StableLog.LogSigmoid(d);
            double g = StableLog.Sigmoid(-d) / n; // ∂(−log σ(d))/∂d = −σ(−d)
            gradChosen[i] = -g;
            gradRejected[i] = g;
            if (d > 0) accurate++;
        }
        return new ObjectiveResult(total / n,
            new PolicyGradients { ChosenScores = gradChosen, RejectedScores = gradRejected },
            new OrderedDictionary<string, double> { ["accuracy"] = accurate / n });
    }
}
