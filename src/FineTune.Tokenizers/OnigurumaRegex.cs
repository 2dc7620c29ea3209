using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace FineTune.Tokenizers;

/// <summary>A regex of tokenizer.json that FineTune cannot translate; <see cref="Offset"/> is where in the pattern.</summary>
internal sealed class RegexSyntaxException(string message, int offset) : Exception(message)
{
    public int Offset { get; } = offset;
}

/// <summary>
/// Runs a tokenizer.json regex on .NET with the semantics HF tokenizers gives it (Oniguruma, default
/// syntax, UTF-8): classes, <c>.</c> and escapes match whole code points. .NET's Regex sees UTF-16
/// units, so a character outside the BMP is two surrogates of category Cs there, and <c>\p{L}</c>
/// misses 𝐀 while <c>[^\p{L}]</c> matches half of it. The translation computes each class as a set of
/// code points (categories from <see cref="CharUnicodeInfo.GetUnicodeCategory(int)"/>) and writes it as
/// a BMP class plus explicit surrogate-pair alternatives; case-insensitive parts are expanded into
/// explicit case sets (Oniguruma's folding, e.g. 's' matches U+017F), so the .NET pattern needs no
/// options but CultureInvariant. Oniguruma's isolated option <c>a(?i)b|c</c> extends to the end of its
/// group, alternatives included (<c>a(?i:b|c)</c>); <c>^</c>/<c>$</c> are line anchors; <c>?+ *+ ++</c> are possessive.
/// </summary>
internal static class OnigurumaRegex
{
    public static Regex Create(string pattern) => new(Translate(pattern), RegexOptions.CultureInvariant);

    /// <summary>The .NET pattern; <see cref="RegexSyntaxException"/> for constructs outside the supported subset.</summary>
    public static string Translate(string pattern)
    {
        var t = new Translator(pattern);
        t.Alternation();
        if (t.Position < pattern.Length) throw new RegexSyntaxException("unmatched ')'", t.Position);
        return t.Output;
    }

    private sealed class Translator(string pattern)
    {
        private readonly string _p = pattern;
        private readonly StringBuilder _sb = new();
        private int _i;
        private bool _ignoreCase, _dotAll;

        public int Position => _i;
        public string Output => _sb.ToString();

        private RegexSyntaxException Error(string message) => new(message, _i);

        /// <summary>Alternatives up to the closing ')' of the current group or the end.</summary>
        public void Alternation()
        {
            int atomStart = -1;
            bool quantified = false;
            while (_i < _p.Length)
            {
                char c = _p[_i];
                if (c == ')') return;
                if (c == '|') { _sb.Append('|'); _i++; atomStart = -1; continue; }
                if (TryQuantifier(out var quantifier, out bool possessive))
                {
                    if (atomStart < 0) throw Error($"the quantifier '{quantifier}' has nothing to repeat");
                    // .NET rejects a quantifier on a quantified atom ("a**"); Oniguruma repeats the repetition.
                    if (quantified) { _sb.Insert(atomStart, "(?:"); _sb.Append(')'); }
                    if (possessive) { _sb.Insert(atomStart, "(?>"); _sb.Append(quantifier).Append(')'); }
                    else _sb.Append(quantifier);
                    quantified = true;
                    continue;
                }
                atomStart = _sb.Length;
                quantified = false;
                if (!Atom()) atomStart = -1;
            }
        }

        // *, +, ?, {n}, {n,}, {n,m}, {,m}, each optionally lazy (?) or, for * + ?, possessive (+).
        private bool TryQuantifier(out string quantifier, out bool possessive)
        {
            quantifier = "";
            possessive = false;
            char c = _p[_i];
            if (c is '*' or '+' or '?')
            {
                _i++;
                quantifier = c.ToString();
                if (_i < _p.Length && _p[_i] == '?') { quantifier += "?"; _i++; }
                else if (_i < _p.Length && _p[_i] == '+') { possessive = true; _i++; }
                return true;
            }
            if (c != '{') return false;
            int j = _i + 1;
            int lowStart = j;
            while (j < _p.Length && char.IsAsciiDigit(_p[j])) j++;
            string low = _p[lowStart..j];
            string? high = null;
            bool comma = j < _p.Length && _p[j] == ',';
            if (comma)
            {
                int highStart = ++j;
                while (j < _p.Length && char.IsAsciiDigit(_p[j])) j++;
                high = _p[highStart..j];
            }
            // Not an interval: Oniguruma reads the brace as a literal.
            if (j >= _p.Length || _p[j] != '}' || (low.Length == 0 && (!comma || high!.Length == 0))) return false;
            _i = j + 1;
            quantifier = "{" + (low.Length == 0 ? "0" : low) + (comma ? "," + high : "") + "}";
            if (_i < _p.Length && _p[_i] == '?') { quantifier += "?"; _i++; }
            return true;
        }

