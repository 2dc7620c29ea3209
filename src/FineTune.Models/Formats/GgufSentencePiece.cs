using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>How llama.cpp's SentencePiece tokenizer (<c>tokenizer.ggml.model = llama</c>) must run a tokenizer.json.</summary>
/// <param name="AddSpacePrefix">tokenizer.ggml.add_space_prefix: "▁" before the text (Llama 2, Mistral v1), not for Gemma.</param>
/// <param name="UnknownToken">model.unk_token, written as tokenizer.ggml.unknown_token_id.</param>
public sealed record GgufSentencePieceLayout(bool AddSpacePrefix, string? UnknownToken);

/// <summary>
/// SentencePiece-style tokenizers as Hugging Face writes them in tokenizer.json (Llama 2, Mistral v1, Gemma 2/3): a BPE
/// model with <c>byte_fallback</c>, spaces turned into "▁" by the normalizer (<c>Replace</c>, with <c>Prepend</c> for the
/// leading space) or by a <c>Metaspace</c> pre-tokenizer. llama.cpp runs them as SentencePiece does: it escapes spaces as
/// "▁", optionally prepends one (<c>add_space_prefix</c>), starts from single characters and repeatedly joins the adjacent
/// pair whose joined text is a token of the highest score (leftmost on ties), and falls back to &lt;0xXX&gt; byte tokens
/// for characters outside the vocabulary. HF's BPE joins the pair of the lowest merge rank instead; both agree when each
/// token's score orders tokens as their first merge does, so the score of a token is −(rank of the first merge that
/// produces it). (llama.cpp's converter reads the scores from tokenizer.model; a tokenizer.json alone carries only the
/// merges, from which HF derived them.)
/// </summary>
public static class GgufSentencePiece
{
    private const string Space = "\u2581";

    /// <summary>True when the tokenizer.json is a BPE model with byte fallback (the SentencePiece family, not byte-level BPE).</summary>
    public static bool IsSentencePieceBpe(JsonObject root) =>
        root["model"] is JsonObject m && (m["type"]?.GetValue<string>() ?? "BPE") == "BPE"
        && m["byte_fallback"] is JsonValue b && b.TryGetValue<bool>(out var fallback) && fallback;

    /// <summary>
    /// Checks that llama.cpp's SentencePiece tokenizer splits text as this tokenizer.json does and says how to configure it;
    /// anything else (another normalizer or pre-tokenizer) is an error naming the file and the JSON path.
    /// </summary>
    public static GgufSentencePieceLayout Detect(string path, JsonObject root)
    {
        bool prepend = false, replace = false;
        foreach (var (n, where) in Flatten(root["normalizer"], "normalizer", "normalizers"))
        {
            var type = n["type"]?.GetValue<string>();
            if (type == "Prepend" && n["prepend"]?.GetValue<string>() == Space)
                prepend = true;
            else if (type == "Replace" && n["pattern"]?["String"]?.GetValue<string>() == " " && n["content"]?.GetValue<string>() == Space)
                replace = true;
            else
                throw Unsupported(path, $"{where} is {Describe(n)}; llama.cpp's SentencePiece tokenizer only replaces spaces with \"▁\" and prepends one");
        }
        bool metaspace = false, metaspacePrefix = false;
        foreach (var (p, where) in Flatten(root["pre_tokenizer"], "pre_tokenizer", "pretokenizers"))
        {
            var type = p["type"]?.GetValue<string>();
            if (type == "Metaspace" && (p["replacement"]?.GetValue<string>() ?? Space) == Space)
            {
                if (p["split"] is JsonValue split && split.GetValue<bool>())
                    throw Unsupported(path, $"{where} is a Metaspace with \"split\": true (pieces cut at every \"▁\"); llama.cpp's SentencePiece tokenizer does not cut the text");
                metaspace = true;
                var scheme = p["prepend_scheme"]?.GetValue<string>();
                metaspacePrefix = scheme is null ? p["add_prefix_space"]?.GetValue<bool>() ?? true : scheme != "never";
            }
            // Gemma splits at " " after its normalizer has replaced every space: nothing is left to split.
            else if (type == "Split" && p["pattern"]?["String"]?.GetValue<string>() == " " && replace)
                continue;
            else
                throw Unsupported(path, $"{where} is {Describe(p)}; llama.cpp's SentencePiece tokenizer runs no pre-tokenizer but a Metaspace without split");
        }
        if (!replace && !metaspace)
            throw Unsupported(path, "neither the normalizer nor the pre-tokenizer turns spaces into \"▁\", as SentencePiece tokenizers do");
        var unk = root["model"]?["unk_token"] is JsonValue u && u.TryGetValue<string>(out var s) ? s : null;
        return new GgufSentencePieceLayout(prepend || metaspacePrefix, unk);
    }

