using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Tokenizers;

namespace FineTune.Data.Tests;

/// <summary>
/// Preference pairs and KTO samples token by token, with the scratch tokenizer of <see cref="PreprocessorTests"/>
/// (byte values as ids; &lt;|im_start|&gt;=265, &lt;|im_end|&gt;=266, &lt;think&gt;=267, &lt;/think&gt;=268).
/// The "empty" template concatenates texts, so there ids are the letters' bytes.
/// </summary>
public sealed class PreferencePreprocessingTests
{
    private const int X = TokenizedSample.IgnoreIndex;
    private static readonly Tokenizer Scratch = Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));

    private static Preprocessor Make(string template, PreprocessOptions? options = null) =>
        new(Scratch, ChatTemplate.Get(template), options ?? new PreprocessOptions());

    private static List<ChatMessage> Turns(params string[] texts) =>
        texts.Select((t, i) => new ChatMessage(i % 2 == 0 ? ChatRole.User : ChatRole.Assistant, t)).ToList();

    private static Conversation Pair(string chosen, string rejected, params string[] prompt) =>
        new("p", "", "", Turns(prompt), new ChatMessage(ChatRole.Assistant, chosen), new ChatMessage(ChatRole.Assistant, rejected));

    private static Conversation Kto(bool tag, params string[] turns) => new("k", "", "", Turns(turns), KtoTag: tag);

    private static int[] Bytes(string s) => s.Select(c => (int)c).ToArray();
    private static int[] Masked(int n) => Enumerable.Repeat(X, n).ToArray();

    [Fact]
    public void Qwen3PairSharesThePromptAndTrainsEachAnswerWithItsEndOfTurn()
    {
        var pair = Make("qwen3").EncodePair(Pair("Hello!", "No.", "Hi"));
        int[] prompt = [265, 117, 115, 259, 10, 72, 105, 266, 10, 265, 97, 115, 115, 105, 115, 116, 260, 116, 10];
        int[] chosen = [267, 10, 10, 268, 10, 10, 72, 101, 108, 108, 111, 33, 266, 10];
        int[] rejected = [267, 10, 10, 268, 10, 10, 78, 111, 46, 266, 10];
        Assert.Equal([.. prompt, .. chosen], pair.Chosen.InputIds);
        Assert.Equal([.. Masked(prompt.Length), .. chosen], pair.Chosen.Labels);
        Assert.Equal([.. prompt, .. rejected], pair.Rejected.InputIds);
        Assert.Equal([.. Masked(prompt.Length), .. rejected], pair.Rejected.Labels);
        Assert.False(pair.Truncated);
    }

    [Fact]
    public void PairBecomesOneSampleOfTwoSequencesChosenFirst()
    {
        var result = Make("empty").Process([Pair("cd", "xyz", "ab")]);
        var sample = result.Samples.Single();
        Assert.Equal([.. Bytes("abcd"), .. Bytes("abxyz")], sample.InputIds);
        Assert.Equal([X, X, 99, 100, X, X, 120, 121, 122], sample.Labels);
        Assert.Equal([4, 5], sample.SequenceLengths);
        Assert.Null(sample.Tag);
        Assert.Equal((1L, 9L, 5L, true, false, false), (result.Stats.Samples, result.Stats.Tokens, result.Stats.TrainedTokens, result.Stats.Paired, result.Stats.Kto, result.Stats.Packed));
    }

    [Fact]
    public void PairTrainOnPromptLabelsThePromptOfBothSequences()
    {
        var pair = Make("empty", new PreprocessOptions { TrainOnPrompt = true }).EncodePair(Pair("cd", "xy", "ab"));
        Assert.Equal(Bytes("abcd"), pair.Chosen.Labels);
        Assert.Equal(Bytes("abxy"), pair.Rejected.Labels);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PairHistoryIsPromptAndNeverTrainedWhateverMaskHistorySays(bool maskHistory)
    {
        // LLaMA-Factory's pairwise processor encodes one turn: earlier answers are part of the prompt.
        var pair = Make("empty", new PreprocessOptions { MaskHistory = maskHistory }).EncodePair(Pair("gh", "xy", "ab", "cd", "ef"));
        Assert.Equal(Bytes("abcdefgh"), pair.Chosen.InputIds);
        Assert.Equal([.. Masked(6), 103, 104], pair.Chosen.Labels);
        Assert.Equal([.. Masked(6), 120, 121], pair.Rejected.Labels);
    }

    [Fact]
    public void LongPairIsCutWithOneBudgetFromThePromptAndTheLongerAnswer()
    {
        // infer_seqlen(prompt 10, longer answer 6, cutoff 8): neither is under half the cutoff, so the target gets
        // floor(8 · 6 / 16) = 3 and the prompt the remaining 5; the 2-token rejected answer stays whole.
        Assert.Equal((5, 3), Preprocessor.InferSeqLen(10, 6, 8));
        var result = Make("empty", new PreprocessOptions { CutoffLen = 8 }).Process([Pair("klmnop", "qr", "abcdefghij")]);
        var sample = result.Samples.Single();
        Assert.Equal([.. Bytes("abcdeklm"), .. Bytes("abcdeqr")], sample.InputIds);
        Assert.Equal([.. Masked(5), 107, 108, 109, .. Masked(5), 113, 114], sample.Labels);
        Assert.Equal([8, 7], sample.SequenceLengths);
        Assert.Equal((1L, 0L), (result.Stats.Truncated, result.Stats.Dropped));
    }

    [Fact]
    public void ShortAnswersKeepTheirLengthAndThePromptIsCutFromItsEnd()
    {
        // Answers of at most 2 tokens are under half of cutoff 6: kept whole, the prompt gets 6 − 2 = 4 (its start).
        var pair = Make("empty", new PreprocessOptions { CutoffLen = 6 }).EncodePair(Pair("xy", "z", "abcdefgh"));
        Assert.Equal(Bytes("abcdxy"), pair.Chosen.InputIds);
        Assert.Equal(Bytes("abcdz"), pair.Rejected.InputIds);
        Assert.True(pair.Truncated);
    }

    [Fact]
    public void PairWhoseAnswersAreCutAwayIsDroppedAndCounted()
    {
        // infer_seqlen(10, 2, 4) leaves no room for the answers (floor(4 · 2 / 12) = 0): nothing to train, the pair is dropped.
        var result = Make("empty", new PreprocessOptions { CutoffLen = 4 }).Process([Pair("kl", "mn", "abcdefghij"), Pair("x", "y", "a")], droppedUpstream: 3);
        Assert.Equal([[97, 120, 97, 121]], result.Samples.Select(s => s.InputIds));
        Assert.Equal((1L, 4L, 1L), (result.Stats.Samples, result.Stats.Dropped, result.Stats.Truncated));
    }

    [Fact]
    public void PairsAreNeverPacked()
    {
        var result = Make("empty", new PreprocessOptions { CutoffLen = 64, Packing = true, NeatPacking = true })
            .Process([Pair("cd", "xy", "ab"), Pair("e", "f", "g")]);
        Assert.Equal([[4, 4], [2, 2]], result.Samples.Select(s => s.SequenceLengths));
        Assert.False(result.Stats.Packed);
        Assert.False(result.Stats.NeatPacking);
    }

    [Fact]
    public void KtoSampleGetsThePreviousSamplesCompletionForItsKlSequence()
    {
        // LLaMA-Factory's feedback processor: completions shifted by one against prompts, the first takes the last's.
        var result = Make("empty").Process([Kto(true, "ab", "cd"), Kto(false, "ef", "gh"), Kto(true, "ij", "kl")]);
        Assert.Equal([[.. Bytes("abcd"), .. Bytes("abkl")], [.. Bytes("efgh"), .. Bytes("efcd")], [.. Bytes("ijkl"), .. Bytes("ijgh")]],
            result.Samples.Select(s => s.InputIds));
        Assert.Equal([X, X, 99, 100, X, X, 107, 108], result.Samples[0].Labels);
        Assert.Equal([1, 0, 1], result.Samples.Select(s => s.Tag!.Value));
        Assert.All(result.Samples, s => Assert.Equal([4, 4], s.SequenceLengths));
        Assert.Equal((3L, true, false, 2L), (result.Stats.Samples, result.Stats.Kto, result.Stats.Paired, result.Stats.Desirable));
    }

    [Fact]
    public void KtoHistoryIsPromptAndEachSequenceIsCutOnItsOwn()
    {
        var preprocessor = Make("empty", new PreprocessOptions { CutoffLen = 6 });
        var kto = preprocessor.EncodeKto(Kto(false, "ab", "cd", "ef", "gh"), new ChatMessage(ChatRole.Assistant, "wxyz"));
        // Completion: infer_seqlen(6, 2, 6) = (4, 2). KL: infer_seqlen(6, 4, 6): floor(6 · 4 / 10) = 2 for the target, 4 for the prompt.
        Assert.Equal(Bytes("abcdgh"), kto.Completion.InputIds);
        Assert.Equal([.. Masked(4), 103, 104], kto.Completion.Labels);
        Assert.Equal(Bytes("abcdwx"), kto.Kl.InputIds);
        Assert.Equal([.. Masked(4), 119, 120], kto.Kl.Labels);
        Assert.False(kto.Desirable);
        Assert.True(kto.Truncated);
    }

    [Fact]
    public void SingleKtoSampleIsItsOwnKlNeighbour()
    {
        var sample = Make("empty").Process([Kto(true, "ab", "cd")]).Samples.Single();
        Assert.Equal([.. Bytes("abcd"), .. Bytes("abcd")], sample.InputIds);
        Assert.Equal(TokenizedSample.Desirable, sample.Tag);
    }

    [Fact]
    public void MixedPairsAndSupervisedSamplesAreRejectedNamingOneOfEach()
    {
        var e = Assert.Throws<DatasetException>(() => Make("empty").Process([Pair("c", "d", "a"), new Conversation("sft:a.json#4", "", "", Turns("a", "b"))]));
        Assert.Equal("The registered samples mix preference pairs (ranking: true) (p) and supervised samples (sft:a.json#4); " +
                     "one split feeds one objective, so name datasets of one kind in data.dataset.", e.Message);
    }

    [Fact]
    public void EncodingASupervisedConversationAsAPairSaysWhatToRegister()
    {
        var e = Assert.Throws<DatasetException>(() => Make("empty").EncodePair(new Conversation("qa:a.json#2", "", "", Turns("a", "b"))));
        Assert.Equal("qa:a.json#2: not a preference pair (no chosen/rejected answers); register its dataset with ranking: true.", e.Message);
    }
}