        /// <summary>Writes one item; false when it cannot be repeated (anchors, option switches).</summary>
        private bool Atom()
        {
            char c = _p[_i];
            switch (c)
            {
                case '(':
                    return Group();
                case '[':
                    WriteSet(Class());
                    return true;
                case '.':
                    _i++;
                    WriteSet(_dotAll ? CodePointSet.All : CodePointSet.Of('\n').Complement());
                    return true;
                case '^':
                    _i++;
                    _sb.Append("(?m:^)");
                    return false;
                case '$':
                    _i++;
                    _sb.Append("(?m:$)");
                    return false;
                case '\\':
                    return Escape();
                default:
                    WriteLiteral(ReadCodePoint());
                    return true;
            }
        }

        private bool Group()
        {
            int open = _i;
            _i++;
            bool savedCase = _ignoreCase, savedDot = _dotAll;
            string header = "(";
            if (_i < _p.Length && _p[_i] == '?')
            {
                _i++;
                if (_i >= _p.Length) throw Error("unterminated group");
                char k = _p[_i];
                if (k is ':' or '=' or '!' or '>') { header = "(?" + k; _i++; }
                else if (k == '<' && _i + 1 < _p.Length && _p[_i + 1] is '=' or '!') { header = "(?<" + _p[_i + 1]; _i += 2; }
                else if (k is '<' or '\'')
                {
                    char close = k == '<' ? '>' : '\'';
                    int end = _p.IndexOf(close, _i + 1);
                    if (end < 0) throw Error("unterminated group name");
                    header = "(?" + _p[_i..(end + 1)];
                    _i = end + 1;
                }
                else if (k == '#')
                {
                    int end = _p.IndexOf(')', _i);
                    if (end < 0) throw Error("unterminated comment");
                    _i = end + 1;
                    return false;
                }
                else
                {
                    bool on = true;
                    while (_i < _p.Length && _p[_i] is not (':' or ')'))
                    {
                        switch (_p[_i])
                        {
                            case '-': on = false; break;
                            case 'i': _ignoreCase = on; break;
                            case 'm': _dotAll = on; break;
                            default: throw Error($"the option '{_p[_i]}' is not supported (supported: i, m)");
                        }
                        _i++;
                    }
                    if (_i >= _p.Length) throw Error("unterminated option group");
                    if (_p[_i] == ')')
                    {
                        // Isolated option: a group from here to the end of the enclosing group.
                        _i++;
                        _sb.Append("(?:");
                        Alternation();
                        _sb.Append(')');
                        _ignoreCase = savedCase;
                        _dotAll = savedDot;
                        return false;
                    }
                    header = "(?:";
                    _i++;
                }
            }
            _sb.Append(header);
            Alternation();
            if (_i >= _p.Length) { _i = open; throw Error("missing ')'"); }
            _i++;
            _sb.Append(')');
            _ignoreCase = savedCase;
            _dotAll = savedDot;
            return true;
        }

