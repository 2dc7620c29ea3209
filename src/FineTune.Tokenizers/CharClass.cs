using System.Globalization;
using System.Text;

namespace FineTune.Tokenizers;

/// <summary>
/// Unicode classes the GPT-2 family of split patterns uses, per code point (not per UTF-16 unit, so
/// letters outside the BMP such as U+1D400 count as letters, as they do in Oniguruma).
/// </summary>
internal static class CharClass
{
    public const byte Other = 0, Letter = 1, Number = 2, Space = 4, Newline = 8;

    private static readonly byte[] Bmp = BuildBmp();

    private static byte[] BuildBmp()
    {
        var t = new byte[0x10000];
        for (int c = 0; c < 0x10000; c++)
        {
            if (c >= 0xD800 && c <= 0xDFFF) { t[c] = Other; continue; }
            t[c] = Classify(c);
        }
        return t;
    }

    private static byte Classify(int cp)
    {
        if (cp == '\r' || cp == '\n') return Space | Newline;
        // White_Space property: TAB..CR, SPACE, NEL, NBSP, OGHAM, EN QUAD..HAIR SPACE, LS, PS, NNBSP, MMSP, IDEOGRAPHIC SPACE.
        if (cp < 0x10000 && char.IsWhiteSpace((char)cp)) return Space;
        switch (CharUnicodeInfo.GetUnicodeCategory(cp))
        {
            case UnicodeCategory.UppercaseLetter:
            case UnicodeCategory.LowercaseLetter:
            case UnicodeCategory.TitlecaseLetter:
            case UnicodeCategory.ModifierLetter:
            case UnicodeCategory.OtherLetter:
                return Letter;
            case UnicodeCategory.DecimalDigitNumber:
            case UnicodeCategory.LetterNumber:
            case UnicodeCategory.OtherNumber:
                return Number;
            default:
                return Other;
        }
    }

    /// <summary>Class of the code point at <paramref name="i"/>; <paramref name="width"/> is 1 or 2 UTF-16 units.</summary>
    public static byte At(ReadOnlySpan<char> s, int i, out int width)
    {
        char c = s[i];
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            width = 2;
            return Classify(char.ConvertToUtf32(c, s[i + 1]));
        }
        width = 1;
        return Bmp[c];
    }

    public static bool IsWhiteSpace(Rune r) => Rune.IsWhiteSpace(r);
}
