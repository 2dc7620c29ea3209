namespace FineTune.Training.Objectives;

/// <summary>The reward metrics TRL's DPOTrainer logs for pairs, each a mean over the pairs.</summary>
internal static class PairwiseMetrics
{
    public static OrderedDictionary<string, double> Of(double[] chosenRewards, double[] rejectedRewards, double[] chosenLogps, double[] rejectedLogps)
    {
        int n = chosenRewards.Length;
        double chosen = 0, rejected = 0, accurate = 0, margin = 0, logpChosen = 0, logpRejected = 0;
        for (int i = 0; i < n; i++)
        {
            chosen += chosenRewards[i];
            rejected += rejectedRewards[i];
            if (chosenRewards[i] > rejectedRewards[i]) accurate++; // strictly, as TRL: a tie is not accurate
            margin += chosenRewards[i] - rejectedRewards[i];
            logpChosen += chosenLogps[i];
            logpRejected += rejectedLogps[i];
        }
        return new()
        {
            ["rewards/chosen"] = chosen / n,
            ["rewards/rejected"] = rejected / n,
            ["rewards/accuracies"] = accurate / n,
            ["rewards/margins"] = margin / n,
            ["logps/chosen"] = logpChosen / n,
            ["logps/rejected"] = logpRejected / n,
        };
    }
}