    /// <summary>
    /// The score of each token id: −(rank of the first merge whose joined text is the token), 0 for tokens no merge
    /// produces (single characters, byte tokens, added tokens), as SentencePiece scores its byte and control pieces.
    /// </summary>
    public static float[] Scores(HfTokenizerFile tok, int vocabSize)
    {
        var firstRank = new Dictionary<string, int>(StringComparer.Ordinal);
        if (tok.Root["model"]?["merges"] is JsonArray merges)
            for (int rank = 0; rank < merges.Count; rank++)
            {
                var joined = merges[rank] switch
                {
                    JsonArray pair => pair[0]!.GetValue<string>() + pair[1]!.GetValue<string>(),
                    JsonValue v when v.GetValue<string>() is var m && m.IndexOf(' ') is var space and > 0 => m.Remove(space, 1),
                    _ => null,
                };
                if (joined is not null)
                    firstRank.TryAdd(joined, rank);
            }
        var scores = new float[vocabSize];
        for (int i = 0; i < vocabSize && i < tok.Tokens.Count; i++)
            if (tok.Tokens[i] is { Added: false } t && firstRank.TryGetValue(t.Content, out int r))
                scores[i] = -r;
        return scores;
    }

    /// <summary>
    /// llama.cpp's type of each id: byte tokens &lt;0xXX&gt; of the model vocabulary BYTE, the unknown token UNKNOWN, added
    /// tokens CONTROL when special and USER_DEFINED otherwise (llama.cpp, like HF, matches those in raw text before the
    /// model runs), ids without a token UNUSED, the rest NORMAL.
    /// </summary>
    public static int TokenType(HfToken? t, string? unknownToken)
    {
        if (t is null) return GgufExporter.TokenUnused;
        if (t.Content == unknownToken) return GgufExporter.TokenUnknown;
        if (t.Added) return t.Special ? GgufExporter.TokenControl : GgufExporter.TokenUserDefined;
        return IsByteToken(t.Content) ? GgufExporter.TokenByte : GgufExporter.TokenNormal;
    }

    private static bool IsByteToken(string s) =>
        s.Length == 6 && s.StartsWith("<0x", StringComparison.Ordinal) && s[5] == '>' && Uri.IsHexDigit(s[3]) && Uri.IsHexDigit(s[4]);

    private static IEnumerable<(JsonObject Node, string Where)> Flatten(JsonNode? node, string where, string listKey)
    {
        if (node is not JsonObject o)
            yield break;
        if (o["type"]?.GetValue<string>() == "Sequence" && o[listKey] is JsonArray items)
        {
            for (int i = 0; i < items.Count; i++)
                foreach (var inner in Flatten(items[i], $"{where}.{listKey}[{i}]", listKey))
                    yield return inner;
            yield break;
        }
        yield return (o, where);
    }

    private static string Describe(JsonObject n) => n.ToJsonString() is { Length: <= 120 } s ? s : n["type"]?.GetValue<string>() ?? "(no type)";

    private static ModelFormatException Unsupported(string path, string what) =>
        new(path, $"the tokenizer is SentencePiece-style BPE (byte_fallback), but {what}. GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, DeepSeek, …) and SentencePiece-style BPE tokenizers whose spaces become \"▁\" (Llama 2, Mistral v1, Gemma 2/3).");
}
