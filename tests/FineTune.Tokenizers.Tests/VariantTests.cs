using System.Text.Json.Nodes;

namespace FineTune.Tokenizers.Tests;

/// <summary>
/// Variants of the real tokenizer files that switch on the features the three files do not use
/// (other pre-tokenizers, normalizers, added-token flags, post-processors, BPE options), written to a
/// temp directory and compared live with HF tokenizers on the text set.
/// </summary>
public sealed class VariantTests : IClassFixture<VariantTests.Files>
{
    private readonly Files _files;

    public VariantTests(Files files) { _files = files; }

    private static JsonObject Obj(params (string Key, JsonNode? Value)[] items)
    {
        var o = new JsonObject();
        foreach (var (k, v) in items) o[k] = v;
        return o;
    }

    private static JsonObject ByteLevel(bool addPrefixSpace, bool useRegex) =>
        Obj(("type", "ByteLevel"), ("add_prefix_space", addPrefixSpace), ("trim_offsets", true), ("use_regex", useRegex));

    private static JsonObject Split(string kind, string pattern, string behavior, bool invert = false) =>
        Obj(("type", "Split"), ("pattern", Obj((kind, pattern))), ("behavior", behavior), ("invert", invert));

    private static JsonObject Added(int id, string content, bool special, bool singleWord = false, bool lstrip = false, bool rstrip = false, bool normalized = false) =>
        Obj(("id", id), ("content", content), ("single_word", singleWord), ("lstrip", lstrip), ("rstrip", rstrip), ("normalized", normalized), ("special", special));

    private static JsonArray Arr(params JsonNode?[] items) => new(items);

