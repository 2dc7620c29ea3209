using System.Text;
using System.Text.RegularExpressions;

namespace FineTune.Tokenizers;

/// <summary>A pre-tokenizer step: replaces the pieces in <c>pieces</c> by their splits (empties dropped).</summary>
internal interface IPreTokenizer
{
    void PreTokenize(List<Piece> pieces, List<Piece> scratch);
}

/// <summary>How a split step treats the delimiters it found (HF <c>SplitDelimiterBehavior</c>).</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>Finds the delimiter matches of a split step in one piece of text.</summary>
internal interface ISplitMatcher
{
    void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches);
}

internal static class SplitSupport
{
    /// <summary>
    /// Turns delimiter matches into pieces. Every match and every gap between matches is one entry
    /// flagged match/non-match (flags swapped when <paramref name="invert"/>); then the behaviour merges
    /// or drops entries exactly as HF's <c>NormalizedString::split</c> does.
    /// </summary>
    public static void Apply(Piece piece, List<(int Start, int End)> matches, SplitBehavior behavior, bool invert, List<Piece> output)
    {
        var text = piece.Text;
        if (!invert && behavior == SplitBehavior.Isolated)
        {
            // Hot path: matches and gaps in order.
            int pos = 0;
            foreach (var (s, e) in matches)
            {
                if (s > pos) output.Add(new Piece(text[pos..s], piece.AtStart && pos == 0));
                if (e > s) output.Add(new Piece(text[s..e], piece.AtStart && s == 0));
                pos = e;
            }
            if (pos < text.Length) output.Add(new Piece(text[pos..], piece.AtStart && pos == 0));
            return;
        }

        var entries = new List<(int Start, int End, bool Match)>(matches.Count * 2 + 1);
        int p = 0;
        foreach (var (s, e) in matches)
        {
            if (s > p) entries.Add((p, s, invert));
            entries.Add((s, e, !invert));
            p = e;
        }
        if (p < text.Length) entries.Add((p, text.Length, invert));

        var kept = new List<(int Start, int End)>(entries.Count);
        switch (behavior)
        {
            case SplitBehavior.Removed:
                foreach (var en in entries) if (!en.Match) kept.Add((en.Start, en.End));
                break;
            case SplitBehavior.Isolated:
                foreach (var en in entries) kept.Add((en.Start, en.End));
                break;
            case SplitBehavior.MergedWithPrevious:
            {
                bool previousMatch = false;
                foreach (var en in entries)
                {
                    if (en.Match && !previousMatch && kept.Count > 0) kept[^1] = (kept[^1].Start, en.End);
                    else kept.Add((en.Start, en.End));
                    previousMatch = en.Match;
                }
                break;
            }
            case SplitBehavior.MergedWithNext:
            {
                bool previousMatch = false;
                for (int i = entries.Count - 1; i >= 0; i--)
                {
                    var en = entries[i];
                    if (en.Match && !previousMatch && kept.Count > 0) kept[^1] = (en.Start, kept[^1].End);
                    else kept.Add((en.Start, en.End));
                    previousMatch = en.Match;
                }
                kept.Reverse();
                break;
            }
            case SplitBehavior.Contiguous:
            {
                bool previousMatch = false;
                foreach (var en in entries)
                {
                    if (en.Match == previousMatch && kept.Count > 0) kept[^1] = (kept[^1].Start, en.End);
                    else kept.Add((en.Start, en.End));
                    previousMatch = en.Match;
                }
                break;
            }
        }
        foreach (var (s, e) in kept)
            if (e > s) output.Add(new Piece(text[s..e], piece.AtStart && s == 0));
    }

    public static void SplitAll(List<Piece> pieces, List<Piece> scratch, ISplitMatcher matcher, SplitBehavior behavior, bool invert)
    {
        scratch.Clear();
        var matches = new List<(int, int)>();
        foreach (var piece in pieces)
        {
            matches.Clear();
            matcher.FindMatches(piece.Text.Span, matches);
            Apply(piece, matches, behavior, invert, scratch);
        }
        pieces.Clear();
        pieces.AddRange(scratch);
    }
}

/// <summary>Every occurrence of a literal string.</summary>
internal sealed class LiteralMatcher(string literal) : ISplitMatcher
{
    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        if (literal.Length == 0) return;
        int pos = 0;
        while (pos <= s.Length - literal.Length)
        {
            int at = s[pos..].IndexOf(literal, StringComparison.Ordinal);
            if (at < 0) break;
            matches.Add((pos + at, pos + at + literal.Length));
            pos += at + literal.Length;
        }
    }
}