        private bool Escape()
        {
            _i++;
            if (_i >= _p.Length) throw Error("the pattern ends with a backslash");
            char e = _p[_i];
            if (ClassEscape(e) is { } set) { _i++; WriteSet(set); return true; }
            switch (e)
            {
                case 'p' or 'P':
                    WriteSet(Property());
                    return true;
                case 'b' or 'B':
                {
                    _i++;
                    var word = new StringBuilder();
                    AppendSet(word, UnicodeSets.Word);
                    string w = word.ToString();
                    _sb.Append(e == 'b' ? $"(?:(?<={w})(?!{w})|(?<!{w})(?={w}))" : $"(?:(?<={w})(?={w})|(?<!{w})(?!{w}))");
                    return false;
                }
                case 'A' or 'z' or 'Z' or 'G':
                    _i++;
                    _sb.Append('\\').Append(e);
                    return false;
                case >= '1' and <= '9':
                {
                    int start = _i;
                    while (_i < _p.Length && char.IsAsciiDigit(_p[_i])) _i++;
                    _sb.Append('\\').Append(_p, start, _i - start);
                    return true;
                }
                case 'k':
                {
                    int end = _p.IndexOf('>', _i);
                    if (_i + 1 >= _p.Length || _p[_i + 1] != '<' || end < 0) throw Error("expected \\k<name>");
                    _sb.Append('\\').Append(_p, _i, end + 1 - _i);
                    _i = end + 1;
                    return true;
                }
                default:
                    WriteLiteral(EscapedCodePoint(inClass: false));
                    return true;
            }
        }

        private static CodePointSet? ClassEscape(char e) => e switch
        {
            's' => UnicodeSets.WhiteSpace,
            'S' => UnicodeSets.WhiteSpace.Complement(),
            'd' => UnicodeSets.Digit,
            'D' => UnicodeSets.Digit.Complement(),
            'w' => UnicodeSets.Word,
            'W' => UnicodeSets.Word.Complement(),
            'h' => HexDigits,
            'H' => HexDigits.Complement(),
            _ => null,
        };

        private static readonly CodePointSet HexDigits = CodePointSet.FromRanges([('0', '9'), ('A', 'F'), ('a', 'f')]);

        /// <summary>The character of an escape such as \n, \x41, \x{1F600}, \u00e9, \0, \. (at the letter after the backslash).</summary>
        private int EscapedCodePoint(bool inClass)
        {
            char e = _p[_i];
            _i++;
            switch (e)
            {
                case 't': return '\t';
                case 'n': return '\n';
                case 'r': return '\r';
                case 'f': return '\f';
                case 'v': return '\v';
                case 'a': return '\a';
                case 'e': return 0x1B;
                case 'b' when inClass: return '\b';
                case 'x':
                    if (_i < _p.Length && _p[_i] == '{')
                    {
                        int end = _p.IndexOf('}', _i);
                        if (end < 0) throw Error("unterminated \\x{…}");
                        var hex = _p[(_i + 1)..end];
                        _i = end + 1;
                        return ParseHex(hex);
                    }
                    return ParseHex(TakeWhile(IsHex, 2));
                case 'u':
                    return ParseHex(TakeWhile(IsHex, 4));
                case '0':
                    var octal = TakeWhile(ch => ch is >= '0' and <= '7', 2);
                    return octal.Length == 0 ? 0 : Convert.ToInt32(octal, 8);
                default:
                    if (char.IsAsciiLetterOrDigit(e)) { _i--; throw Error($"the escape \\{e} is not supported"); }
                    _i--;
                    return ReadCodePoint();
            }
        }

        private static bool IsHex(char c) => char.IsAsciiHexDigit(c);

        private string TakeWhile(Func<char, bool> accept, int max)
        {
            int start = _i;
            while (_i < _p.Length && _i - start < max && accept(_p[_i])) _i++;
            return _p[start.._i];
        }

        private int ParseHex(string hex)
        {
            if (hex.Length == 0 || !int.TryParse(hex, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int cp) || cp > CodePointSet.MaxCodePoint)
                throw Error($"invalid code point \"{hex}\"");
            return cp;
        }

        private int ReadCodePoint()
        {
            char c = _p[_i];
            if (char.IsHighSurrogate(c) && _i + 1 < _p.Length && char.IsLowSurrogate(_p[_i + 1]))
            {
                _i += 2;
                return char.ConvertToUtf32(c, _p[_i - 1]);
            }
            _i++;
            return c;
        }