    /// <summary>
    /// A small but real byte-level BPE cut from Qwen3's file: the vocab entries below id 6000 and, in
    /// order, the merges whose parts and result are among them; everything else as in the file.
    /// </summary>
    private static JsonObject MiniQwen3()
    {
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Fixtures.TokenizerJson("qwen3")));
        var root = doc.RootElement;
        var mini = new JsonObject();
        foreach (var section in root.EnumerateObject())
            if (section.Name != "model") mini[section.Name] = JsonNode.Parse(section.Value.GetRawText());
        var model = root.GetProperty("model");
        var vocab = new JsonObject();
        var kept = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in model.GetProperty("vocab").EnumerateObject())
            if (entry.Value.GetInt32() < 6000) { vocab[entry.Name] = entry.Value.GetInt32(); kept.Add(entry.Name); }
        var merges = new JsonArray();
        foreach (var merge in model.GetProperty("merges").EnumerateArray())
        {
            string a = merge[0].GetString()!, b = merge[1].GetString()!;
            if (kept.Contains(a) && kept.Contains(b) && kept.Contains(a + b)) merges.Add(Arr(a, b));
        }
        var miniModel = new JsonObject();
        foreach (var option in model.EnumerateObject())
            if (option.Name is not ("vocab" or "merges")) miniModel[option.Name] = JsonNode.Parse(option.Value.GetRawText());
        miniModel["vocab"] = vocab;
        miniModel["merges"] = merges;
        mini["model"] = miniModel;
        return mini;
    }

    /// <summary>Name, base file (mini-qwen3, an npm fixture name, or null for a synthetic model), edit, BMP-only texts.</summary>
    private static readonly (string Name, string? Base, Action<JsonObject> Edit, bool BmpOnly)[] Definitions =
    [
        ("split-regex-translated-for-dotnet", "mini-qwen3", j =>
        {
            var split = j["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!;
            split["Regex"] = "(?:" + (string)split["Regex"]! + ")";
        }, false),
        ("bytelevel-gpt2-regex-with-prefix-space", "mini-qwen3", j => j["pre_tokenizer"] = ByteLevel(true, true), false),
        ("bytelevel-gpt2-regex", "mini-qwen3", j => j["pre_tokenizer"] = ByteLevel(false, true), false),
        ("normalizers-and-added-token-flags", "mini-qwen3", j =>
        {
            j["normalizer"] = Obj(("type", "Sequence"), ("normalizers", Arr(
                Obj(("type", "NFKC")), Obj(("type", "Lowercase")),
                Obj(("type", "Replace"), ("pattern", Obj(("Regex", " {2,}"))), ("content", " ")),
                Obj(("type", "Strip"), ("strip_left", true), ("strip_right", true)))));
            j["pre_tokenizer"] = Obj(("type", "Sequence"), ("pretokenizers", Arr(
                Obj(("type", "Digits"), ("individual_digits", true)),
                Obj(("type", "Punctuation"), ("behavior", "Isolated")),
                Split("String", ",", "Removed"),
                ByteLevel(false, true))));
            var added = j["added_tokens"]!.AsArray();
            added.Add(Added(151669, "<tool>", special: false, lstrip: true, rstrip: true));
            added.Add(Added(151670, "hello", special: false, singleWord: true, normalized: true));
            added.Add(Added(151671, "[SEP]", special: true, normalized: true));
        }, false),
        ("split-behaviors", "mini-qwen3", j => j["pre_tokenizer"] = Obj(("type", "Sequence"), ("pretokenizers", Arr(
            Split("Regex", @"\s+", "MergedWithPrevious"),
            Split("String", "e", "MergedWithNext"),
            Split("Regex", "[aeiou]+", "Contiguous", invert: true),
            Split("Regex", "x", "Removed"),
            Obj(("type", "WhitespaceSplit")),
            ByteLevel(false, false)))), true),
        ("metaspace-first-split", "llama2", j =>
        {
            j["normalizer"] = null;
            j["pre_tokenizer"] = Obj(("type", "Metaspace"), ("replacement", "\u2581"), ("prepend_scheme", "first"), ("split", true));
        }, false),
        ("metaspace-always-no-split", "llama2", j =>
        {
            j["normalizer"] = null;
            j["pre_tokenizer"] = Obj(("type", "Metaspace"), ("replacement", "\u2581"), ("prepend_scheme", "always"), ("split", false));
            j["decoder"] = Obj(("type", "Sequence"), ("decoders", Arr(
                Obj(("type", "ByteFallback")),
                Obj(("type", "Metaspace"), ("replacement", "\u2581"), ("prepend_scheme", "always"), ("split", false)))));
        }, false),
        ("template-bos-eos", "mini-qwen3", j =>
        {
            JsonObject Special(string id) => Obj(("SpecialToken", Obj(("id", id), ("type_id", 0))));
            JsonObject Sequence(string id) => Obj(("Sequence", Obj(("id", id), ("type_id", 0))));
            j["post_processor"] = Obj(("type", "Sequence"), ("processors", Arr(
                Obj(("type", "ByteLevel"), ("add_prefix_space", true), ("trim_offsets", false), ("use_regex", true)),
                Obj(("type", "TemplateProcessing"),
                    ("single", Arr(Special("<|begin_of_text|>"), Sequence("A"), Special("<|end_of_text|>"))),
                    ("pair", Arr(Special("<|begin_of_text|>"), Sequence("A"), Special("<|begin_of_text|>"), Sequence("B"))),
                    ("special_tokens", Obj(
                        ("<|begin_of_text|>", Obj(("id", "<|begin_of_text|>"), ("ids", Arr(7)), ("tokens", Arr("<|begin_of_text|>")))),
                        ("<|end_of_text|>", Obj(("id", "<|end_of_text|>"), ("ids", Arr(8)), ("tokens", Arr("<|end_of_text|>"))))))))));
        }, false),
        ("subword-prefix-and-fused-unk", null, j =>
        {
            j["model"] = Obj(("type", "BPE"), ("dropout", null), ("unk_token", "[UNK]"), ("continuing_subword_prefix", "##"),
                ("end_of_word_suffix", null), ("fuse_unk", true), ("byte_fallback", false),
                ("vocab", Obj(("[UNK]", 0), ("a", 1), ("b", 2), ("c", 3), ("##a", 4), ("##b", 5), ("##c", 6), ("ab", 7), ("##bc", 8), ("abc", 9), ("##ab", 10))),
                ("merges", Arr(Arr("a", "##b"), Arr("##b", "##c"), Arr("ab", "##c"), Arr("##a", "##b"))));
            j["pre_tokenizer"] = Obj(("type", "Whitespace"));
            j["added_tokens"] = Arr(Added(0, "[UNK]", special: true));
        }, false),
        ("end-of-word-suffix-and-ignore-merges", null, j =>
        {
            j["model"] = Obj(("type", "BPE"), ("dropout", null), ("unk_token", "<unk>"), ("end_of_word_suffix", "</w>"),
                ("fuse_unk", false), ("byte_fallback", false), ("ignore_merges", true),
                ("vocab", Obj(("<unk>", 0), ("a", 1), ("b", 2), ("c", 3), ("a</w>", 4), ("b</w>", 5), ("c</w>", 6), ("ab", 7), ("ab</w>", 8), ("cab", 9), ("bc</w>", 10))),
                ("merges", Arr("a b", "a b</w>", "b c</w>")));
            j["pre_tokenizer"] = Obj(("type", "WhitespaceSplit"));
            j["decoder"] = Obj(("type", "BPEDecoder"), ("suffix", "</w>"));
            j["added_tokens"] = Arr(Added(0, "<unk>", special: true));
        }, false),
    ];

    public static TheoryData<string> Names()
    {
        var data = new TheoryData<string>();
        foreach (var d in Definitions) data.Add(d.Name);
        return data;
    }

    /// <summary>Writes every variant once, runs HF on all of them in one node process, deletes them at the end.</summary>
    public sealed class Files : IDisposable
    {
        public string Directory { get; } = Path.Combine(Path.GetTempPath(), $"finetune-tokenizer-variants-{Environment.ProcessId}");
        internal Dictionary<string, (string Path, IReadOnlyList<string> Texts, Fixtures.Reference Reference)> Cases { get; } = new();

        public Files()
        {
            System.IO.Directory.CreateDirectory(Directory);
            var bases = new Dictionary<string, string>();
            var miniQwen3 = MiniQwen3();
            var jobs = new List<(string, IReadOnlyList<string>)>();
            foreach (var (name, baseName, edit, bmpOnly) in Definitions)
            {
                JsonObject json;
                if (baseName == null)
                {
                    json = Obj(("version", "1.0"), ("truncation", null), ("padding", null), ("added_tokens", Arr()), ("normalizer", null),
                        ("pre_tokenizer", null), ("post_processor", null), ("decoder", null), ("model", null));
                }
                else if (baseName == "mini-qwen3")
                {
                    json = miniQwen3.DeepClone().AsObject();
                }
                else
                {
                    if (!bases.TryGetValue(baseName, out var text)) bases[baseName] = text = File.ReadAllText(Fixtures.TokenizerJson(baseName));
                    json = JsonNode.Parse(text)!.AsObject();
                }
                edit(json);
                string path = Path.Combine(Directory, name + ".json");
                File.WriteAllText(path, json.ToJsonString());
                IReadOnlyList<string> texts = bmpOnly ? TextSet.All.Where(t => !t.Any(char.IsSurrogate)).ToList() : TextSet.All;
                jobs.Add((path, texts));
            }
            var references = Fixtures.RunHfReference(jobs);
            for (int i = 0; i < Definitions.Length; i++)
                Cases[Definitions[i].Name] = (jobs[i].Item1, jobs[i].Item2, references[i]);
        }

        public void Dispose()
        {
            try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
        }
    }

    private static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s.Length > 80 ? s[..80] + "…" : s);

    [Theory]
    [MemberData(nameof(Names))]
    public void Variant_encodes_and_decodes_like_hf_tokenizers(string variant)
    {
        var (path, texts, reference) = _files.Cases[variant];
        var tokenizer = Tokenizer.FromFile(path);
        var failures = new List<string>();
        for (int i = 0; i < texts.Count; i++)
        {
            var plain = tokenizer.Encode(texts[i]);
            var special = tokenizer.Encode(texts[i], addSpecialTokens: true);
            if (!plain.SequenceEqual(reference.Ids[i]) || !special.SequenceEqual(reference.IdsWithSpecial[i]))
                failures.Add($"encode #{i} {Show(texts[i])}\n  hf:   [{string.Join(",", reference.IdsWithSpecial[i].Take(40))}]\n  ours: [{string.Join(",", special.Take(40))}]");
            string decoded = tokenizer.Decode(reference.IdsWithSpecial[i]);
            string skipped = tokenizer.Decode(reference.IdsWithSpecial[i], skipSpecialTokens: true);
            if (decoded != reference.DecodedWithSpecial[i] || skipped != reference.DecodedWithSpecialSkip[i])
                failures.Add($"decode #{i}: hf {Show(reference.DecodedWithSpecial[i])} / {Show(reference.DecodedWithSpecialSkip[i])}, ours {Show(decoded)} / {Show(skipped)}");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} differences:\n" + string.Join("\n", failures.Take(15)));
    }
}
