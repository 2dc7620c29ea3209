using System.Globalization;
using System.Text;

namespace FineTune.Tokenizers;

/// <summary>An immutable set of Unicode code points (0 … U+10FFFF) as sorted, disjoint, non-adjacent ranges.</summary>
internal sealed class CodePointSet
{
    public const int MaxCodePoint = 0x10FFFF;

    private readonly (int Lo, int Hi)[] _ranges;

    private CodePointSet((int Lo, int Hi)[] normalized) { _ranges = normalized; }

    public IReadOnlyList<(int Lo, int Hi)> Ranges => _ranges;

    public bool IsEmpty => _ranges.Length == 0;

    public static CodePointSet Empty { get; } = new([]);

    public static CodePointSet All { get; } = new([(0, MaxCodePoint)]);

    public static CodePointSet Of(int codePoint) => new([(codePoint, codePoint)]);

    public static CodePointSet Range(int lo, int hi) => FromRanges([(lo, hi)]);

    public static CodePointSet FromRanges(IEnumerable<(int Lo, int Hi)> ranges)
    {
        var sorted = ranges.Where(r => r.Lo <= r.Hi).OrderBy(r => r.Lo).ToList();
        var merged = new List<(int Lo, int Hi)>(sorted.Count);
        foreach (var (lo, hi) in sorted)
        {
            if (merged.Count > 0 && lo <= merged[^1].Hi + 1) merged[^1] = (merged[^1].Lo, Math.Max(merged[^1].Hi, hi));
            else merged.Add((lo, hi));
        }
        return new CodePointSet(merged.ToArray());
    }

    /// <summary>The code points satisfying <paramref name="predicate"/>, found by one scan of the code space.</summary>
    public static CodePointSet Where(Func<int, bool> predicate)
    {
        var ranges = new List<(int, int)>();
        int start = -1;
        for (int cp = 0; cp <= MaxCodePoint + 1; cp++)
        {
            bool inSet = cp <= MaxCodePoint && predicate(cp);
            if (inSet && start < 0) start = cp;
            else if (!inSet && start >= 0) { ranges.Add((start, cp - 1)); start = -1; }
        }
        return new CodePointSet(ranges.ToArray());
    }

    public CodePointSet Union(CodePointSet other)
    {
        if (other.IsEmpty) return this;
        if (IsEmpty) return other;
        // Merge of two sorted lists, joining overlapping and adjacent ranges.
        var result = new List<(int Lo, int Hi)>(_ranges.Length + other._ranges.Length);
        int i = 0, j = 0;
        while (i < _ranges.Length || j < other._ranges.Length)
        {
            var next = j >= other._ranges.Length || (i < _ranges.Length && _ranges[i].Lo <= other._ranges[j].Lo) ? _ranges[i++] : other._ranges[j++];
            if (result.Count > 0 && next.Lo <= result[^1].Hi + 1) result[^1] = (result[^1].Lo, Math.Max(result[^1].Hi, next.Hi));
            else result.Add(next);
        }
        return new CodePointSet(result.ToArray());
    }

    public CodePointSet Complement()
    {
        var result = new List<(int, int)>(_ranges.Length + 1);
        int next = 0;
        foreach (var (lo, hi) in _ranges)
        {
            if (lo > next) result.Add((next, lo - 1));
            next = hi + 1;
        }
        if (next <= MaxCodePoint) result.Add((next, MaxCodePoint));
        return new CodePointSet(result.ToArray());
    }

    public CodePointSet Intersect(CodePointSet other)
    {
        var result = new List<(int, int)>();
        int i = 0, j = 0;
        while (i < _ranges.Length && j < other._ranges.Length)
        {
            int lo = Math.Max(_ranges[i].Lo, other._ranges[j].Lo), hi = Math.Min(_ranges[i].Hi, other._ranges[j].Hi);
            if (lo <= hi) result.Add((lo, hi));
            if (_ranges[i].Hi < other._ranges[j].Hi) i++; else j++;
        }
        return new CodePointSet(result.ToArray());
    }

    /// <summary>True when every member of this set is in <paramref name="other"/>.</summary>
    public bool IsSubsetOf(CodePointSet other)
    {
        int j = 0;
        foreach (var (lo, hi) in _ranges)
        {
            while (j < other._ranges.Length && other._ranges[j].Hi < lo) j++;
            if (j >= other._ranges.Length || other._ranges[j].Lo > lo || other._ranges[j].Hi < hi) return false;
        }
        return true;
    }

    public bool Contains(int codePoint)
    {
        int lo = 0, hi = _ranges.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (codePoint < _ranges[mid].Lo) hi = mid - 1;
            else if (codePoint > _ranges[mid].Hi) lo = mid + 1;
            else return true;
        }
        return false;
    }

    public IEnumerable<int> CodePoints()
    {
        foreach (var (lo, hi) in _ranges)
            for (int cp = lo; cp <= hi; cp++) yield return cp;
    }
}

