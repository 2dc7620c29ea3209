namespace FineTune.Tokenizers;

/// <summary>
/// Hand-written matchers for the split regexes of the GPT-2 family, with Oniguruma's semantics
/// (leftmost-first alternation, code-point classes). They replace .NET's Regex, which classifies
/// UTF-16 units (so a letter outside the BMP would not be <c>\p{L}</c>) and is slower.
/// </summary>
internal sealed class Gpt2SplitPattern
{
    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    public const string Llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string Qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private readonly bool _gpt2;
    private readonly int _maxDigits;

    private Gpt2SplitPattern(bool gpt2, int maxDigits) { _gpt2 = gpt2; _maxDigits = maxDigits; }

    public static Gpt2SplitPattern? TryCreate(string regex) => regex switch
    {
        Gpt2 => new Gpt2SplitPattern(true, int.MaxValue),
        Llama3 => new Gpt2SplitPattern(false, 3),
        Qwen2 => new Gpt2SplitPattern(false, 1),
        _ => null,
    };

    public static Gpt2SplitPattern ForByteLevel { get; } = new(true, int.MaxValue);

    /// <summary>Length of the match starting at <paramref name="i"/>, or 0 when none starts there.</summary>
    public int MatchAt(ReadOnlySpan<char> s, int i) => _gpt2 ? MatchGpt2(s, i) : MatchLlama3(s, i);

    /// <summary>Appends the (start, end) of every match, left to right, non-overlapping.</summary>
    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int i = 0;
        while (i < s.Length)
        {
            int len = _gpt2 ? MatchGpt2(s, i) : MatchLlama3(s, i);
            if (len > 0) { matches.Add((i, i + len)); i += len; }
            else { CharClass.At(s, i, out int w); i += w; }
        }
    }

    private static int Contraction(ReadOnlySpan<char> s, int i, bool ignoreCase)
    {
        if (i + 1 >= s.Length) return 0;
        char a = Fold(s[i + 1], ignoreCase);
        if (a is 's' or 't' or 'm' or 'd') return 2;
        if (i + 2 >= s.Length) return 0;
        char b = Fold(s[i + 2], ignoreCase);
        return (a, b) is ('r', 'e') or ('v', 'e') or ('l', 'l') ? 3 : 0;
    }

    // Oniguruma's case folding of the contraction letters: ASCII, and U+017F LONG S, which folds to 's'
    // (no other character folds onto s, t, r, e, v, m, l or d).
    private static char Fold(char c, bool ignoreCase) => !ignoreCase ? c : c is >= 'A' and <= 'Z' ? (char)(c | 0x20) : c == '\u017F' ? 's' : c;

    private static int RunOf(ReadOnlySpan<char> s, int i, byte cls)
    {
        int j = i;
        while (j < s.Length && CharClass.At(s, j, out int w) == cls) j += w;
        return j;
    }

    private static int SpaceRunEnd(ReadOnlySpan<char> s, int i)
    {
        int j = i;
        while (j < s.Length && (CharClass.At(s, j, out int w) & CharClass.Space) != 0) j += w;
        return j;
    }

    // \s+(?!\S)|\s+ : the run minus its last char when a non-space follows and the run is longer than one.
    private static int TrailingSpaces(ReadOnlySpan<char> s, int i, int end)
        => end == s.Length || end - i < 2 ? end - i : end - 1 - i;

    private int MatchGpt2(ReadOnlySpan<char> s, int i)
    {
        if (s[i] == '\'')
        {
            int c = Contraction(s, i, false);
            if (c > 0) return c;
        }
        byte cls = CharClass.At(s, i, out int w);
        if (s[i] == ' ' && i + 1 < s.Length)
        {
            byte next = CharClass.At(s, i + 1, out _);
            if (next is CharClass.Letter or CharClass.Number or CharClass.Other) return RunOf(s, i + 1, next) - i;
        }
        if (cls is CharClass.Letter or CharClass.Number or CharClass.Other) return RunOf(s, i, cls) - i;
        _ = w;
        return TrailingSpaces(s, i, SpaceRunEnd(s, i));
    }

    private int MatchLlama3(ReadOnlySpan<char> s, int i)
    {
        if (s[i] == '\'')
        {
            int c = Contraction(s, i, true);
            if (c > 0) return c;
        }
        byte cls = CharClass.At(s, i, out int w);
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (cls == CharClass.Letter) return RunOf(s, i, CharClass.Letter) - i;
        if ((cls & (CharClass.Letter | CharClass.Number | CharClass.Newline)) == 0 && i + w < s.Length
            && CharClass.At(s, i + w, out _) == CharClass.Letter)
            return RunOf(s, i + w, CharClass.Letter) - i;
        // \p{N}{1,max}
        if (cls == CharClass.Number)
        {
            int j = i, n = 0;
            while (n < _maxDigits && j < s.Length && CharClass.At(s, j, out int wj) == CharClass.Number) { j += wj; n++; }
            return j - i;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        int k = s[i] == ' ' ? i + 1 : i;
        if (k < s.Length && CharClass.At(s, k, out _) == CharClass.Other)
        {
            int j = RunOf(s, k, CharClass.Other);
            while (j < s.Length && s[j] is '\r' or '\n') j++;
            return j - i;
        }
        if ((cls & CharClass.Space) == 0) return 0;
        // \s*[\r\n]+ : up to the last line break of the whitespace run.
        int end = SpaceRunEnd(s, i);
        for (int j = end - 1; j >= i; j--)
            if (s[j] is '\r' or '\n') return j + 1 - i;
        return TrailingSpaces(s, i, end);
    }
}
