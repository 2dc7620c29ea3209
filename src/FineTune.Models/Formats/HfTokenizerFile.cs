using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>A token of a Hugging Face tokenizer.json, by id.</summary>
/// <param name="Added">Listed under added_tokens (chat markers, special tokens).</param>
/// <param name="Special">added_tokens' "special" flag: control tokens that decoding may skip.</param>
public sealed record HfToken(int Id, string Content, bool Added, bool Special);

/// <summary>
/// The parts of a Hugging Face <c>tokenizer.json</c> that model files need: the vocabulary by id (model
/// vocabulary and added tokens), the BPE merges and the model type. Encoding text is the tokenizer
/// layer's job (FineTune.Tokenizers); this reader only serves the scratch generator and GGUF export.
/// </summary>
public sealed class HfTokenizerFile
{
    private HfTokenizerFile(string path, string modelType, HfToken?[] tokens, IReadOnlyList<string> merges, JsonObject root)
    {
        Path = path;
        ModelType = modelType;
        Tokens = tokens;
        Merges = merges;
        Root = root;
    }

    public string Path { get; }

    /// <summary>model.type: BPE, WordPiece, Unigram, WordLevel.</summary>
    public string ModelType { get; }

    /// <summary>Tokens indexed by id; null where an id is unused.</summary>
    public IReadOnlyList<HfToken?> Tokens { get; }

    /// <summary>BPE merges as "left right" strings, in rank order.</summary>
    public IReadOnlyList<string> Merges { get; }

    /// <summary>The parsed JSON (for checks such as the pre-tokenizer).</summary>
    public JsonObject Root { get; }

    /// <summary>Max id + 1, added tokens included.</summary>
    public int VocabSize => Tokens.Count;

    public int? IdOf(string content)
    {
        foreach (var t in Tokens)
            if (t is not null && t.Content == content)
                return t.Id;
        return null;
    }

    public static HfTokenizerFile Load(string path)
    {
        if (!File.Exists(path))
            throw new ModelFormatException(path, "tokenizer.json not found.");
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new ModelFormatException(path, "expected a JSON object.");
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(path, $"invalid JSON at line {e.LineNumber + 1}: {e.Message}", e);
        }
        if (root["model"] is not JsonObject model)
            throw new ModelFormatException(path, "missing \"model\"; not a Hugging Face tokenizer.json.");
        var type = model["type"]?.GetValue<string>() ?? "BPE";
        var byId = new Dictionary<int, HfToken>();
        switch (model["vocab"])
        {
            case JsonObject vocab:
                foreach (var (token, idNode) in vocab)
                {
                    int id = idNode?.GetValue<int>() ?? throw new ModelFormatException(path, $"model.vocab entry \"{token}\" has no id.");
                    byId[id] = new HfToken(id, token, false, false);
                }
                break;
            case JsonArray unigram: // Unigram: [[piece, score], …], id = position
                for (int i = 0; i < unigram.Count; i++)
                    byId[i] = new HfToken(i, unigram[i]![0]!.GetValue<string>(), false, false);
                break;
            default:
                throw new ModelFormatException(path, "model.vocab is missing.");
        }
        if (root["added_tokens"] is JsonArray added)
            foreach (var node in added)
            {
                if (node is not JsonObject a)
                    continue;
                int id = a["id"]!.GetValue<int>();
                byId[id] = new HfToken(id, a["content"]!.GetValue<string>(), true, a["special"]?.GetValue<bool>() ?? false);
            }
        int size = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
        var tokens = new HfToken?[size];
        foreach (var (id, t) in byId)
        {
            if (id < 0)
                throw new ModelFormatException(path, $"token \"{t.Content}\" has negative id {id}.");
            tokens[id] = t;
        }
        var merges = new List<string>();
        if (model["merges"] is JsonArray m)
            foreach (var entry in m)
                merges.Add(entry switch
                {
                    JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}",
                    JsonValue v => v.GetValue<string>(),
                    _ => throw new ModelFormatException(path, "model.merges entries must be \"a b\" strings or [a, b] pairs."),
                });
        return new HfTokenizerFile(path, type, tokens, merges, root);
    }

    /// <summary>
    /// GPT-2's reversible byte → printable character map used by ByteLevel tokenizers: printable Latin-1
    /// bytes map to themselves, the other 68 bytes to U+0100 onwards in byte order.
    /// </summary>
    public static IReadOnlyList<char> ByteToUnicode()
    {
        var map = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            map[b] = printable ? (char)b : (char)(256 + next++);
        }
        return map;
    }
}
