namespace FineTune.Tokenizers.Tests;

/// <summary>The public surface on the real Qwen3 / Llama-2 / Llama-3 files: config tokens, lookups, batch.</summary>
public sealed class ApiTests
{
    private static readonly Lazy<Tokenizer> Qwen3 = new(() => Tokenizer.FromDirectory(Fixtures.ModelDir("qwen3")));
    private static readonly Lazy<Tokenizer> Llama2 = new(() => Tokenizer.FromDirectory(Fixtures.ModelDir("llama2")));

    [Fact]
    public void FromDirectory_reads_eos_and_pad_from_tokenizer_config()
    {
        var t = Qwen3.Value;
        Assert.Null(t.BosTokenId);
        Assert.Equal(151645, t.EosTokenId); // <|im_end|>
        Assert.Equal(151643, t.PadTokenId); // <|endoftext|>
    }

    [Fact]
    public void FromDirectory_reads_bos_of_llama2()
    {
        var t = Llama2.Value;
        Assert.Equal((1, 2), (t.BosTokenId!.Value, t.EosTokenId!.Value));
        Assert.Null(t.PadTokenId);
    }

    [Fact]
    public void FromDirectory_exposes_the_chat_template()
    {
        Assert.StartsWith("{%- if tools %}", Qwen3.Value.ChatTemplate);
        Assert.Contains("<|im_start|>", Qwen3.Value.ChatTemplate);
    }

    [Fact]
    public void VocabSize_counts_added_tokens()
    {
        Assert.Equal(151669, Qwen3.Value.VocabSize); // 151643 BPE entries + 26 added tokens
        Assert.Equal(32000, Llama2.Value.VocabSize);
    }

    [Fact]
    public void TokenToId_and_IdToToken_cover_vocab_and_added_tokens()
    {
        var t = Qwen3.Value;
        Assert.Equal(9707, t.TokenToId("Hello"));
        Assert.Equal(151644, t.TokenToId("<|im_start|>"));
        Assert.Null(t.TokenToId("definitely-not-a-token"));
        Assert.Equal("ĠHello", t.IdToToken(21927));
        Assert.Equal("<think>", t.IdToToken(151667));
        Assert.Null(t.IdToToken(-1));
        Assert.Null(t.IdToToken(151669));
    }

    [Fact]
    public void Special_tokens_are_marked()
    {
        Assert.True(Qwen3.Value.IsSpecialToken(151644));   // <|im_start|>
        Assert.False(Qwen3.Value.IsSpecialToken(151667));  // <think> is added but not special
        Assert.False(Qwen3.Value.IsSpecialToken(9707));
    }

    [Fact]
    public void Llama2_adds_bos_only_with_special_tokens()
    {
        Assert.Equal([1, 15359], Llama2.Value.Encode("Hi", addSpecialTokens: true));
        Assert.Equal([15359], Llama2.Value.Encode("Hi"));
    }

    [Fact]
    public void EncodeBatch_equals_encoding_one_by_one()
    {
        var t = Qwen3.Value;
        var batch = t.EncodeBatch(TextSet.All);
        for (int i = 0; i < TextSet.All.Count; i++) Assert.Equal(t.Encode(TextSet.All[i]), batch[i]);
    }

    [Fact]
    public void Decode_skips_unknown_ids()
    {
        Assert.Equal("Hello", Qwen3.Value.Decode([9707, 999_999, -5]));
    }
}