        // \p{Name}, \p{^Name}, \P{Name} (at the p).
        private CodePointSet Property()
        {
            int backslash = _i - 1;
            bool negated = _p[_i] == 'P';
            _i++;
            if (_i >= _p.Length || _p[_i] != '{') throw Error("expected \\p{Name}");
            int end = _p.IndexOf('}', _i);
            if (end < 0) throw Error("unterminated \\p{…}");
            string name = _p[(_i + 1)..end];
            if (name.StartsWith('^')) { negated = !negated; name = name[1..]; }
            var set = PropertySet(name) ?? throw new RegexSyntaxException($"the Unicode property \\p{{{name}}} is not supported (general categories such as L, Lu, M, N, Nd, P, S, Z, C and their long names, or Any)", backslash);
            _i = end + 1;
            return negated ? set.Complement() : set;
        }

        private static CodePointSet? PropertySet(string name)
        {
            string key = new string(name.Where(ch => ch is not (' ' or '_' or '-')).ToArray()).ToLowerInvariant();
            UnicodeCategory[]? c = key switch
            {
                "l" or "letter" => [UnicodeCategory.UppercaseLetter, UnicodeCategory.LowercaseLetter, UnicodeCategory.TitlecaseLetter, UnicodeCategory.ModifierLetter, UnicodeCategory.OtherLetter],
                "lc" or "l&" or "casedletter" => [UnicodeCategory.UppercaseLetter, UnicodeCategory.LowercaseLetter, UnicodeCategory.TitlecaseLetter],
                "lu" or "uppercaseletter" => [UnicodeCategory.UppercaseLetter],
                "ll" or "lowercaseletter" => [UnicodeCategory.LowercaseLetter],
                "lt" or "titlecaseletter" => [UnicodeCategory.TitlecaseLetter],
                "lm" or "modifierletter" => [UnicodeCategory.ModifierLetter],
                "lo" or "otherletter" => [UnicodeCategory.OtherLetter],
                "m" or "mark" or "combiningmark" => [UnicodeCategory.NonSpacingMark, UnicodeCategory.SpacingCombiningMark, UnicodeCategory.EnclosingMark],
                "mn" or "nonspacingmark" => [UnicodeCategory.NonSpacingMark],
                "mc" or "spacingmark" => [UnicodeCategory.SpacingCombiningMark],
                "me" or "enclosingmark" => [UnicodeCategory.EnclosingMark],
                "n" or "number" => [UnicodeCategory.DecimalDigitNumber, UnicodeCategory.LetterNumber, UnicodeCategory.OtherNumber],
                "nd" or "decimalnumber" => [UnicodeCategory.DecimalDigitNumber],
                "nl" or "letternumber" => [UnicodeCategory.LetterNumber],
                "no" or "othernumber" => [UnicodeCategory.OtherNumber],
                "p" or "punctuation" => [UnicodeCategory.ConnectorPunctuation, UnicodeCategory.DashPunctuation, UnicodeCategory.OpenPunctuation, UnicodeCategory.ClosePunctuation,
                    UnicodeCategory.InitialQuotePunctuation, UnicodeCategory.FinalQuotePunctuation, UnicodeCategory.OtherPunctuation],
                "pc" or "connectorpunctuation" => [UnicodeCategory.ConnectorPunctuation],
                "pd" or "dashpunctuation" => [UnicodeCategory.DashPunctuation],
                "ps" or "openpunctuation" => [UnicodeCategory.OpenPunctuation],
                "pe" or "closepunctuation" => [UnicodeCategory.ClosePunctuation],
                "pi" or "initialpunctuation" => [UnicodeCategory.InitialQuotePunctuation],
                "pf" or "finalpunctuation" => [UnicodeCategory.FinalQuotePunctuation],
                "po" or "otherpunctuation" => [UnicodeCategory.OtherPunctuation],
                "s" or "symbol" => [UnicodeCategory.MathSymbol, UnicodeCategory.CurrencySymbol, UnicodeCategory.ModifierSymbol, UnicodeCategory.OtherSymbol],
                "sm" or "mathsymbol" => [UnicodeCategory.MathSymbol],
                "sc" or "currencysymbol" => [UnicodeCategory.CurrencySymbol],
                "sk" or "modifiersymbol" => [UnicodeCategory.ModifierSymbol],
                "so" or "othersymbol" => [UnicodeCategory.OtherSymbol],
                "z" or "separator" => [UnicodeCategory.SpaceSeparator, UnicodeCategory.LineSeparator, UnicodeCategory.ParagraphSeparator],
                "zs" or "spaceseparator" => [UnicodeCategory.SpaceSeparator],
                "zl" or "lineseparator" => [UnicodeCategory.LineSeparator],
                "zp" or "paragraphseparator" => [UnicodeCategory.ParagraphSeparator],
                "c" or "other" => [UnicodeCategory.Control, UnicodeCategory.Format, UnicodeCategory.Surrogate, UnicodeCategory.PrivateUse, UnicodeCategory.OtherNotAssigned],
                "cc" or "control" => [UnicodeCategory.Control],
                "cf" or "format" => [UnicodeCategory.Format],
                "cs" or "surrogate" => [UnicodeCategory.Surrogate],
                "co" or "privateuse" => [UnicodeCategory.PrivateUse],
                "cn" or "unassigned" => [UnicodeCategory.OtherNotAssigned],
                _ => null,
            };
            if (key == "any") return CodePointSet.All;
            return c is null ? null : UnicodeSets.Category(c);
        }

