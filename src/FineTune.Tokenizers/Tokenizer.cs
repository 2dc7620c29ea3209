using System.Text;
using System.Text.Json;

namespace FineTune.Tokenizers;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> (BPE) read and run exactly as the <c>tokenizers</c> library:
/// added tokens are split out first, each remaining run is normalized, pre-tokenized and
/// byte-pair encoded, and the post-processor adds BOS/EOS when asked. Thread-safe.
/// </summary>
public sealed class Tokenizer
{
    private readonly INormalizer? _normalizer;
    private readonly IPreTokenizer? _preTokenizer;
    private readonly BpeModel _model;
    private readonly IPostProcessor? _postProcessor;
    private readonly IDecoder? _decoder;
    private readonly AddedVocabulary _added;
    private readonly string?[] _idToToken;
    private readonly bool[] _isSpecial;
    private readonly Dictionary<string, int> _addedByContent = new(StringComparer.Ordinal);
    private readonly Gpt2SplitPattern? _streamingSplit;

    internal Tokenizer(INormalizer? normalizer, IPreTokenizer? preTokenizer, BpeModel model,
        IPostProcessor? postProcessor, IDecoder? decoder, AddedVocabulary added, Gpt2SplitPattern? streamingSplit)
    {
        _streamingSplit = streamingSplit;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _model = model;
        _postProcessor = postProcessor;
        _decoder = decoder;
        _added = added;
        int max = -1;
        foreach (var id in model.Vocab.Values) max = Math.Max(max, id);
        foreach (var t in added.Tokens) max = Math.Max(max, t.Id);
        _idToToken = new string?[max + 1];
        _isSpecial = new bool[max + 1];
        foreach (var (token, id) in model.Vocab) if (id >= 0) _idToToken[id] = token;
        foreach (var t in added.Tokens)
        {
            if (t.Id < 0) continue;
            _idToToken[t.Id] = t.Content;
            _isSpecial[t.Id] = t.Special;
            _addedByContent[t.Content] = t.Id;
        }
    }

    /// <summary>Reads a tokenizer.json file.</summary>
    public static Tokenizer FromFile(string tokenizerJsonPath) => TokenizerJson.Load(tokenizerJsonPath);

    /// <summary>
    /// Reads <c>tokenizer.json</c> from a model directory, plus <c>tokenizer_config.json</c> when present
    /// for the BOS/EOS/PAD tokens and the chat template (or <c>chat_template.jinja</c>).
    /// </summary>
    public static Tokenizer FromDirectory(string modelDir)
    {
        string json = Path.Combine(modelDir, "tokenizer.json");
        if (!File.Exists(json))
            throw new TokenizerFormatException(json, "not found; FineTune needs the Hugging Face fast-tokenizer file tokenizer.json in the model directory.");
        var tokenizer = FromFile(json);
        string config = Path.Combine(modelDir, "tokenizer_config.json");
        if (File.Exists(config)) tokenizer.ReadConfig(config);
        string jinja = Path.Combine(modelDir, "chat_template.jinja");
        if (tokenizer.ChatTemplate == null && File.Exists(jinja)) tokenizer.ChatTemplate = File.ReadAllText(jinja);
        return tokenizer;
    }

    public int VocabSize => _idToToken.Length;
    public int? BosTokenId { get; private set; }
    public int? EosTokenId { get; private set; }
    public int? PadTokenId { get; private set; }
    public string? BosToken { get; private set; }
    public string? EosToken { get; private set; }
    public string? PadToken { get; private set; }

    /// <summary>The Jinja chat template from tokenizer_config.json (the "default" one when several are named), if any.</summary>
    public string? ChatTemplate { get; private set; }

    /// <summary>The added tokens of tokenizer.json, in file order.</summary>
    public IReadOnlyList<AddedToken> AddedTokens => _added.Tokens;

    public int? TokenToId(string token)
    {
        if (_addedByContent.TryGetValue(token, out int added)) return added;
        return _model.Vocab.TryGetValue(token, out int id) ? id : null;
    }

    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    /// <summary>True when <paramref name="id"/> is an added token marked special.</summary>
    public bool IsSpecialToken(int id) => id >= 0 && id < _isSpecial.Length && _isSpecial[id];

    public int[] Encode(string text, bool addSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeInto(text, ids);
        if (addSpecialTokens) _postProcessor?.Process(ids);
        return ids.ToArray();
    }

    /// <summary>Encodes many texts on all cores; the result is in input order.</summary>
    public int[][] EncodeBatch(IReadOnlyList<string> texts, bool addSpecialTokens = false)
    {
        var result = new int[texts.Count][];
        // Ranges rather than single items: most texts are short, and per-item scheduling would dominate.
        int chunk = Math.Max(1, Math.Min(256, texts.Count / (Environment.ProcessorCount * 4)));
        Parallel.ForEach(System.Collections.Concurrent.Partitioner.Create(0, texts.Count, chunk), range =>
        {
            for (int i = range.Item1; i < range.Item2; i++) result[i] = Encode(texts[i], addSpecialTokens);
        });
        return result;
    }

