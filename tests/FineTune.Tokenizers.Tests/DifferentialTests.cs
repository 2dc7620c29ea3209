namespace FineTune.Tokenizers.Tests;

/// <summary>
/// Ids and decoded text compared with Hugging Face tokenizers on the real files. The reference runs
/// live (node + the HF Rust library) once per tokenizer file per test run.
/// </summary>
public sealed class DifferentialTests
{
    private sealed record Case(Tokenizer Tokenizer, Fixtures.Reference Reference);

    private static readonly string[] Models = ["qwen3", "llama3", "llama2"];

    // One node process for the three files.
    private static readonly Lazy<Dictionary<string, Case>> All = new(() =>
    {
        var references = Fixtures.RunHfReference(Models.Select(m => (Fixtures.TokenizerJson(m), TextSet.All)).ToList());
        return Models.Select((m, i) => (m, i)).ToDictionary(x => x.m, x => new Case(Tokenizer.FromFile(Fixtures.TokenizerJson(x.m)), references[x.i]));
    });

    private static Dictionary<string, Case> Cases => All.Value;

    private static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s.Length > 80 ? s[..80] + "…" : s);

    [Theory]
    [InlineData("qwen3", false)]
    [InlineData("qwen3", true)]
    [InlineData("llama3", false)]
    [InlineData("llama3", true)]
    [InlineData("llama2", false)]
    [InlineData("llama2", true)]
    public void Encode_gives_the_same_ids_as_hf_tokenizers(string model, bool addSpecialTokens)
    {
        var (tokenizer, reference) = Cases[model];
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
    [InlineData("qwen3")]
    [InlineData("llama3")]
    [InlineData("llama2")]
    public void Decode_gives_the_same_text_as_hf_tokenizers(string model)
    {
        var (tokenizer, reference) = Cases[model];
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
    [InlineData("qwen3")]
    [InlineData("llama3")]
    [InlineData("llama2")]
    public void Decode_of_encode_round_trips_where_hf_does(string model)
    {
        var (tokenizer, reference) = Cases[model];
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