        // [...] at '[': items, ranges, class escapes, nested classes (union), && (intersection), leading ^.
        private CodePointSet Class()
        {
            int open = _i;
            _i++;
            bool negated = false;
            if (_i < _p.Length && _p[_i] == '^') { negated = true; _i++; }
            CodePointSet? intersection = null;
            var current = CodePointSet.Empty;
            bool first = true;
            while (true)
            {
                if (_i >= _p.Length) { _i = open; throw Error("the character class is not closed"); }
                char c = _p[_i];
                if (c == ']' && !first) { _i++; break; }
                first = false;
                if (c == '[')
                {
                    if (_i + 1 < _p.Length && _p[_i + 1] == ':') throw Error("POSIX bracket classes ([:alpha:]) are not supported");
                    current = current.Union(Class());
                    continue;
                }
                if (c == '&' && _i + 1 < _p.Length && _p[_i + 1] == '&')
                {
                    _i += 2;
                    intersection = intersection is null ? current : intersection.Intersect(current);
                    current = CodePointSet.Empty;
                    continue;
                }
                var item = ClassItem(out int single);
                if (item is not null) { current = current.Union(item); continue; }
                if (_i + 1 < _p.Length && _p[_i] == '-' && _p[_i + 1] != ']')
                {
                    _i++;
                    int rangeStart = _i;
                    if (ClassItem(out int high) is not null) { _i = rangeStart; throw Error("a class escape cannot end a range"); }
                    if (high < single) { _i = rangeStart; throw Error("the range is in reverse order"); }
                    current = current.Union(CodePointSet.Range(single, high));
                }
                else current = current.Union(CodePointSet.Of(single));
            }
            var set = intersection is null ? current : intersection.Intersect(current);
            if (_ignoreCase) set = UnicodeSets.CaseClosure(set);
            return negated ? set.Complement() : set;
        }

        /// <summary>A class escape's set, or null with the single code point in <paramref name="codePoint"/>.</summary>
        private CodePointSet? ClassItem(out int codePoint)
        {
            codePoint = -1;
            if (_p[_i] != '\\') { codePoint = ReadCodePoint(); return null; }
            _i++;
            if (_i >= _p.Length) throw Error("the pattern ends with a backslash");
            char e = _p[_i];
            if (ClassEscape(e) is { } set) { _i++; return set; }
            if (e is 'p' or 'P') return Property();
            codePoint = EscapedCodePoint(inClass: true);
            return null;
        }

        private void WriteLiteral(int codePoint)
        {
            if (_ignoreCase)
            {
                var set = UnicodeSets.CaseClosure(CodePointSet.Of(codePoint));
                if (set.Ranges is not [(var lo, var hi)] || lo != hi) { WriteSet(set); return; }
            }
            if (codePoint > 0xFFFF)
            {
                string pair = char.ConvertFromUtf32(codePoint);
                _sb.Append("(?:").Append(Unit(pair[0])).Append(Unit(pair[1])).Append(')');
            }
            else if (char.IsAsciiLetterOrDigit((char)codePoint)) _sb.Append((char)codePoint);
            else _sb.Append(Unit((char)codePoint));
        }