/// <summary>
/// The Unicode classes a split regex names, as code point sets from .NET's character data
/// (<see cref="CharUnicodeInfo.GetUnicodeCategory(int)"/>), built once on first use.
/// </summary>
internal static class UnicodeSets
{
    private static readonly Lazy<CodePointSet[]> ByCategory = new(BuildCategories);
    private static readonly Lazy<CodePointSet> WhiteSpaceSet = new(() => CodePointSet.Where(cp => cp < 0x10000 && char.IsWhiteSpace((char)cp)));
    // Oniguruma's Word, measured against HF tokenizers over the whole code space: Alphabetic, marks,
    // decimal digits and connector punctuation (the circled and squared letters, category So, are
    // Alphabetic), plus ² ³ ¹ ¼ ½ ¾ from its Latin-1 table, and without the joiners U+200C/U+200D that
    // Rust's \w (HF's Whitespace pre-tokenizer, <see cref="WordChars"/>) has.
    private static readonly Lazy<CodePointSet> WordSet = new(() => CodePointSet.Where(cp =>
        cp is 0xB2 or 0xB3 or 0xB9 or (>= 0xBC and <= 0xBE)
        || (cp is not (0x200C or 0x200D) && Rune.IsValid(cp) && WordChars.IsWordChar(new Rune(cp)))));
    private static readonly Lazy<Dictionary<int, int[]>> CaseGroups = new(BuildCaseGroups);

    private static CodePointSet[] BuildCategories()
    {
        var ranges = new List<(int, int)>[30];
        for (int i = 0; i < ranges.Length; i++) ranges[i] = new List<(int, int)>();
        int start = 0;
        var current = CharUnicodeInfo.GetUnicodeCategory(0);
        for (int cp = 1; cp <= CodePointSet.MaxCodePoint + 1; cp++)
        {
            var c = cp <= CodePointSet.MaxCodePoint ? CharUnicodeInfo.GetUnicodeCategory(cp) : (UnicodeCategory)(-1);
            if (c == current) continue;
            ranges[(int)current].Add((start, cp - 1));
            start = cp;
            current = c;
        }
        return ranges.Select(CodePointSet.FromRanges).ToArray();
    }

    public static CodePointSet Category(params UnicodeCategory[] categories)
    {
        var set = CodePointSet.Empty;
        foreach (var c in categories) set = set.Union(ByCategory.Value[(int)c]);
        return set;
    }

    /// <summary>White_Space (Oniguruma's Unicode <c>\s</c>); all of it is in the BMP.</summary>
    public static CodePointSet WhiteSpace => WhiteSpaceSet.Value;

    /// <summary>Oniguruma's word characters (<c>\w</c>, <c>\b</c>).</summary>
    public static CodePointSet Word => WordSet.Value;

    public static CodePointSet Digit => Category(UnicodeCategory.DecimalDigitNumber);

    /// <summary>
    /// <paramref name="set"/> with every code point that case-folds to the same as one of its members
    /// (Oniguruma's case-insensitive matching: 's' also matches 'S' and U+017F LONG S, 'k' also U+212A KELVIN SIGN).
    /// </summary>
    public static CodePointSet CaseClosure(CodePointSet set)
    {
        var groups = CaseGroups.Value;
        var extra = new List<(int, int)>();
        foreach (var cp in set.CodePoints())
            if (groups.TryGetValue(cp, out var group))
                foreach (var other in group) extra.Add((other, other));
        return extra.Count == 0 ? set : set.Union(CodePointSet.FromRanges(extra));
    }

    // Code points that share a fold key lower(upper(c)) form one group. Dotless ı and dotted İ stay
    // apart (Unicode's simple case folding maps neither onto i); U+017F LONG S folds to s, a mapping
    // .NET's invariant casing leaves out.
    private static Dictionary<int, int[]> BuildCaseGroups()
    {
        var byKey = new Dictionary<int, List<int>>();
        for (int cp = 0; cp <= CodePointSet.MaxCodePoint; cp++)
        {
            if (!Rune.IsValid(cp) || cp is 0x130 or 0x131) continue;
            var r = new Rune(cp);
            int key = cp == 0x17F ? 's' : Rune.ToLowerInvariant(Rune.ToUpperInvariant(r)).Value;
            if (key == cp && Rune.ToUpperInvariant(r).Value == cp && Rune.ToLowerInvariant(r).Value == cp) continue;
            if (!byKey.TryGetValue(key, out var list)) byKey[key] = list = [];
            list.Add(cp);
        }
        var groups = new Dictionary<int, int[]>();
        foreach (var (key, members) in byKey)
        {
            var all = members.Append(key).Distinct().ToArray();
            foreach (var m in all) groups[m] = all;
        }
        return groups;
    }
}
