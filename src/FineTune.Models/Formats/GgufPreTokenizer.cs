using System.Text;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>The pre-tokenizer llama.cpp is told to run (<c>tokenizer.ggml.pre</c>) and what it will still do differently.</summary>
public sealed record GgufPreTokenizerMatch(string Name, IReadOnlyList<string> Notes);

/// <summary>
/// Finds llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json. llama.cpp does not
/// read the regexes from a GGUF: <c>tokenizer.ggml.pre</c> names a built-in list of split regexes
/// (llama-vocab.cpp), so the name must be the one whose list splits text as the tokenizer.json does, or
/// llama.cpp feeds the model token sequences it never saw in training. The match is by the regexes
/// themselves: the Split patterns of the pre-tokenizer, in order (ByteLevel with use_regex adds GPT-2's,
/// Digits adds <c>\p{N}</c> or <c>\p{N}+</c>), compared with the HF spelling of each list llama.cpp has.
/// </summary>
public static class GgufPreTokenizer
{
    private const string Contractions = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)";
    // llama.cpp's rewrite of the same contractions (its regex engine has no inline case-insensitivity).
    private const string ContractionsSpelledOut = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

    public const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    public const string Llama3 = Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string Qwen2 = Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen35 = Contractions + @"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string O200k = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+" + Contractions + @"?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*" + Contractions + @"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Tekken = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string DeepSeekV3Words = @"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string KanjiKana = "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+";
    private const string CjkHangul = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+";
    // The cased letters of DeepSeek LLM's tokenizer.json. llama.cpp's copy has six of them NFC-normalized
    // (U+1F7D→U+03CE, U+1FBE→U+03B9, U+1FD3→U+0390, U+1FDB→U+038A, U+2126→U+03A9, U+212A→K); both spellings are accepted.
    private const string DeepSeekLetters = @"\s?[A-Za-z" +
        "\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F" +
        "\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD" +
        "\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57" +
        "\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC" +
        "\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F" +
        "\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787" +
        "\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A" +
        "\U00010400-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF\U0001E900-\U0001E943]+";
    private const string DeepSeekPunctuation = @"\s?[!-/:-~" + "\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+";

    /// <summary>
    /// llama.cpp's byte-level BPE pre-tokenizers, each as the regex list of the tokenizer.json it
    /// reproduces, and whether llama.cpp skips the merges for a word that is a vocabulary entry (set by
    /// the name; a GGUF has no key for it). Where several names share one list, the first is used
    /// (llama-bpe and smaug-bpe differ only in ignore_merges, so that flag picks between them).
    /// </summary>
    private static readonly (string Name, string[] Regexes, bool IgnoresMerges)[] Known =
    [
        ("gpt-2", [Gpt2], false),
        ("llama-bpe", [Llama3], true),
        ("smaug-bpe", [Llama3], false),
        ("qwen2", [Qwen2], false),
        ("qwen35", [Qwen35], false),
        ("gpt-4o", [O200k], false),
        ("tekken", [Tekken], true),
        ("deepseek-v3", [@"\p{N}{1,3}", KanjiKana, DeepSeekV3Words], false),
        ("deepseek-llm", ["[\r\n]", DeepSeekLetters, DeepSeekPunctuation, @"\s+$", CjkHangul, @"\p{N}+"], false),
        ("deepseek-llm", ["[\r\n]", NfcOfSingletons(DeepSeekLetters), DeepSeekPunctuation, @"\s+$", CjkHangul, @"\p{N}+"], false),
        ("deepseek-coder", ["[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", CjkHangul, @"\p{N}"], false),
        ("starcoder", [@"\p{N}", Gpt2], false),
        ("seed-coder", [Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"], false),
        ("tiny_aya", [@"\d{1,3}(?=(?:\d{3})*\b)", O200k], false),
        ("jais-2", [Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"], false),
        ("minicpm5", [@"\p{N}{1,3}", Contractions + @"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"], true),
        ("exaone-moe", [Contractions + @"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"], false),
        ("ufakzeka", [@"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"], false),
    ];

    private static readonly (string Name, string[] Regexes, bool IgnoresMerges)[] KnownCanonical =
        Known.Select(k => (k.Name, k.Regexes.Select(Canonical).ToArray(), k.IgnoresMerges)).ToArray();

    /// <summary>The names FineTune can write, for messages and docs.</summary>
    public static IReadOnlyList<string> Names { get; } = Known.Select(k => k.Name).Distinct().ToArray();

    /// <summary>
    /// The llama.cpp pre-tokenizer for <paramref name="tokenizerJson"/> (read from <paramref name="path"/>);
    /// <see cref="ModelFormatException"/> naming the file and the regexes when llama.cpp has none that splits the same way.
    /// </summary>
    public static GgufPreTokenizerMatch Detect(string path, JsonObject tokenizerJson)
    {
        var steps = new List<(string Regex, string Where)>();
        bool byteLevel = false;
        Collect(path, tokenizerJson["pre_tokenizer"], "pre_tokenizer", steps, ref byteLevel);
        if (!byteLevel)
            throw new ModelFormatException(path, "pre_tokenizer has no ByteLevel step; GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, DeepSeek, …) only.");

        var regexes = steps.Select(s => Canonical(s.Regex)).ToArray();
        var candidates = KnownCanonical.Where(k => k.Regexes.SequenceEqual(regexes)).ToList();
        if (candidates.Count == 0)
        {
            var listed = string.Join(", ", steps.Select(s => $"{s.Where} \"{s.Regex}\""));
            throw new ModelFormatException(path,
                $"the pre-tokenizer splits text with {(steps.Count == 0 ? "no regex" : listed)}, which matches none of llama.cpp's byte-level BPE " +
                $"pre-tokenizers ({string.Join(", ", Names)}); llama.cpp would split text differently from this tokenizer, so no GGUF is written. " +
                "Export the HF format (export.formats: [hf]) for this model.");
        }

        bool hfIgnoresMerges = tokenizerJson["model"]?["ignore_merges"] is JsonValue v && v.TryGetValue<bool>(out var b) && b;
        var chosen = candidates.FirstOrDefault(c => c.IgnoresMerges == hfIgnoresMerges);
        var notes = new List<string>();
        if (chosen.Name is null)
        {
            chosen = candidates[0];
            notes.Add($"tokenizer.json has model.ignore_merges {(hfIgnoresMerges ? "true" : "false")} but llama.cpp's \"{chosen.Name}\" " +
                $"{(chosen.IgnoresMerges ? "skips" : "applies")} the merges of a word that is one vocabulary entry; such words may get other ids in llama.cpp");
        }
        if (NormalizerSteps(tokenizerJson["normalizer"]) is { Count: > 0 } normalizers)
            notes.Add($"llama.cpp does not run the tokenizer's normalizer ({string.Join(", ", normalizers)}); text it would change (e.g. decomposed accents for NFC) tokenizes differently in llama.cpp");
        return new GgufPreTokenizerMatch(chosen.Name, notes);
    }

    private static void Collect(string path, JsonNode? node, string where, List<(string, string)> steps, ref bool byteLevel)
    {
        if (node is null) return;
        if (node is not JsonObject o || o["type"]?.GetValue<string>() is not { } type)
            throw new ModelFormatException(path, $"{where}: expected an object with a \"type\".");
        if (byteLevel)
            throw new ModelFormatException(path, $"{where}: a {type} step after ByteLevel; llama.cpp maps bytes after all splits, so GGUF export needs ByteLevel last.");
        switch (type)
        {
            case "Sequence":
                var list = o["pretokenizers"] as JsonArray ?? throw new ModelFormatException(path, $"{where}.pretokenizers: expected an array.");
                for (int i = 0; i < list.Count; i++)
                    Collect(path, list[i], $"{where}.pretokenizers[{i}]", steps, ref byteLevel);
                break;
            case "Split":
            {
                var regex = o["pattern"]?["Regex"]?.GetValue<string>()
                    ?? throw new ModelFormatException(path, $"{where}.pattern: a Split on a literal string has no llama.cpp pre-tokenizer; GGUF export needs regex splits.");
                var behavior = o["behavior"]?.GetValue<string>() ?? "Isolated";
                bool invert = o["invert"] is JsonValue iv && iv.TryGetValue<bool>(out var inv) && inv;
                // llama.cpp keeps every piece, matched or not (Isolated). Removed+invert keeps only the
                // matches, which is the same for the GPT-style patterns whose last alternative \s+ leaves
                // nothing unmatched (each such list in the table is of that kind).
                bool same = (behavior == "Isolated" && !invert) || (behavior == "Removed" && invert && Canonical(regex).EndsWith(@"|\s+", StringComparison.Ordinal));
                if (!same)
                    throw new ModelFormatException(path, $"{where}: Split \"{regex}\" with behavior {behavior}{(invert ? ", invert" : "")} has no llama.cpp equivalent (llama.cpp isolates every match).");
                steps.Add((regex, $"{where}.pattern.Regex"));
                break;
            }
            case "Digits":
                bool individual = o["individual_digits"] is JsonValue dv && dv.TryGetValue<bool>(out var d) && d;
                steps.Add((individual ? @"\p{N}" : @"\p{N}+", where));
                break;
            case "ByteLevel":
                if (o["add_prefix_space"] is JsonValue pv && pv.TryGetValue<bool>(out var prefix) && prefix)
                    throw new ModelFormatException(path, $"{where}.add_prefix_space is true; llama.cpp never adds a prefix space to byte-level BPE text, so the GGUF would tokenize differently.");
                if (o["use_regex"] is not JsonValue rv || !rv.TryGetValue<bool>(out var useRegex) || useRegex)
                    steps.Add((Gpt2, $"{where} (use_regex: GPT-2's regex)"));
                byteLevel = true;
                break;
            default:
                throw new ModelFormatException(path, $"{where}.type: pre-tokenizer {type} has no llama.cpp byte-level BPE equivalent (supported: Split with a regex, Digits, ByteLevel, Sequence).");
        }
    }

    private static List<string> NormalizerSteps(JsonNode? node)
    {
        var names = new List<string>();
        if (node is not JsonObject o || o["type"]?.GetValue<string>() is not { } type) return names;
        if (type == "Sequence" && o["normalizers"] is JsonArray list)
            foreach (var n in list) names.AddRange(NormalizerSteps(n));
        else
            names.Add(type);
        return names;
    }

    /// <summary>
    /// One spelling per regex: <c>\r</c>, <c>\n</c>, <c>\t</c> escapes as the characters they stand for
    /// (tokenizer.json files use both), and llama.cpp's spelled-out contractions as <c>(?i:…)</c>.
    /// </summary>
    private static string Canonical(string regex)
    {
        var sb = new StringBuilder(regex.Length);
        for (int i = 0; i < regex.Length; i++)
        {
            if (regex[i] == '\\' && i + 1 < regex.Length)
            {
                char e = regex[i + 1];
                if (e is 'r' or 'n' or 't') { sb.Append(e == 'r' ? '\r' : e == 'n' ? '\n' : '\t'); i++; continue; }
                sb.Append('\\').Append(e);
                i++;
                continue;
            }
            sb.Append(regex[i]);
        }
        return sb.ToString().Replace(ContractionsSpelledOut, Contractions, StringComparison.Ordinal);
    }

    private static string NfcOfSingletons(string s) => s
        .Replace('\u1F7D', '\u03CE').Replace('\u1FBE', '\u03B9').Replace('\u1FD3', '\u0390')
        .Replace('\u1FDB', '\u038A').Replace('\u2126', '\u03A9').Replace('\u212A', 'K');
}