/// <summary>
/// A general split regex: the tokenizer.json pattern translated by <see cref="OnigurumaRegex"/> so that
/// .NET's engine matches whole code points as Oniguruma does (the GPT-2 family has faster hand-written matchers).
/// </summary>
internal sealed class RegexMatcher(Regex regex) : ISplitMatcher
{
    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        foreach (var m in regex.EnumerateMatches(s))
            if (m.Length > 0) matches.Add((m.Index, m.Index + m.Length));
    }
}

internal sealed class Gpt2Matcher(Gpt2SplitPattern pattern) : ISplitMatcher
{
    public Gpt2SplitPattern Pattern => pattern;

    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches) => pattern.FindMatches(s, matches);
}

/// <summary>
/// <c>\w+|[^\w\s]+</c> with Rust's Unicode <c>\w</c> (letters, all marks, decimal digits, letter numbers,
/// connector punctuation, joiners); .NET's <c>\w</c> lacks spacing marks such as Devanagari vowel signs.
/// </summary>
internal sealed class WordOrSymbolRunMatcher : ISplitMatcher
{
    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int i = 0;
        while (i < s.Length)
        {
            Rune.DecodeFromUtf16(s[i..], out var r, out int w);
            if (Rune.IsWhiteSpace(r)) { i += w; continue; }
            bool word = WordChars.IsWordChar(r);
            int j = i + w;
            while (j < s.Length)
            {
                Rune.DecodeFromUtf16(s[j..], out var next, out int wn);
                if (Rune.IsWhiteSpace(next) || WordChars.IsWordChar(next) != word) break;
                j += wn;
            }
            matches.Add((i, j));
            i = j;
        }
    }
}

internal static class WordChars
{
    // Regex \w in Rust's regex crate: alphabetic, marks, decimal digits, connector punctuation, joiners.
    // Alphabetic is the letters, letter numbers and Other_Alphabetic: marks, and the circled and
    // squared Latin letters (category So) below.
    public static bool IsWordChar(Rune r)
    {
        if (r.Value is 0x200C or 0x200D or (>= 0x24B6 and <= 0x24E9) or (>= 0x1F130 and <= 0x1F149)
            or (>= 0x1F150 and <= 0x1F169) or (>= 0x1F170 and <= 0x1F189)) return true;
        return Rune.GetUnicodeCategory(r) switch
        {
            System.Globalization.UnicodeCategory.UppercaseLetter or System.Globalization.UnicodeCategory.LowercaseLetter
                or System.Globalization.UnicodeCategory.TitlecaseLetter or System.Globalization.UnicodeCategory.ModifierLetter
                or System.Globalization.UnicodeCategory.OtherLetter or System.Globalization.UnicodeCategory.LetterNumber
                or System.Globalization.UnicodeCategory.NonSpacingMark or System.Globalization.UnicodeCategory.SpacingCombiningMark
                or System.Globalization.UnicodeCategory.EnclosingMark or System.Globalization.UnicodeCategory.DecimalDigitNumber
                or System.Globalization.UnicodeCategory.ConnectorPunctuation => true,
            _ => false,
        };
    }
}

/// <summary>Each char satisfying a predicate is one match (HF's <c>split(|c| …)</c>).</summary>
internal sealed class CharMatcher(Func<Rune, bool> predicate) : ISplitMatcher
{
    public void FindMatches(ReadOnlySpan<char> s, List<(int Start, int End)> matches)
    {
        int i = 0;
        while (i < s.Length)
        {
            Rune.DecodeFromUtf16(s[i..], out var r, out int w);
            if (predicate(r)) matches.Add((i, i + w));
            i += w;
        }
    }
}

internal sealed class SplitPreTokenizer(ISplitMatcher matcher, SplitBehavior behavior, bool invert) : IPreTokenizer
{
    /// <summary>The GPT-2-family pattern when this step only isolates its matches (streamable).</summary>
    public Gpt2SplitPattern? IsolatingGpt2Pattern =>
        matcher is Gpt2Matcher g && behavior == SplitBehavior.Isolated && !invert ? g.Pattern : null;

    public void PreTokenize(List<Piece> pieces, List<Piece> scratch) => SplitSupport.SplitAll(pieces, scratch, matcher, behavior, invert);
}

/// <summary>
/// GPT-2's ByteLevel step: optional leading space per piece, optional GPT-2 regex split, then every
/// UTF-8 byte becomes one alphabet char. When this is the last step the mapping is left to the
/// model (<see cref="MapsBytes"/> false), which maps while it builds its initial symbols.
/// </summary>
internal sealed class ByteLevelPreTokenizer(bool addPrefixSpace, bool useRegex) : IPreTokenizer
{
    public bool AddPrefixSpace => addPrefixSpace;
    public bool UseRegex => useRegex;