    /// <summary>The pre-tokenizer's pieces of raw <paramref name="text"/> (no added tokens, no normalizer), as HF's <c>pre_tokenize_str</c>.</summary>
    internal IReadOnlyList<string> PreTokenize(string text)
    {
        var pieces = new List<Piece> { new(text.AsMemory(), true) };
        _preTokenizer?.PreTokenize(pieces, new List<Piece>());
        return pieces.Select(p => p.Text.ToString()).ToList();
    }

    private void EncodeInto(string text, List<int> ids)
    {
        var pieces = new List<Piece>();
        var scratch = new List<Piece>();
        var segments = new List<Segment>();
        if (_added.HasRaw) _added.SplitRaw(text, segments);
        else if (text.Length > 0) segments.Add(new Segment(0, text.Length, -1));
        List<Segment>? inner = _added.HasNormalized ? new List<Segment>() : null;
        foreach (var seg in segments)
        {
            if (seg.Id >= 0) { ids.Add(seg.Id); continue; }
            ReadOnlyMemory<char> run = text.AsMemory(seg.Start, seg.End - seg.Start);
            if (_normalizer != null) run = _normalizer.Normalize(run.ToString()).AsMemory();
            if (run.Length == 0) continue;
            bool atStart = seg.Start == 0;
            if (inner == null)
            {
                Tokenize(run, atStart, pieces, scratch, ids);
                continue;
            }
            inner.Clear();
            _added.SplitNormalized(run.Span, inner);
            foreach (var sub in inner)
            {
                if (sub.Id >= 0) ids.Add(sub.Id);
                else Tokenize(run[sub.Start..sub.End], atStart && sub.Start == 0, pieces, scratch, ids);
            }
        }
    }

    private void Tokenize(ReadOnlyMemory<char> run, bool atStart, List<Piece> pieces, List<Piece> scratch, List<int> ids)
    {
        if (_streamingSplit is { } pattern)
        {
            // Same pieces as Split(Isolated) + ByteLevel, without materialising them.
            var span = run.Span;
            int i = 0, gap = 0;
            while (i < span.Length)
            {
                int length = pattern.MatchAt(span, i);
                if (length == 0) { i += char.IsHighSurrogate(span[i]) && i + 1 < span.Length && char.IsLowSurrogate(span[i + 1]) ? 2 : 1; continue; }
                if (gap < i) _model.Tokenize(span[gap..i], ids);
                _model.Tokenize(span.Slice(i, length), ids);
                i += length;
                gap = i;
            }
            if (gap < span.Length) _model.Tokenize(span[gap..], ids);
            return;
        }
        if (_preTokenizer == null)
        {
            _model.Tokenize(run.Span, ids);
            return;
        }
        pieces.Clear();
        pieces.Add(new Piece(run, atStart));
        _preTokenizer.PreTokenize(pieces, scratch);
        foreach (var piece in pieces) _model.Tokenize(piece.Text.Span, ids);
    }

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var tokens = new List<string>(ids.Length);
        foreach (int id in ids)
        {
            if (IdToToken(id) is not { } token) continue;
            if (skipSpecialTokens && _isSpecial[id]) continue;
            tokens.Add(token);
        }
        if (_decoder == null) return string.Join(' ', tokens);
        return string.Concat(_decoder.DecodeChain(tokens));
    }

    private void ReadConfig(string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(path, $"invalid JSON at line {e.LineNumber + 1}: {e.Message}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            string? TokenText(string name)
            {
                if (!root.TryGetProperty(name, out var v)) return null;
                return v.ValueKind switch
                {
                    JsonValueKind.String => v.GetString(),
                    JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                    _ => null,
                };
            }
            BosToken = TokenText("bos_token");
            EosToken = TokenText("eos_token");
            PadToken = TokenText("pad_token");
            BosTokenId = BosToken is null ? null : TokenToId(BosToken);
            EosTokenId = EosToken is null ? null : TokenToId(EosToken);
            PadTokenId = PadToken is null ? null : TokenToId(PadToken);
            if (root.TryGetProperty("chat_template", out var template))
            {
                if (template.ValueKind == JsonValueKind.String) ChatTemplate = template.GetString();
                else if (template.ValueKind == JsonValueKind.Array)
                {
                    foreach (var named in template.EnumerateArray())
                        if (named.TryGetProperty("name", out var n) && n.GetString() == "default"
                            && named.TryGetProperty("template", out var t)) ChatTemplate = t.GetString();
                }
            }
        }
    }
}
