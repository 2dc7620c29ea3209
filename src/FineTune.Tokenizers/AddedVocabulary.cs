using System.Text;

namespace FineTune.Tokenizers;

/// <summary>One entry of tokenizer.json's <c>added_tokens</c>.</summary>
public sealed record AddedToken(int Id, string Content, bool Special, bool SingleWord, bool LStrip, bool RStrip, bool Normalized);

/// <summary>A run of input: an added token (<see cref="Id"/> ≥ 0) or text still to tokenize (-1).</summary>
internal readonly record struct Segment(int Start, int End, int Id);

/// <summary>
/// Splits input on added tokens before anything else, as HF's <c>AddedVocabulary</c>: tokens with
/// <c>normalized: false</c> are found in the raw text, the others in each normalized remainder.
/// Matching is leftmost-longest over a trie; <c>single_word</c>, <c>lstrip</c> and <c>rstrip</c>
/// adjust or reject a match as HF does.
/// </summary>
internal sealed class AddedVocabulary
{
    private sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public AddedToken? Token;
    }

    private readonly Node _raw = new();
    private readonly Node _normalized = new();
    private readonly bool[] _rawFirst = new bool[0x10000];
    private readonly bool[] _normalizedFirst = new bool[0x10000];

    public AddedVocabulary(IReadOnlyList<AddedToken> tokens, INormalizer? normalizer)
    {
        Tokens = tokens;
        foreach (var token in tokens)
        {
            if (token.Content.Length == 0) continue;
            if (token.Normalized)
            {
                string pattern = normalizer?.Normalize(token.Content) ?? token.Content;
                if (pattern.Length == 0) continue;
                Insert(_normalized, _normalizedFirst, pattern, token);
                HasNormalized = true;
            }
            else
            {
                Insert(_raw, _rawFirst, token.Content, token);
                HasRaw = true;
            }
        }
    }

    public IReadOnlyList<AddedToken> Tokens { get; }
    public bool HasRaw { get; }
    public bool HasNormalized { get; }

    private static void Insert(Node root, bool[] first, string pattern, AddedToken token)
    {
        var node = root;
        foreach (char c in pattern)
        {
            node.Children ??= new Dictionary<char, Node>();
            if (!node.Children.TryGetValue(c, out var child)) node.Children[c] = child = new Node();
            node = child;
        }
        // The first entry for a content wins for matching; HF maps content to one id too.
        node.Token ??= token;
        first[pattern[0]] = true;
    }

    public void SplitRaw(ReadOnlySpan<char> text, List<Segment> output) => Split(text, _raw, _rawFirst, output);

    public void SplitNormalized(ReadOnlySpan<char> text, List<Segment> output) => Split(text, _normalized, _normalizedFirst, output);

    private static void Split(ReadOnlySpan<char> text, Node root, bool[] first, List<Segment> output)
    {
        int startOffset = 0;
        int i = 0;
        while (i < text.Length)
        {
            if (!first[text[i]]) { i++; continue; }
            // Longest token starting at i.
            var node = root;
            AddedToken? found = null;
            int foundEnd = 0;
            for (int j = i; j < text.Length && node.Children != null && node.Children.TryGetValue(text[j], out var next); j++)
            {
                node = next;
                if (node.Token != null) { found = node.Token; foundEnd = j + 1; }
            }
            if (found == null) { i++; continue; }
            int start = i, stop = foundEnd;
            i = foundEnd;
            if (found.SingleWord)
            {
                bool startSpace = start == 0 || !EndsWithWordChar(text[..start]);
                bool stopSpace = stop == text.Length || !StartsWithWordChar(text[stop..]);
                if (!startSpace || !stopSpace) continue;
            }
            if (found.LStrip)
            {
                int newStart = start;
                while (newStart > 0 && IsWhiteSpaceBefore(text, newStart, out int w)) newStart -= w;
                start = Math.Max(newStart, startOffset);
            }
            if (found.RStrip)
            {
                while (stop < text.Length && IsWhiteSpaceAt(text, stop, out int w)) stop += w;
                i = Math.Max(i, stop);
            }
            if (startOffset < start) output.Add(new Segment(startOffset, start, -1));
            output.Add(new Segment(start, stop, found.Id));
            startOffset = stop;
        }
        if (startOffset < text.Length) output.Add(new Segment(startOffset, text.Length, -1));
    }

    private static bool IsWhiteSpaceAt(ReadOnlySpan<char> s, int i, out int width)
    {
        Rune.DecodeFromUtf16(s[i..], out var r, out width);
        return Rune.IsWhiteSpace(r);
    }

    private static bool IsWhiteSpaceBefore(ReadOnlySpan<char> s, int end, out int width)
    {
        Rune.DecodeLastFromUtf16(s[..end], out var r, out width);
        return Rune.IsWhiteSpace(r);
    }

    private static bool StartsWithWordChar(ReadOnlySpan<char> s)
    {
        Rune.DecodeFromUtf16(s, out var r, out _);
        return IsWordChar(r);
    }

    private static bool EndsWithWordChar(ReadOnlySpan<char> s)
    {
        Rune.DecodeLastFromUtf16(s, out var r, out _);
        return IsWordChar(r);
    }

    private static bool IsWordChar(Rune r) => WordChars.IsWordChar(r);
}