        private void WriteSet(CodePointSet set) => AppendSet(_sb, set);

        private static string Unit(char c) => "\\u" + ((int)c).ToString("X4", CultureInfo.InvariantCulture);

        /// <summary>
        /// A set as one .NET atom: a class of its BMP members (surrogates excluded), then per high
        /// surrogate the class of low surrogates that complete a member (runs of high surrogates with the
        /// same lows share one branch), then lone surrogates when the set has Cs code points.
        /// </summary>
        private static void AppendSet(StringBuilder sb, CodePointSet set)
        {
            var bmp = new List<(int, int)>();
            var loneHigh = new List<(int, int)>();
            var loneLow = new List<(int, int)>();
            // (first high, last high, lows): every high surrogate of the run completes a member with each low of the list.
            var pairs = new List<(int HighLo, int HighHi, List<(int, int)> Lows)>();
            void AddPairs(int high1, int high2, int low1, int low2)
            {
                if (pairs.Count > 0 && high1 == high2 && pairs[^1].HighLo == high1 && pairs[^1].HighHi == high1) { pairs[^1].Lows.Add((low1, low2)); return; }
                pairs.Add((high1, high2, [(low1, low2)]));
            }
            foreach (var (lo, hi) in set.Ranges)
            {
                Clip(lo, hi, 0, 0xD7FF, bmp);
                Clip(lo, hi, 0xD800, 0xDBFF, loneHigh);
                Clip(lo, hi, 0xDC00, 0xDFFF, loneLow);
                Clip(lo, hi, 0xE000, 0xFFFF, bmp);
                int a = Math.Max(lo, 0x10000);
                if (a > hi) continue;
                int ha = 0xD800 + ((a - 0x10000) >> 10), la = 0xDC00 + ((a - 0x10000) & 0x3FF);
                int hb = 0xD800 + ((hi - 0x10000) >> 10), lb = 0xDC00 + ((hi - 0x10000) & 0x3FF);
                if (ha == hb) { AddPairs(ha, ha, la, lb); continue; }
                if (la > 0xDC00) { AddPairs(ha, ha, la, 0xDFFF); ha++; }
                if (lb < 0xDFFF) { if (ha < hb) AddPairs(ha, hb - 1, 0xDC00, 0xDFFF); AddPairs(hb, hb, 0xDC00, lb); }
                else AddPairs(ha, hb, 0xDC00, 0xDFFF);
            }
            // Runs of high surrogates with the same lows share one branch.
            var merged = new List<(int HighLo, int HighHi, List<(int, int)> Lows)>();
            foreach (var p in pairs)
            {
                if (merged.Count > 0 && merged[^1].HighHi + 1 == p.HighLo && merged[^1].Lows.SequenceEqual(p.Lows)) merged[^1] = (merged[^1].HighLo, p.HighHi, merged[^1].Lows);
                else merged.Add(p);
            }

            var branches = new List<string>();
            if (bmp.Count > 0) branches.Add(BmpClass(CodePointSet.FromRanges(bmp)));
            foreach (var (highLo, highHi, lows) in merged)
                branches.Add((highLo == highHi ? Unit((char)highLo) : $"[{Unit((char)highLo)}-{Unit((char)highHi)}]") + ClassOf(lows));
            if (loneHigh.Count > 0) branches.Add(ClassOf(loneHigh) + "(?![\\uDC00-\\uDFFF])");
            if (loneLow.Count > 0) branches.Add("(?<![\\uD800-\\uDBFF])" + ClassOf(loneLow));

            if (branches.Count == 0) { sb.Append("(?!)"); return; }
            if (branches.Count == 1 && bmp.Count > 0) { sb.Append(branches[0]); return; }
            sb.Append("(?:");
            if (bmp.Count > 0) sb.Append(branches[0]).Append('|');
            // One class test keeps BMP text from trying every surrogate branch in turn.
            sb.Append("(?=[\\uD800-\\uDFFF])(?:").AppendJoin('|', branches.Skip(bmp.Count > 0 ? 1 : 0)).Append("))");
        }

        private static readonly CodePointSet BmpWithoutSurrogates = CodePointSet.FromRanges([(0, 0xD7FF), (0xE000, 0xFFFF)]);

