using System.Text;

namespace FineTune.Tokenizers.Tests;

/// <summary>The multilingual differential text set (written for FineTune's tests).</summary>
internal static class TextSet
{
    public static IReadOnlyList<string> All { get; } = Build();

    private static IReadOnlyList<string> Build()
    {
        var texts = new List<string>
        {
            "",
            "Hello world",
            "The quick brown fox jumps over the lazy dog.",
            "I'm sure they'll say it's fine, but we've seen what you'd do. DON'T SHOUT! She'S here, x'RE 'Ll",
            "Tokenizers split text into pieces; a model only sees the ids.",
            // Chinese, Japanese, Korean
            "机器学习模型需要大量的数据来训练。我们今天去北京大学参观了图书馆。",
            "東京の天気は晴れです。ひらがなとカタカナ、そして漢字を混ぜて書きます。ｶﾀｶﾅ半角",
            "안녕하세요, 세계! 한국어 문장은 띄어쓰기를 합니다. 감사합니다.",
            // Cyrillic, Arabic, Greek, Hindi, Thai, Hebrew
            "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
            "مرحبا بالعالم. اللغة العربية تكتب من اليمين إلى اليسار ١٢٣٤٥٦٧.",
            "Γειά σου Κόσμε· ελληνικά γράμματα: αβγδε ΑΒΓΔΕ",
            "नमस्ते दुनिया, यह हिंदी का वाक्य है।",
            "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
            "שלום עולם, עברית נכתבת מימין לשמאל",
            // code with tabs and indentation
            "def fibonacci(n):\n\tif n < 2:\n\t\treturn n\n\treturn fibonacci(n - 1) + fibonacci(n - 2)\n",
            "public static int Add(int a, int b)\n{\n    return a + b; // sum\n}\r\n\r\nvar x = new List<int> { 1, 2, 3 };",
            "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }\t\t// trailing tab\t",
            "<div class=\"header\">&nbsp;<a href='https://example.com/path?q=1&r=2'>link</a></div>",
            // whitespace runs
            "   leading spaces",
            "trailing spaces   ",
            "   ",
            "\n",
            "\n\n\n",
            "a\n\nb\n\n\nc",
            "line one\r\nline two\r\n",
            "mixed \t \n \t whitespace \u00a0 nbsp \u3000 ideographic",
            "two  spaces   three    four     five",
            " \n leading newline and space",
            // digits and numbers
            "12345678901234567890",
            "Pi is 3.14159265358979, e is 2.71828; 1,000,000 and 1_000_000 and 0x7FFF.",
            "Phone: +1 (555) 010-9999, year 2026, ½ ¾ ² ③ ① Ⅻ",
            "٠١٢٣٤٥٦٧٨٩ and ０１２３ full-width digits",
            // emoji
            "I love this! 😀😃😄 👍🏽👍🏿",
            "Family: 👨‍👩‍👧‍👦 flag: 🏳️‍🌈 technologist: 👩🏾‍💻 heart: ❤️",
            "😀abc and 🎉🎉party",
            // letters outside the BMP and unusual scripts
            "𝐀𝐁𝐂 math bold, 𝟏𝟐𝟑 digits, 𠀀𠀁 CJK extension B",
            // outside the BMP: flags, tag sequences, keycaps, ZWJ sequences, emoji beside punctuation, astral CJK and scripts
            "Flags 🇯🇵🇺🇸🇩🇪 and 🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland, keycaps 1️⃣#️⃣, 👨‍👩‍👧‍👦👩‍❤️‍💋‍👨 families, 🧑🏻‍🤝‍🧑🏿 hands",
            "emoji by punctuation: (😀) 「🎉」 😀!!! ?😀? 😀,😀. ‼️⁉️ ©️®️™️ $😀$ #😀 a😀b 😀😀😀",
            "astral CJK: 𠀀𠀁𠀂 𪚥𪚥 𫝀 𬺰 𰀀, 𠀀。𠀁！ 中𠀀文 「𠀀」（𪚥）",
            "𝐀abc𝟏23 😀abc𝐀 ab😀cd x𝟏y 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐌰𐌱𐌲 𐐀𐐁𐐨 𓀀𓀁 🀄 𝄞 music",
            "private use \uE000\uF8FF and \U000F0000\U0010FFFD, x'\u017Ftu y'\u212Ay",
            "circled xⓐⓑⒸy and squared x🄰🅐🅰y letters, x½y x²y x⁰y, a\u200Db a\u200Cb",
            // normalisation-sensitive
            "Cafe\u0301 vs Café, e\u0301\u0323 and A\u030A, ﬁ ligature, ＡＢＣ full width, Å angstrom",
            "한\u1100\u1161 jamo \u1112\u1161\u11AB",
            // special tokens inside text
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
            "<|endoftext|>start and end<|endoftext|>",
            "<s>Hello</s> <s> spaced </s>",
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
            "<think>\n\n</think>\n\nThe answer.",
            "almost special <|im_start and <|endoftext |> and <<|im_end|>>",
            // added-token flags (used by the variants): lstrip/rstrip, single_word, normalized
            "say <tool> now,  <tool>  x<tool>y and <tool>",
            "hello world, ahello, hello_x, Hello hello! HELLO-hello",
            "first [SEP] second[sep]third [Sep]",
            // casing and synthetic-model words
            "ΟΔΟΣ ΚΑΙ ΛΟΓΟΣ, İstanbul, ǅ titlecase, ß straße",
            "abc cab a b c abcabc ab ba bc cabc",
            // punctuation-heavy
            "Wait... what?!?! (yes) [no] {maybe} — “quotes” ‘single’ «guillemets» …",
            "email@example.com #hashtag @mention $100 50% a*b=c ~tilde` ^caret | pipe \\ backslash",
        };
        texts.Add(LongDocument());
        return texts;
    }

    private static string LongDocument()
    {
        var paragraphs = new[]
        {
            "Fine-tuning adapts a pretrained language model to a task with far fewer examples than pretraining needed. ",
            "Low-rank adaptation freezes the base weights and learns two small matrices per projection; their product is added to the frozen weight. ",
            "数据预处理包括分词、截断和打包。每个样本的标签在提示部分被设置为忽略。 ",
            "В каждом шаге оптимизатор обновляет только обучаемые параметры. ",
            "学習率のスケジュールはウォームアップの後にコサイン減衰を使います。 ",
            "\n\tStep 1234: loss = 1.2345, lr = 3.0e-4, tokens/s = 98765\n",
            "Emoji in logs 🚀✅❌ and paths like C:\\Users\\dev\\model.safetensors or /home/dev/data.jsonl\n\n",
        };
        var sb = new StringBuilder();
        for (int i = 0; sb.Length < 6000; i++)
            sb.Append(paragraphs[i % paragraphs.Length]).Append(i).Append(' ');
        return sb.ToString();
    }
}
