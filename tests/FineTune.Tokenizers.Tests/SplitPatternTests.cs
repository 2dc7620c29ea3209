namespace FineTune.Tokenizers.Tests;

/// <summary>The hand-written GPT-2-family matchers against the same regexes run through the code-point translation (<see cref="OnigurumaRegex"/>).</summary>
public sealed class SplitPatternTests
{
    public static TheoryData<string> Patterns() => [Gpt2SplitPattern.Gpt2, Gpt2SplitPattern.Llama3, Gpt2SplitPattern.Qwen2];

    [Theory]
    [MemberData(nameof(Patterns))]
    public void Matcher_finds_the_same_pieces_as_the_regex(string pattern)
    {
        var matcher = Gpt2SplitPattern.TryCreate(pattern)!;
        var regex = OnigurumaRegex.Create(pattern);
        foreach (var text in TextSet.All.Append("x'S 'll 'Re\r\n\r\n  \n\t 1234567 ab\u00a0 c"))
        {
            var ours = new List<(int, int)>();
            matcher.FindMatches(text, ours);
            var expected = regex.Matches(text).Select(m => (m.Index, m.Index + m.Length)).ToList();
            Assert.Equal(expected, ours);
        }
    }

    [Fact]
    public void Letters_outside_the_bmp_are_letters()
    {
        var ours = new List<(int, int)>();
        Gpt2SplitPattern.TryCreate(Gpt2SplitPattern.Qwen2)!.FindMatches("a\U0001D400b 1\U0001D7CF", ours);
        // "a𝐀b" is one letter run; " 1" splits as " " (no letters follow) … digits one at a time.
        Assert.Equal([(0, 4), (4, 5), (5, 6), (6, 8)], ours);
    }
}
