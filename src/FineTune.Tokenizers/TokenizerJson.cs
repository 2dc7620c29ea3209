using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FineTune.Tokenizers;

/// <summary>Builds the pipeline components from a parsed tokenizer.json; errors name the file and the JSON path.</summary>
internal sealed class TokenizerJson
{
    private readonly string _path;

    private TokenizerJson(string path) { _path = path; }

    public static Tokenizer Load(string path)
    {
        if (!File.Exists(path))
            throw new TokenizerFormatException(path, "file not found; pass a tokenizer.json or a model directory that contains one.");
        var reader = new TokenizerJson(path);
        byte[] bytes = File.ReadAllBytes(path);
        try
        {
            return reader.Build(bytes);
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(path, $"invalid JSON at line {e.LineNumber + 1}, byte {e.BytePositionInLine}: {e.Message}", e);
        }
    }

    // The model's vocab and merges (most of the file) are streamed straight into their tables; the
    // small sections are parsed as DOM elements.
    private Tokenizer Build(byte[] utf8)
    {
        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions { MaxDepth = 256 });
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            throw Error("$", "expected a JSON object (a Hugging Face tokenizer.json).");
        var sections = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        RawModel? rawModel = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string name = reader.GetString()!;
            reader.Read();
            if (name == "model" && reader.TokenType == JsonTokenType.StartObject) rawModel = ReadModel(ref reader);
            else using (var doc = JsonDocument.ParseValue(ref reader)) sections[name] = doc.RootElement.Clone();
        }
        var root = JsonSerializer.SerializeToElement(sections);
        return Build(root, rawModel ?? throw Error("model", "missing; only BPE models are supported."));
    }

    private sealed class RawModel
    {
        public Dictionary<string, int>? Vocab;
        public List<(string, string)> Merges = new();
        public Dictionary<string, JsonElement> Options = new(StringComparer.Ordinal);
    }

    private RawModel ReadModel(ref Utf8JsonReader reader)
    {
        var model = new RawModel();
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            string name = reader.GetString()!;
            reader.Read();
            if (name == "vocab" && reader.TokenType == JsonTokenType.StartObject)
            {
                var vocab = new Dictionary<string, int>(1 << 16, StringComparer.Ordinal);
                while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
                {
                    string token = reader.GetString()!;
                    reader.Read();
                    if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt32(out int id))
                        throw Error($"model.vocab[\"{token}\"]", "id is not an integer.");
                    vocab[token] = id;
                }
                model.Vocab = vocab;
            }
            else if (name == "merges" && reader.TokenType == JsonTokenType.StartArray)
            {
                int k = 0;
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType == JsonTokenType.String)
                    {
                        string s = reader.GetString()!;
                        int space = s.IndexOf(' ');
                        if (space <= 0 || space == s.Length - 1 || s.IndexOf(' ', space + 1) >= 0)
                            throw Error($"model.merges[{k}]", $"\"{s}\" is not two tokens separated by one space.");
                        model.Merges.Add((s[..space], s[(space + 1)..]));
                    }
                    else if (reader.TokenType == JsonTokenType.StartArray)
                    {
                        string? a = reader.Read() && reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
                        string? b = reader.Read() && reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
                        if (a == null || b == null || !reader.Read() || reader.TokenType != JsonTokenType.EndArray)
                            throw Error($"model.merges[{k}]", "expected [\"a\", \"b\"].");
                        model.Merges.Add((a, b));
                    }
                    else throw Error($"model.merges[{k}]", "expected \"a b\" or [\"a\", \"b\"].");
                    k++;
                }
            }
            else using (var doc = JsonDocument.ParseValue(ref reader)) model.Options[name] = doc.RootElement.Clone();
        }
        return model;
    }

    private TokenizerFormatException Error(string where, string problem) =>
        new(_path, $"{where}: {problem}");

    private Tokenizer Build(JsonElement root, RawModel rawModel)
    {
        var normalizer = Optional(root, "normalizer") is { } n ? Normalizer(n, "normalizer") : null;
        var addedTokens = new List<AddedToken>();
        if (Optional(root, "added_tokens") is { ValueKind: JsonValueKind.Array } added)
        {
            int k = 0;
            foreach (var t in added.EnumerateArray())
            {
                string where = $"added_tokens[{k++}]";
                addedTokens.Add(new AddedToken(
                    Int(t, "id", where), Str(t, "content", where) ?? throw Error(where, "missing \"content\"."),
                    Bool(t, "special", false), Bool(t, "single_word", false), Bool(t, "lstrip", false),
                    Bool(t, "rstrip", false), Bool(t, "normalized", !Bool(t, "special", false))));
            }
        }
        var model = Model(rawModel);
        addedTokens = AssignAddedTokenIds(addedTokens, model);
        IPreTokenizer? pre = Optional(root, "pre_tokenizer") is { } p ? PreTokenizer(p, "pre_tokenizer") : null;
        // ByteLevel as the last step: the model maps bytes while it builds symbols (no per-piece strings).
        var lastStep = pre is SequencePreTokenizer seq && seq.Steps.Count > 0 ? seq.Steps[^1] : pre;
        if (lastStep is ByteLevelPreTokenizer byteLevel)
        {
            byteLevel.MapsBytes = false;
            model.ByteLevelInput = true;
        }
        var streaming = StreamingPattern(pre);
        var post = Optional(root, "post_processor") is { } pp ? PostProcessor(pp, "post_processor", model, addedTokens) : null;
        var decoder = Optional(root, "decoder") is { } d ? Decoder(d, "decoder") : null;
        return new Tokenizer(normalizer, pre, model, post, decoder, new AddedVocabulary(addedTokens, normalizer), streaming);
    }

    /// <summary>
    /// HF ignores the ids written in added_tokens and re-adds the tokens in file order: a content already
    /// known (an earlier added token, then the model vocab) keeps that id; a new one gets the model's
    /// vocab count, or one past the largest added id once that is beyond the model vocab. A repeated
    /// content keeps its first id and takes the later flags.
    /// </summary>
    private static List<AddedToken> AssignAddedTokenIds(List<AddedToken> fromFile, BpeModel model)
    {
        int vocabCount = model.Vocab.Count;
        var byContent = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, AddedToken>();
        var order = new List<int>();
        int? max = null;
        foreach (var token in fromFile)
        {
            if (token.Content.Length == 0) continue;
            int id;
            if (byContent.TryGetValue(token.Content, out int known)) id = known;
            else if (model.Vocab.TryGetValue(token.Content, out int inVocab)) id = inVocab;
            else id = max is int m && (m >= vocabCount || vocabCount == 0) ? m + 1 : vocabCount;
            byContent[token.Content] = id;
            if (!byId.ContainsKey(id)) order.Add(id);
            byId[id] = token with { Id = id };
            max = max is int mm ? Math.Max(mm, id) : id;
        }
        return order.Select(id => byId[id]).ToList();
    }

    // The common shapes Split(GPT-2 family, Isolated) + ByteLevel and ByteLevel(use_regex) alone,
    // without prefix spaces, can stream matches straight into the model.
    private static Gpt2SplitPattern? StreamingPattern(IPreTokenizer? pre)
    {
        if (pre is ByteLevelPreTokenizer { MapsBytes: false, AddPrefixSpace: false, UseRegex: true }) return Gpt2SplitPattern.ForByteLevel;
        if (pre is SequencePreTokenizer { Steps: [SplitPreTokenizer split, ByteLevelPreTokenizer { MapsBytes: false, AddPrefixSpace: false, UseRegex: false }] })
            return split.IsolatingGpt2Pattern;
        return null;
    }

    private static JsonElement? Optional(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static string? Str(JsonElement e, string name, string where) =>
        Optional(e, name) is { } v ? (v.ValueKind == JsonValueKind.String ? v.GetString() : null) : null;

    private static bool Bool(JsonElement e, string name, bool fallback) =>
        Optional(e, name) is { } v && (v.ValueKind == JsonValueKind.True || v.ValueKind == JsonValueKind.False) ? v.GetBoolean() : fallback;

    private int Int(JsonElement e, string name, string where) =>
        Optional(e, name) is { ValueKind: JsonValueKind.Number } v && v.TryGetInt32(out int i) ? i : throw Error(where, $"missing or non-integer \"{name}\".");

    private string Type(JsonElement e, string where) =>
        Str(e, "type", where) ?? throw Error(where, "missing \"type\".");

    private BpeModel Model(RawModel raw)
    {
        var m = JsonSerializer.SerializeToElement(raw.Options);
        string type = Str(m, "type", "model") ?? "BPE";
        if (type != "BPE") throw Error("model.type", $"\"{type}\" is not supported; FineTune reads BPE tokenizers (GPT-2, Llama, Qwen, Mistral families).");
        if (Optional(m, "dropout") is { ValueKind: JsonValueKind.Number } drop && drop.GetDouble() != 0)
            throw Error("model.dropout", "BPE dropout is random at encode time; set it to null for a deterministic tokenizer.");
        var vocab = raw.Vocab ?? throw Error("model.vocab", "missing.");
        var options = new BpeOptions(
            Str(m, "unk_token", "model"), Bool(m, "fuse_unk", false), Bool(m, "byte_fallback", false),
            Bool(m, "ignore_merges", false), Str(m, "continuing_subword_prefix", "model"), Str(m, "end_of_word_suffix", "model"));
        return new BpeModel(vocab, raw.Merges, options, _path);
    }

    private INormalizer Normalizer(JsonElement e, string where)
    {
        string type = Type(e, where);
        switch (type)
        {
            case "NFC": return new UnicodeFormNormalizer(NormalizationForm.FormC);
            case "NFD": return new UnicodeFormNormalizer(NormalizationForm.FormD);
            case "NFKC": return new UnicodeFormNormalizer(NormalizationForm.FormKC);
            case "NFKD": return new UnicodeFormNormalizer(NormalizationForm.FormKD);
            case "Lowercase": return new LowercaseNormalizer();
            case "Strip": return new StripNormalizer(Bool(e, "strip_left", true), Bool(e, "strip_right", true));
            case "Prepend": return new PrependNormalizer(Str(e, "prepend", where) ?? throw Error(where, "missing \"prepend\"."));
            case "Replace": return Replace(e, where);
            case "Sequence":
            {
                var list = new List<INormalizer>();
                int k = 0;
                foreach (var item in (Optional(e, "normalizers") ?? throw Error(where, "missing \"normalizers\".")).EnumerateArray())
                    list.Add(Normalizer(item, $"{where}.normalizers[{k++}]"));
                return new SequenceNormalizer(list);
            }
            default:
                throw Error($"{where}.type", $"normalizer \"{type}\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace, Sequence).");
        }
    }

    private ReplaceNormalizer Replace(JsonElement e, string where)
    {
        var pattern = Optional(e, "pattern") ?? throw Error(where, "missing \"pattern\".");
        string content = Str(e, "content", where) ?? throw Error(where, "missing \"content\".");
        if (Str(pattern, "String", where) is { } literal) return new ReplaceNormalizer(literal, null, content);
        if (Str(pattern, "Regex", where) is { } regex) return new ReplaceNormalizer(null, CompileRegex(regex, where), content);
        throw Error($"{where}.pattern", "expected {\"String\": …} or {\"Regex\": …}.");
    }

    private Regex CompileRegex(string pattern, string where)
    {
        try { return OnigurumaRegex.Create(pattern); }
        catch (RegexSyntaxException ex)
        {
            throw Error(where, $"regex \"{pattern}\" at offset {ex.Offset}: {ex.Message}; FineTune runs Oniguruma's syntax (HF tokenizers' regex engine) without this construct.");
        }
        catch (ArgumentException ex) { throw Error(where, $"regex \"{pattern}\" is not supported: {ex.Message}"); }
    }

    private IPreTokenizer PreTokenizer(JsonElement e, string where)
    {
        string type = Type(e, where);
        switch (type)
        {
            case "ByteLevel":
                return new ByteLevelPreTokenizer(Bool(e, "add_prefix_space", true), Bool(e, "use_regex", true));
            case "Split":
            {
                var pattern = Optional(e, "pattern") ?? throw Error(where, "missing \"pattern\".");
                ISplitMatcher matcher;
                if (Str(pattern, "String", where) is { } literal) matcher = new LiteralMatcher(literal);
                else if (Str(pattern, "Regex", where) is { } regex)
                    matcher = Gpt2SplitPattern.TryCreate(regex) is { } fast ? new Gpt2Matcher(fast) : new RegexMatcher(CompileRegex(regex, $"{where}.pattern"));
                else throw Error($"{where}.pattern", "expected {\"String\": …} or {\"Regex\": …}.");
                return new SplitPreTokenizer(matcher, Behavior(e, where, SplitBehavior.Isolated), Bool(e, "invert", false));
            }
            case "Metaspace":
            {
                string replacement = Str(e, "replacement", where) ?? "\u2581";
                if (replacement.Length != 1) throw Error($"{where}.replacement", "must be a single char.");
                return new MetaspacePreTokenizer(replacement[0], Scheme(e, where), Bool(e, "split", true));
            }
            case "Digits": return StandardPreTokenizers.Digits(Bool(e, "individual_digits", false));
            case "Whitespace": return StandardPreTokenizers.Whitespace();
            case "WhitespaceSplit": return StandardPreTokenizers.WhitespaceSplit();
            case "Punctuation": return StandardPreTokenizers.Punctuation(Behavior(e, where, SplitBehavior.Isolated));
            case "Sequence":
            {
                var list = new List<IPreTokenizer>();
                int k = 0;
                foreach (var item in (Optional(e, "pretokenizers") ?? throw Error(where, "missing \"pretokenizers\".")).EnumerateArray())
                    list.Add(PreTokenizer(item, $"{where}.pretokenizers[{k++}]"));
                return new SequencePreTokenizer(list);
            }
            default:
                throw Error($"{where}.type", $"pre-tokenizer \"{type}\" is not supported (supported: ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, Sequence).");
        }
    }

    private PrependScheme Scheme(JsonElement e, string where)
    {
        if (Str(e, "prepend_scheme", where) is { } s)
            return s switch
            {
                "always" => PrependScheme.Always,
                "first" => PrependScheme.First,
                "never" => PrependScheme.Never,
                _ => throw Error($"{where}.prepend_scheme", $"\"{s}\" is not always, first or never."),
            };
        // Older files: add_prefix_space true means "always".
        return Bool(e, "add_prefix_space", true) ? PrependScheme.Always : PrependScheme.Never;
    }

    private SplitBehavior Behavior(JsonElement e, string where, SplitBehavior fallback)
    {
        var s = Str(e, "behavior", where);
        return s switch
        {
            null => fallback,
            "Removed" => SplitBehavior.Removed,
            "Isolated" => SplitBehavior.Isolated,
            "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
            "MergedWithNext" => SplitBehavior.MergedWithNext,
            "Contiguous" => SplitBehavior.Contiguous,
            _ => throw Error($"{where}.behavior", $"\"{s}\" is not Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous."),
        };
    }

    private IPostProcessor? PostProcessor(JsonElement e, string where, BpeModel model, List<AddedToken> added)
    {
        string type = Type(e, where);
        switch (type)
        {
            case "ByteLevel": return null; // offsets only; ids unchanged
            case "TemplateProcessing":
            {
                var specials = new Dictionary<string, int[]>(StringComparer.Ordinal);
                if (Optional(e, "special_tokens") is { ValueKind: JsonValueKind.Object } st)
                    foreach (var entry in st.EnumerateObject())
                        specials[entry.Name] = (Optional(entry.Value, "ids") ?? throw Error($"{where}.special_tokens.{entry.Name}", "missing \"ids\"."))
                            .EnumerateArray().Select(x => x.GetInt32()).ToArray();
                var parts = new List<TemplatePart>();
                int k = 0;
                foreach (var item in (Optional(e, "single") ?? throw Error(where, "missing \"single\".")).EnumerateArray())
                {
                    string at = $"{where}.single[{k++}]";
                    if (Optional(item, "SpecialToken") is { } sp)
                    {
                        string id = Str(sp, "id", at) ?? throw Error(at, "missing \"id\".");
                        parts.Add(new TemplatePart(specials.TryGetValue(id, out var ids) ? ids
                            : throw Error(at, $"special token \"{id}\" is not listed in {where}.special_tokens.")));
                    }
                    else if (Optional(item, "Sequence") is { } sq)
                    {
                        if (Str(sq, "id", at) != "A") throw Error(at, "a single-sequence template can only use sequence A.");
                        parts.Add(new TemplatePart(null));
                    }
                    else throw Error(at, "expected SpecialToken or Sequence.");
                }
                return new TemplateProcessor(parts);
            }
            case "BertProcessing":
            case "RobertaProcessing":
            {
                int IdOf(string name) => Optional(e, name) is { ValueKind: JsonValueKind.Array } pair && pair.GetArrayLength() == 2
                    ? pair[1].GetInt32() : throw Error($"{where}.{name}", "expected [token, id].");
                return new ClsSepProcessor(IdOf("cls"), IdOf("sep"));
            }
            case "Sequence":
            {
                var list = new List<IPostProcessor>();
                int k = 0;
                foreach (var item in (Optional(e, "processors") ?? throw Error(where, "missing \"processors\".")).EnumerateArray())
                    if (PostProcessor(item, $"{where}.processors[{k++}]", model, added) is { } step) list.Add(step);
                return list.Count == 0 ? null : new SequenceProcessor(list);
            }
            default:
                throw Error($"{where}.type", $"post-processor \"{type}\" is not supported (supported: TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence).");
        }
    }

    private IDecoder Decoder(JsonElement e, string where)
    {
        string type = Type(e, where);
        switch (type)
        {
            case "ByteLevel": return new ByteLevelDecoder();
            case "Metaspace":
            {
                string replacement = Str(e, "replacement", where) ?? "\u2581";
                if (replacement.Length != 1) throw Error($"{where}.replacement", "must be a single char.");
                return new MetaspaceDecoder(replacement[0], Scheme(e, where));
            }
            case "ByteFallback": return new ByteFallbackDecoder();
            case "Fuse": return new FuseDecoder();
            case "Strip":
            {
                string content = Str(e, "content", where) ?? " ";
                if (content.Length != 1) throw Error($"{where}.content", "must be a single char.");
                return new StripDecoder(content[0], Int(e, "start", where), Int(e, "stop", where));
            }
            case "Replace": return new ReplaceDecoder(Replace(e, where));
            case "BPEDecoder": return new BpeSuffixDecoder(Str(e, "suffix", where) ?? "</w>");
            case "Sequence":
            {
                var list = new List<IDecoder>();
                int k = 0;
                foreach (var item in (Optional(e, "decoders") ?? throw Error(where, "missing \"decoders\".")).EnumerateArray())
                    list.Add(Decoder(item, $"{where}.decoders[{k++}]"));
                return new SequenceDecoder(list);
            }
            default:
                throw Error($"{where}.type", $"decoder \"{type}\" is not supported (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, BPEDecoder, Sequence).");
        }
    }
}