    public bool MapsBytes { get; set; } = true;

    public void PreTokenize(List<Piece> pieces, List<Piece> scratch)
    {
        if (addPrefixSpace)
        {
            for (int i = 0; i < pieces.Count; i++)
            {
                var p = pieces[i];
                if (p.Text.Length == 0 || p.Text.Span[0] != ' ')
                    pieces[i] = new Piece((" " + p.Text.Span.ToString()).AsMemory(), p.AtStart);
            }
        }
        if (useRegex)
            SplitSupport.SplitAll(pieces, scratch, new Gpt2Matcher(Gpt2SplitPattern.ForByteLevel), SplitBehavior.Isolated, false);
        if (MapsBytes)
            for (int i = 0; i < pieces.Count; i++)
                pieces[i] = new Piece(ByteLevelAlphabet.Map(pieces[i].Text.Span).AsMemory(), pieces[i].AtStart);
    }
}

internal enum PrependScheme { Always, First, Never }

/// <summary>SentencePiece-style: spaces become the replacement char (▁), optionally prepended, optionally split before each ▁.</summary>
internal sealed class MetaspacePreTokenizer(char replacement, PrependScheme scheme, bool split) : IPreTokenizer
{
    public void PreTokenize(List<Piece> pieces, List<Piece> scratch)
    {
        for (int i = 0; i < pieces.Count; i++)
        {
            var p = pieces[i];
            string s = p.Text.Span.ToString().Replace(' ', replacement);
            bool prepend = scheme switch
            {
                PrependScheme.Always => !s.StartsWith(replacement),
                PrependScheme.First => !s.StartsWith(replacement) && p.AtStart,
                _ => false,
            };
            if (prepend) s = replacement + s;
            pieces[i] = new Piece(s.AsMemory(), p.AtStart);
        }
        if (split)
            SplitSupport.SplitAll(pieces, scratch, new LiteralMatcher(replacement.ToString()), SplitBehavior.MergedWithNext, false);
    }
}

internal sealed class SequencePreTokenizer(IReadOnlyList<IPreTokenizer> steps) : IPreTokenizer
{
    public IReadOnlyList<IPreTokenizer> Steps => steps;

    public void PreTokenize(List<Piece> pieces, List<Piece> scratch)
    {
        foreach (var step in steps) step.PreTokenize(pieces, scratch);
    }
}

internal static class StandardPreTokenizers
{
    // HF Whitespace: the matches of \w+|[^\w\s]+ are kept (inverted), everything between them dropped.
    public static IPreTokenizer Whitespace() => new SplitPreTokenizer(new WordOrSymbolRunMatcher(), SplitBehavior.Removed, true);

    public static IPreTokenizer WhitespaceSplit() => new SplitPreTokenizer(new CharMatcher(Rune.IsWhiteSpace), SplitBehavior.Removed, false);

    // HF splits on Rust's char::is_numeric: every number category (Nd, Nl, No), not only ASCII digits.
    public static IPreTokenizer Digits(bool individual) => new SplitPreTokenizer(
        new CharMatcher(static r => Rune.GetUnicodeCategory(r) is System.Globalization.UnicodeCategory.DecimalDigitNumber
            or System.Globalization.UnicodeCategory.LetterNumber or System.Globalization.UnicodeCategory.OtherNumber),
        individual ? SplitBehavior.Isolated : SplitBehavior.Contiguous, false);

    public static IPreTokenizer Punctuation(SplitBehavior behavior) => new SplitPreTokenizer(new CharMatcher(IsPunctuation), behavior, false);

    // Rust's char::is_ascii_punctuation || Unicode general category P*.
    private static bool IsPunctuation(Rune r)
    {
        if (r.IsAscii && char.IsAsciiLetterOrDigit((char)r.Value) == false && r.Value > 32 && r.Value < 127) return true;
        return Rune.GetUnicodeCategory(r) is System.Globalization.UnicodeCategory.ConnectorPunctuation
            or System.Globalization.UnicodeCategory.DashPunctuation or System.Globalization.UnicodeCategory.OpenPunctuation
            or System.Globalization.UnicodeCategory.ClosePunctuation or System.Globalization.UnicodeCategory.InitialQuotePunctuation
            or System.Globalization.UnicodeCategory.FinalQuotePunctuation or System.Globalization.UnicodeCategory.OtherPunctuation;
    }
}