        /// <summary>
        /// The BMP members (no surrogates) as a .NET class, written with the general categories that lie
        /// wholly inside (or, for a negated class, wholly outside) the set, which .NET checks in one
        /// lookup, plus explicit ranges for the rest; the shorter of the two forms. .NET's categories of
        /// BMP chars are the ones the sets were built from, so <c>\p{Lu}</c> means the same on both sides.
        /// </summary>
        private static string BmpClass(CodePointSet members)
        {
            string positive = Describe(members);
            string negative = Describe(BmpWithoutSurrogates.Intersect(members.Complement()));
            return positive.Length <= negative.Length + 14 ? "[" + positive + "]" : "[^" + negative + "\\uD800-\\uDFFF]";
        }

        private static string Describe(CodePointSet members)
        {
            var sb = new StringBuilder();
            var rest = members;
            foreach (var (name, inBmp) in BmpCategories.Value)
            {
                if (inBmp.IsEmpty || !inBmp.IsSubsetOf(members)) continue;
                sb.Append("\\p{").Append(name).Append('}');
                rest = rest.Intersect(inBmp.Complement());
            }
            foreach (var (lo, hi) in rest.Ranges)
            {
                sb.Append(Unit((char)lo));
                if (hi > lo) sb.Append(hi > lo + 1 ? "-" : "").Append(Unit((char)hi));
            }
            return sb.ToString();
        }

        private static readonly (UnicodeCategory Category, string Name)[] CategoryNames =
        [
            (UnicodeCategory.UppercaseLetter, "Lu"), (UnicodeCategory.LowercaseLetter, "Ll"), (UnicodeCategory.TitlecaseLetter, "Lt"),
            (UnicodeCategory.ModifierLetter, "Lm"), (UnicodeCategory.OtherLetter, "Lo"), (UnicodeCategory.NonSpacingMark, "Mn"),
            (UnicodeCategory.SpacingCombiningMark, "Mc"), (UnicodeCategory.EnclosingMark, "Me"), (UnicodeCategory.DecimalDigitNumber, "Nd"),
            (UnicodeCategory.LetterNumber, "Nl"), (UnicodeCategory.OtherNumber, "No"), (UnicodeCategory.SpaceSeparator, "Zs"),
            (UnicodeCategory.LineSeparator, "Zl"), (UnicodeCategory.ParagraphSeparator, "Zp"), (UnicodeCategory.Control, "Cc"),
            (UnicodeCategory.Format, "Cf"), (UnicodeCategory.PrivateUse, "Co"), (UnicodeCategory.ConnectorPunctuation, "Pc"),
            (UnicodeCategory.DashPunctuation, "Pd"), (UnicodeCategory.OpenPunctuation, "Ps"), (UnicodeCategory.ClosePunctuation, "Pe"),
            (UnicodeCategory.InitialQuotePunctuation, "Pi"), (UnicodeCategory.FinalQuotePunctuation, "Pf"), (UnicodeCategory.OtherPunctuation, "Po"),
            (UnicodeCategory.MathSymbol, "Sm"), (UnicodeCategory.CurrencySymbol, "Sc"), (UnicodeCategory.ModifierSymbol, "Sk"),
            (UnicodeCategory.OtherSymbol, "So"), (UnicodeCategory.OtherNotAssigned, "Cn"),
        ];

        private static readonly Lazy<(string Name, CodePointSet InBmp)[]> BmpCategories = new(() =>
            CategoryNames.Select(c => (c.Name, UnicodeSets.Category(c.Category).Intersect(BmpWithoutSurrogates))).ToArray());

        private static void Clip(int lo, int hi, int min, int max, List<(int, int)> into)
        {
            int a = Math.Max(lo, min), b = Math.Min(hi, max);
            if (a <= b) into.Add((a, b));
        }

        private static string ClassOf(List<(int Lo, int Hi)> ranges)
        {
            var sb = new StringBuilder("[");
            foreach (var (lo, hi) in ranges)
            {
                sb.Append(Unit((char)lo));
                if (hi > lo) sb.Append(hi > lo + 1 ? "-" : "").Append(Unit((char)hi));
            }
            return sb.Append(']').ToString();
        }
    }
}
