using FineTune.Tokenizers;

namespace FineTune.Serving;

/// <summary>
/// Generated tokens → text, piece by piece as they arrive, cut before the first stop string. A piece is held back
/// while the text ends in a replacement character (the rest of a multi-byte character is still to come) or in the
/// beginning of a stop string, so the streamed pieces always add up to the final text.
/// </summary>
internal sealed class TextStream(Tokenizer tokenizer, IReadOnlyList<string> stops)
{
    private readonly List<int> _tokens = [];
    private string _text = "";
    private int _shown;

    public bool Stopped { get; private set; }
    public int TokenCount => _tokens.Count;
    public string Text => _text;

    /// <summary>Adds a token; returns the new visible text (maybe empty). After a stop string, ignores further tokens.</summary>
    public string Push(int token)
    {
        if (Stopped) return "";
        _tokens.Add(token);
        _text = tokenizer.Decode(_tokens.ToArray(), skipSpecialTokens: true);
        int cut = -1;
        foreach (string s in stops)
        {
            int i = _text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        if (cut >= 0)
        {
            _text = _text[..cut];
            Stopped = true;
            return Take(_text.Length);
        }
        int visible = _text.EndsWith('\uFFFD') ? _text.Length - 1 : _text.Length;
        visible -= PartialStop(_text[..visible]);
        return Take(visible);
    }

    /// <summary>The rest of the text, at the end.</summary>
    public string Flush() => Take(_text.Length);

    private string Take(int visible)
    {
        if (visible <= _shown) return "";
        string piece = _text[_shown..visible];
        _shown = visible;
        return piece;
    }

    /// <summary>Length of the longest end of <paramref name="text"/> that begins a stop string.</summary>
    private int PartialStop(string text)
    {
        int best = 0;
        foreach (string s in stops)
            for (int n = Math.Min(s.Length - 1, text.Length); n > best; n--)
                if (text.AsSpan(text.Length - n).SequenceEqual(s.AsSpan(0, n))) { best = n; break; }
        return best;
    }
}
