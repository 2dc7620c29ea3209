namespace FineTune.Training.Metrics;

/// <summary>
/// Sentence-level BLEU-4 as nltk's <c>sentence_bleu</c> computes it with one reference, uniform
/// weights (¼ each) and <c>SmoothingFunction().method3</c> (the NIST geometric smoothing) — the
/// setting LLaMA-Factory reports as "bleu-4".
///
///   pₙ = Σ_g min(count_hyp(g), count_ref(g)) / max(1, number of hypothesis n-grams)
///   method3: the k-th precision whose numerator is 0 becomes 1 / (2ᵏ · denominator), k = 1, 2, …
///   BP = 1 if c > r; 0 if c = 0; else exp(1 − r/c)   (c, r: hypothesis and reference lengths)
///   BLEU = BP · exp(Σₙ ¼ · ln pₙ), and 0 when no unigram matches at all.
/// </summary>
public static class Bleu
{
    public static double SentenceBleu4(IReadOnlyList<string> reference, IReadOnlyList<string> hypothesis)
    {
        const int maxN = 4;
        var numerators = new long[maxN];
        var denominators = new long[maxN];
        for (int n = 1; n <= maxN; n++)
        {
            var hypCounts = NGramCounts(hypothesis, n);
            var refCounts = NGramCounts(reference, n);
            long clipped = 0, total = 0;
            foreach (var (gram, count) in hypCounts)
            {
                total += count;
                if (refCounts.TryGetValue(gram, out int refCount)) clipped += Math.Min(count, refCount);
            }
            numerators[n - 1] = clipped;
            denominators[n - 1] = Math.Max(1, total);
        }
        if (numerators[0] == 0) return 0.0;

        int c = hypothesis.Count, r = reference.Count;
        double bp = c > r ? 1.0 : c == 0 ? 0.0 : Math.Exp(1.0 - (double)r / c);

        double logSum = 0;
        int k = 1;
        for (int i = 0; i < maxN; i++)
        {
            double p = numerators[i] == 0
                ? 1.0 / (Math.Pow(2, k++) * denominators[i])
                : (double)numerators[i] / denominators[i];
            logSum += 0.25 * Math.Log(p);
        }
        return bp * Math.Exp(logSum);
    }

    internal static Dictionary<string, int> NGramCounts(IReadOnlyList<string> tokens, int n)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i + n <= tokens.Count; i++)
        {
            // U+0001 cannot occur inside a token produced by MetricSegmenter, so the joined key is unambiguous.
            string key = string.Join('\u0001', tokens.Skip(i).Take(n));
            counts[key] = counts.GetValueOrDefault(key) + 1;
        }
        return counts;
    }
}