public sealed class PreferencePreviewTests
{
    private static readonly Tokenizer Scratch = Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));
    private static readonly Preprocessor Chatml = new(Scratch, ChatTemplate.Get("chatml"), new PreprocessOptions());

    private static IEnumerable<(string, bool)> Shown(PreviewSequence s) => SamplePreview.Segments(Scratch, s.InputIds, s.Labels).Select(x => (x.Text, x.Trained));

    [Fact]
    public void PairPreviewShowsChosenThenRejectedWithTheirMasks()
    {
        var pair = new Conversation("pref:p.json#1", "", "", [new(ChatRole.User, "Hi")], new(ChatRole.Assistant, "Yo"), new(ChatRole.Assistant, "No"));
        var sequences = SamplePreview.Sequences(Chatml, PreprocessStage.Sft, pair, null);
        Assert.Equal(["chosen", "rejected"], sequences.Select(s => s.Title));
        const string prompt = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
        Assert.Equal([(prompt, false), ("Yo<|im_end|>\n", true)], Shown(sequences[0]));
        Assert.Equal([(prompt, false), ("No<|im_end|>\n", true)], Shown(sequences[1]));
    }

    [Fact]
    public void KtoPreviewShowsTheTagAndTheKlSequenceOfThePreviousCompletion()
    {
        var first = new Conversation("kto:k.json#1", "", "", [new(ChatRole.User, "A"), new(ChatRole.Assistant, "B")], KtoTag: true);
        var second = new Conversation("kto:k.json#2", "", "", [new(ChatRole.User, "C"), new(ChatRole.Assistant, "D")], KtoTag: false);
        var sequences = SamplePreview.Sequences(Chatml, PreprocessStage.Sft, second, first);
        Assert.Equal(["kto_tag false (undesirable)", "KL: its prompt, the completion of kto:k.json#1"], sequences.Select(s => s.Title));
        Assert.Equal([("<|im_start|>user\nC<|im_end|>\n<|im_start|>assistant\n", false), ("B<|im_end|>\n", true)], Shown(sequences[1]));
    }
}
