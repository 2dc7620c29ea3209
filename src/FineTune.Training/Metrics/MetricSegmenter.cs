using System.Globalization;
using System.Text;

namespace FineTune.Training.Metrics;

/// <summary>
/// Splits text into the tokens BLEU and ROUGE count. LLaMA-Factory segments with jieba (a Chinese
/// word segmenter); FineTune uses a rule anyone can reproduce without a dictionary:
/// every CJK ideograph, kana or hangul syllable is a token of its own; a run of letters, digits,
/// combining marks and underscores is one word; every other non-space character (punctuation,
/// symbols) is a token of its own; whitespace only separates. Case is kept.
/// </summary>
public static class MetricSegmenter
{
    public static IReadOnlyList<string> Split(string text)
    {
        var tokens = new List<string>();
        var word = new StringBuilder();
        void Flush() { if (word.Length > 0) { tokens.Add(word.ToString()); word.Clear(); } }

        var runes = text.EnumerateRunes();
        foreach (Rune r in runes)
        {
            if (Rune.IsWhiteSpace(r)) { Flush(); continue; }
            if (IsCjk(r)) { Flush(); tokens.Add(r.ToString()); continue; }
            var cat = Rune.GetUnicodeCategory(r);
            bool wordChar = Rune.IsLetterOrDigit(r) || r.Value == '_'
                || cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark;
            if (wordChar) { word.Append(r.ToString()); continue; }
            Flush();
            tokens.Add(r.ToString());
        }
        Flush();
        return tokens;
    }

    /// <summary>CJK ideographs (with extensions and compatibility forms), CJK punctuation, kana, hangul.</summary>
    public static bool IsCjk(Rune r)
    {
        int c = r.Value;
        return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2FA1F)
            || (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x3000 && c <= 0x303F) || (c >= 0x3040 && c <= 0x30FF)
            || (c >= 0x31F0 && c <= 0x31FF) || (c >= 0xAC00 && c <= 0xD7AF) || (c >= 0x1100 && c <= 0x11FF)
            || (c >= 0xFF00 && c <= 0xFFEF);
    }
}
