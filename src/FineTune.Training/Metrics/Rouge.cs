namespace FineTune.Training.Metrics;

/// <summary>Precision, recall and F-score of one ROUGE variant, each in [0, 1].</summary>
public sealed record RougeScore(double Precision, double Recall, double F);

/// <summary>ROUGE-1, ROUGE-2 and ROUGE-L of one prediction against one reference.</summary>
public sealed record RougeScores(RougeScore Rouge1, RougeScore Rouge2, RougeScore RougeL);

/// <summary>
/// ROUGE as the <c>rouge</c>/<c>rouge_chinese</c> packages compute it by default (which is what
/// LLaMA-Factory reports): n-grams are counted as <b>sets</b> (each distinct n-gram once), and
///   ROUGE-N: p = |H ∩ R| / |H|, r = |H ∩ R| / |R|;
///   ROUGE-L: one LCS between the token sequences is reconstructed; l = distinct tokens on it,
///            p = l / distinct hypothesis tokens, r = l / distinct reference tokens;
///   F = 2·p·r / (p + r + 1e-8).
/// The whole text is one sentence (the packages split sentences on punctuation; FineTune does not).
/// An empty prediction or reference scores 0 everywhere, as LLaMA-Factory does.
/// </summary>
public static class Rouge
{
    public static RougeScores Score(IReadOnlyList<string> reference, IReadOnlyList<string> hypothesis)
    {
        if (reference.Count == 0 || hypothesis.Count == 0)
        {
            var zero = new RougeScore(0, 0, 0);
            return new RougeScores(zero, zero, zero);
        }
        return new RougeScores(RougeN(reference, hypothesis, 1), RougeN(reference, hypothesis, 2), RougeL(reference, hypothesis));
    }

    public static RougeScore RougeN(IReadOnlyList<string> reference, IReadOnlyList<string> hypothesis, int n)
    {
        var hyp = Bleu.NGramCounts(hypothesis, n).Keys.ToHashSet(StringComparer.Ordinal);
        var refs = Bleu.NGramCounts(reference, n).Keys.ToHashSet(StringComparer.Ordinal);
        int overlap = hyp.Count(refs.Contains);
        double p = hyp.Count == 0 ? 0 : (double)overlap / hyp.Count;
        double r = refs.Count == 0 ? 0 : (double)overlap / refs.Count;
        return new RougeScore(p, r, FScore(p, r));
    }

    public static RougeScore RougeL(IReadOnlyList<string> reference, IReadOnlyList<string> hypothesis)
    {
        var lcs = LongestCommonSubsequence(reference, hypothesis).ToHashSet(StringComparer.Ordinal);
        int m = reference.ToHashSet(StringComparer.Ordinal).Count;
        int n = hypothesis.ToHashSet(StringComparer.Ordinal).Count;
        double p = (double)lcs.Count / n, r = (double)lcs.Count / m;
        return new RougeScore(p, r, FScore(p, r));
    }

    static double FScore(double p, double r) => 2.0 * (p * r / (p + r + 1e-8));

    /// <summary>
    /// The LCS of x and y by the usual dynamic programme, walked back from the end: on a match take
    /// the token; otherwise step in x when that keeps a strictly longer LCS, else step in y.
    /// </summary>
    public static List<string> LongestCommonSubsequence(IReadOnlyList<string> x, IReadOnlyList<string> y)
    {
        var table = new int[x.Count + 1, y.Count + 1];
        for (int i = 1; i <= x.Count; i++)
            for (int j = 1; j <= y.Count; j++)
                table[i, j] = x[i - 1] == y[j - 1] ? table[i - 1, j - 1] + 1 : Math.Max(table[i - 1, j], table[i, j - 1]);
        var result = new List<string>();
        int a = x.Count, b = y.Count;
        while (a > 0 && b > 0)
        {
            if (x[a - 1] == y[b - 1]) { result.Add(x[a - 1]); a--; b--; }
            else if (table[a - 1, b] > table[a, b - 1]) a--;
            else b--;
        }
        result.Reverse();
        return result;
    }
}
