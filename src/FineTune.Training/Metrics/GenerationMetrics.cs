namespace FineTune.Training.Metrics;

/// <summary>Corpus averages in percent, rounded like LLaMA-Factory (each sample's score ×100 rounded to 4 places, then the mean).</summary>
public sealed record GenerationMetrics(double Bleu4, double Rouge1, double Rouge2, double RougeL, int Count)
{
    /// <summary>Scores predictions against labels (same order), segmenting both with <see cref="MetricSegmenter"/>.</summary>
    public static GenerationMetrics Compute(IReadOnlyList<string> labels, IReadOnlyList<string> predictions)
    {
        if (labels.Count != predictions.Count)
            throw new ArgumentException($"{labels.Count} labels but {predictions.Count} predictions; they must pair one to one.");
        if (labels.Count == 0) return new GenerationMetrics(0, 0, 0, 0, 0);
        double b = 0, r1 = 0, r2 = 0, rl = 0;
        for (int i = 0; i < labels.Count; i++)
        {
            var reference = MetricSegmenter.Split(labels[i]);
            var hypothesis = MetricSegmenter.Split(predictions[i]);
            var rouge = Rouge.Score(reference, hypothesis);
            b += Percent(Bleu.SentenceBleu4(reference, hypothesis));
            r1 += Percent(rouge.Rouge1.F);
            r2 += Percent(rouge.Rouge2.F);
            rl += Percent(rouge.RougeL.F);
        }
        int n = labels.Count;
        return new GenerationMetrics(b / n, r1 / n, r2 / n, rl / n, n);
    }

    static double Percent(double v) => Math.Round(v * 100, 4, MidpointRounding.ToEven);

    /// <summary>The metric names LLaMA-Factory writes into predict_results.json.</summary>
    public IReadOnlyDictionary<string, double> ToDictionary(string prefix = "predict_") => new Dictionary<string, double>
    {
        [prefix + "bleu-4"] = Bleu4,
        [prefix + "rouge-1"] = Rouge1,
        [prefix + "rouge-2"] = Rouge2,
        [prefix + "rouge-l"] = RougeL,
    };
}
