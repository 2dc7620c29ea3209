using System.Text;
using System.Text.RegularExpressions;

namespace FineTune.Tokenizers;

/// <summary>A normalizer step; returns the same instance when nothing changes.</summary>
internal interface INormalizer
{
    string Normalize(string text);
}

internal sealed class UnicodeFormNormalizer(NormalizationForm form) : INormalizer
{
    public string Normalize(string text) => UnicodeNormalization.Normalize(text, form);
}

/// <summary>
/// Rust's per-char <c>char::to_lowercase</c>: the simple lowercase mapping, except U+0130 (İ) which
/// lowers to "i" + U+0307; no context rules (Σ always becomes σ).
/// </summary>
internal sealed class LowercaseNormalizer : INormalizer
{
    public string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            if (rune.Value == 0x130) sb.Append("i\u0307");
            else sb.Append(Rune.ToLowerInvariant(rune));
        }
        return sb.ToString();
    }
}

/// <summary>Strips Unicode whitespace on the left and/or right.</summary>
internal sealed class StripNormalizer(bool left, bool right) : INormalizer
{
    public string Normalize(string text)
    {
        var span = text.AsSpan();
        if (left) span = span.TrimStart();
        if (right) span = span.TrimEnd();
        return span.Length == text.Length ? text : span.ToString();
    }
}

/// <summary>Prepends a string to non-empty text (SentencePiece's dummy prefix, "▁").</summary>
internal sealed class PrependNormalizer(string prefix) : INormalizer
{
    public string Normalize(string text) => text.Length == 0 ? text : prefix + text;
}

internal sealed class ReplaceNormalizer : INormalizer
{
    private readonly string? _literal;
    private readonly Regex? _regex;
    private readonly string _content;

    public ReplaceNormalizer(string? literal, Regex? regex, string content) { _literal = literal; _regex = regex; _content = content; }

    public string Normalize(string text) => Apply(text);

    public string Apply(string text)
    {
        if (_literal != null) return _literal.Length == 0 ? text : text.Replace(_literal, _content, StringComparison.Ordinal);
        // Replacement text is literal in HF (no $1 expansion).
        return _regex!.Replace(text, _ => _content);
    }
}

internal sealed class SequenceNormalizer(IReadOnlyList<INormalizer> steps) : INormalizer
{
    public string Normalize(string text)
    {
        foreach (var step in steps) text = step.Normalize(text);
        return text;
    }
}
