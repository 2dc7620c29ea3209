namespace FineTune.Pipeline.Validation;

/// <summary>Closest candidate by edit distance, for "did you mean …?" hints.</summary>
public static class DidYouMean
{
    public static string? Suggest(string input, IEnumerable<string> candidates)
    {
        string? best = null;
        var bestDistance = int.MaxValue;
        var list = candidates.ToList();
        // A key that extends a known one ("evaluate" for "eval") is almost always that key.
        var prefix = list.Where(c => c.Length >= 3 && input.Length >= 3 &&
                (input.StartsWith(c, StringComparison.OrdinalIgnoreCase) || c.StartsWith(input, StringComparison.OrdinalIgnoreCase)))
            .OrderBy(c => Math.Abs(c.Length - input.Length)).FirstOrDefault();
        if (prefix is not null) return prefix;
        foreach (var c in list)
        {
            var d = Distance(input.ToLowerInvariant(), c.ToLowerInvariant());
            if (d < bestDistance) { best = c; bestDistance = d; }
        }
        // Accept up to a third of the longer word (at least 2 edits) so "lerning_rate" finds "learning_rate"
        // but "foo" does not find "seed".
        return best is not null && bestDistance <= Math.Max(2, Math.Max(input.Length, best.Length) / 3) ? best : null;
    }

    /// <summary>Damerau–Levenshtein (optimal string alignment) distance: insert, delete, substitute, swap neighbours.</summary>
    public static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (var i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (var j = 0; j <= b.Length; j++) d[0, j] = j;
        for (var i = 1; i <= a.Length; i++)
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                    d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
            }
        return d[a.Length, b.Length];
    }
}
