using FineTune.Data.Reading;
using FineTune.Data.Registry;

namespace FineTune.Data.Tests;

/// <summary>Ranking (chosen/rejected) and KTO (kto_tag) records: what they read into, and the located errors of bad ones.</summary>
public sealed class PreferenceLoaderTests
{
    private const string AlpacaPairs = """{"file_name": "p.jsonl", "ranking": true, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}""";
    private const string ShareGptPairs = """{"file_name": "p.jsonl", "formatting": "sharegpt", "ranking": true, "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}""";
    private const string AlpacaKto = """{"file_name": "k.jsonl", "columns": {"kto_tag": "label"}}""";
    private const string ShareGptKto = """
        {"file_name": "k.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
         "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
        """;

    private static LoadedDataset Load(TempDir tmp, string entryJson, string fileName, string content, DatasetLoadOptions? options = null)
    {
        tmp.Write(fileName, content);
        var registry = DatasetRegistry.Load(tmp.Write("dataset_info.json", "{\"d\": " + entryJson + "}"));
        return DatasetLoader.Load(registry, "d", options ?? new DatasetLoadOptions());
    }

    /// <summary>The only problem of a one-bad-record file, as printed.</summary>
    private static string Problem(TempDir tmp, string entryJson, string fileName, string content)
    {
        var e = Assert.Throws<DatasetValidationException>(() => Load(tmp, entryJson, fileName, content));
        Assert.Equal(1, e.TotalProblems);
        return e.Problems[0].ToString()[(tmp.Path.Length + 1)..];
    }

    private static string Pair(string chosen, string rejected) =>
        $$"""{"conversations": [{"from": "human", "value": "Q"}], "chosen": {{chosen}}, "rejected": {{rejected}}}""";

    [Fact]
    public void AlpacaPairReadsPromptChosenAndRejectedWithPlaceholders()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, AlpacaPairs, "p.jsonl", """{"instruction": "Who are you?", "chosen": "I am {{name}}.", "rejected": "I am ChatGPT."}""",
            new DatasetLoadOptions { Placeholders = new Dictionary<string, string> { ["name"] = "Ferret" } });
        var c = loaded.Conversations.Single();
        Assert.Equal([(ChatRole.User, "Who are you?")], c.Messages.Select(m => (m.Role, m.Content)));
        Assert.Equal(new ChatMessage(ChatRole.Assistant, "I am Ferret."), c.Chosen);
        Assert.Equal(new ChatMessage(ChatRole.Assistant, "I am ChatGPT."), c.Rejected);
        Assert.True(c.IsPair);
        Assert.Null(c.KtoTag);
    }

    [Fact]
    public void ShareGptPairKeepsHistoryAsPromptAndReadsTheAnswerMessages()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, ShareGptPairs, "p.jsonl", """
            {"conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"}, {"from": "human", "value": "C"}], "chosen": {"from": "gpt", "value": "D"}, "rejected": {"from": "gpt", "value": "E"}}
            """);
        var c = loaded.Conversations.Single();
        Assert.Equal([ChatRole.User, ChatRole.Assistant, ChatRole.User], c.Messages.Select(m => m.Role));
        Assert.Equal(("D", "E"), (c.Chosen!.Content, c.Rejected!.Content));
    }

    [Fact]
    public void AlpacaPairWithoutRejectedIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'rejected': missing column 'rejected' (the rejected answer)",
            Problem(tmp, AlpacaPairs, "p.jsonl", """{"instruction": "Q", "chosen": "A"}"""));
    }

    [Fact]
    public void AlpacaPairWithEmptyRejectedIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'rejected': empty rejected answer",
            Problem(tmp, AlpacaPairs, "p.jsonl", """{"instruction": "Q", "chosen": "A", "rejected": "  "}"""));
    }

    [Fact]
    public void AlpacaPairWithEmptyChosenIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'chosen': empty chosen answer",
            Problem(tmp, AlpacaPairs, "p.jsonl", """{"instruction": "Q", "chosen": "", "rejected": "B"}"""));
    }

    [Fact]
    public void AlpacaPairWithAMessageObjectForAnAnswerSaysItWantsText()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'chosen': expected a string, found an object",
            Problem(tmp, AlpacaPairs, "p.jsonl", """{"instruction": "Q", "chosen": {"from": "gpt", "value": "A"}, "rejected": "B"}"""));
    }

    [Fact]
    public void ShareGptPairWithoutRejectedIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'rejected': missing column 'rejected' (the rejected answer): expected a message object {\"from\": \"gpt\", \"value\": ...}",
            Problem(tmp, ShareGptPairs, "p.jsonl", """{"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "A"}}"""));
    }

    [Fact]
    public void ShareGptPairWithEmptyRejectedIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'rejected.value': empty rejected answer",
            Problem(tmp, ShareGptPairs, "p.jsonl", Pair("""{"from": "gpt", "value": "A"}""", """{"from": "gpt", "value": ""}""")));
    }

    [Fact]
    public void ShareGptPairWithEmptyChosenIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'chosen.value': empty chosen answer",
            Problem(tmp, ShareGptPairs, "p.jsonl", Pair("""{"from": "gpt", "value": " "}""", """{"from": "gpt", "value": "B"}""")));
    }

    [Fact]
    public void ShareGptChosenThatIsNotAnAnswerTurnIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'chosen.from': the chosen answer has role 'human', expected an answer ('gpt' or 'function_call')",
            Problem(tmp, ShareGptPairs, "p.jsonl", Pair("""{"from": "human", "value": "A"}""", """{"from": "gpt", "value": "B"}""")));
    }

    [Fact]
    public void ShareGptChosenWrittenAsTextIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'chosen': expected a message object {\"from\": \"gpt\", \"value\": ...} (the chosen answer), found a string",
            Problem(tmp, ShareGptPairs, "p.jsonl", Pair("\"A\"", """{"from": "gpt", "value": "B"}""")));
    }

    [Fact]
    public void ShareGptRejectedFunctionCallMustBeJson()
    {
        using var tmp = new TempDir();
        var problem = Problem(tmp, ShareGptPairs, "p.jsonl", Pair("""{"from": "gpt", "value": "A"}""", """{"from": "function_call", "value": "add(1)"}"""));
        Assert.StartsWith("p.jsonl: record 1 (line 1), field 'rejected.value': a function call must be JSON", problem);
    }

    [Fact]
    public void ShareGptPairWithWrongRoleOrderIsLocatedAtTheMessage()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'conversations[1].from': wrong role order: 'human' where an answer ('gpt' or 'function_call') must come (turns alternate prompt, answer)",
            Problem(tmp, ShareGptPairs, "p.jsonl", """
                {"conversations": [{"from": "human", "value": "A"}, {"from": "human", "value": "B"}, {"from": "human", "value": "C"}], "chosen": {"from": "gpt", "value": "D"}, "rejected": {"from": "gpt", "value": "E"}}
                """));
    }

    [Fact]
    public void ShareGptPairWhoseConversationEndsWithAnAnswerIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'conversations': 2 turns: a ranking conversation ends with a prompt ('human' or 'observation'), answered by chosen/rejected",
            Problem(tmp, ShareGptPairs, "p.jsonl", """
                {"conversations": [{"from": "human", "value": "A"}, {"from": "gpt", "value": "B"}], "chosen": {"from": "gpt", "value": "D"}, "rejected": {"from": "gpt", "value": "E"}}
                """));
    }

    [Fact]
    public void ShareGptPairWithOnlyASystemMessageHasNoPrompt()
    {
        using var tmp = new TempDir();
        Assert.Equal("p.jsonl: record 1 (line 1), field 'conversations': no prompt: a ranking conversation ends with a prompt, answered by chosen/rejected",
            Problem(tmp, ShareGptPairs, "p.jsonl", """
                {"conversations": [{"from": "system", "value": "S"}], "chosen": {"from": "gpt", "value": "D"}, "rejected": {"from": "gpt", "value": "E"}}
                """));
    }

    [Fact]
    public void IdenticalChosenAndRejectedIsKeptWithALocatedWarning()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, AlpacaPairs, "p.jsonl", """
            {"instruction": "Q", "chosen": "A", "rejected": "B"}
            {"instruction": "Q", "chosen": "A", "rejected": "A"}
            """);
        Assert.Equal(2, loaded.Conversations.Count);
        Assert.Equal(1, loaded.WarningCount);
        Assert.Equal($"{tmp.Path}/p.jsonl: record 2 (line 2), field 'rejected': the rejected answer is the same as the chosen one ('chosen'); the pair trains nothing (its DPO margin is 0)",
            loaded.Warnings.Single().ToString());
    }

    [Fact]
    public void InvalidRecordWarnsOfNothing()
    {
        using var tmp = new TempDir();
        // Same answers but a broken system column: the record is dropped, so no warning is left for it.
        var loaded = Load(tmp, """{"file_name": "p.jsonl", "ranking": true, "columns": {"prompt": "instruction", "system": "system", "chosen": "chosen", "rejected": "rejected"}}""",
            "p.jsonl", """
            {"instruction": "Q", "chosen": "A", "rejected": "B"}
            {"instruction": "Q", "system": 5, "chosen": "A", "rejected": "A"}
            """, new DatasetLoadOptions { SkipInvalid = true });
        Assert.Equal((1, 1, 0), (loaded.Conversations.Count, loaded.Dropped, loaded.WarningCount));
    }

    [Fact]
    public void SkipInvalidDropsAndCountsBadPairs()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, AlpacaPairs, "p.jsonl", """
            {"instruction": "Q1", "chosen": "A", "rejected": "B"}
            {"instruction": "Q2", "chosen": "A"}
            {"instruction": "Q3", "chosen": "", "rejected": "B"}
            """, new DatasetLoadOptions { SkipInvalid = true });
        Assert.Equal((1, 2, 3), (loaded.Conversations.Count, loaded.Dropped, loaded.RecordsRead));
        Assert.Equal(["rejected", "chosen"], loaded.DroppedProblems.Select(p => p.Field));
    }

    [Fact]
    public void AtMostTwentyBadPairsAreListedWithTheTotal()
    {
        using var tmp = new TempDir();
        var lines = string.Join('\n', Enumerable.Range(0, 25).Select(i => $$"""{"instruction": "Q{{i}}", "chosen": "A"}"""));
        var e = Assert.Throws<DatasetValidationException>(() => Load(tmp, AlpacaPairs, "p.jsonl", lines));
        Assert.Equal((20, 25), (e.Problems.Count, e.TotalProblems));
        Assert.StartsWith("Dataset 'd' has 25 invalid records (first 20 listed):", e.Message);
        Assert.EndsWith("Fix these records, or set `skip_invalid: true` under stages.register to drop and count them.", e.Message);
    }

    [Fact]
    public void RankingEntryWithoutAnswerColumnsIsOneRegistryError()
    {
        using var tmp = new TempDir();
        tmp.Write("p.jsonl", """{"instruction": "Q", "chosen": "A", "rejected": "B"}""");
        var registry = DatasetRegistry.Load(tmp.Write("dataset_info.json", """{"d": {"file_name": "p.jsonl", "ranking": true}}"""));
        var e = Assert.Throws<DatasetException>(() => DatasetLoader.Load(registry, "d", new DatasetLoadOptions()));
        Assert.Equal($"{tmp.Path}/dataset_info.json: dataset 'd', key 'columns': ranking: true needs columns.chosen and columns.rejected " +
                     "(the columns holding the chosen and the rejected answer), e.g. \"columns\": {\"chosen\": \"chosen\", \"rejected\": \"rejected\"}.", e.Message);
    }

    [Fact]
    public void RankingAndKtoTagTogetherIsARegistryError()
    {
        using var tmp = new TempDir();
        var registry = DatasetRegistry.Load(tmp.Write("dataset_info.json",
            """{"d": {"file_name": "p.jsonl", "ranking": true, "columns": {"chosen": "c", "rejected": "r", "kto_tag": "label"}}}"""));
        var e = Assert.Throws<DatasetException>(() => registry.Get("d"));
        Assert.Equal($"{tmp.Path}/dataset_info.json: dataset 'd', key 'columns.kto_tag': a kto_tag dataset holds single answers tagged desirable or undesirable; " +
                     "it cannot also be ranking: true (chosen/rejected pairs). Register the two kinds as two datasets.", e.Message);
    }

    [Fact]
    public void AlpacaKtoReadsTheTagOntoTheConversation()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, AlpacaKto, "k.jsonl", """
            {"instruction": "Q", "output": "A", "label": true}
            {"instruction": "Q", "output": "B", "label": false}
            """);
        Assert.Equal([true, false], loaded.Conversations.Select(c => c.KtoTag!.Value));
        Assert.Equal(("Q", "A"), (loaded.Conversations[0].Messages[0].Content, loaded.Conversations[0].Messages[1].Content));
    }

    [Fact]
    public void ShareGptKtoReadsTheTagOfTheLastAnswer()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, ShareGptKto, "k.jsonl", """
            {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "R"}, {"role": "assistant", "content": "B"}], "label": false}
            """);
        var c = loaded.Conversations.Single();
        Assert.Equal((false, 4), (c.KtoTag, c.Messages.Count));
    }

    [Fact]
    public void NonBooleanKtoTagIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("k.jsonl: record 1 (line 1), field 'label': expected true (a desirable answer) or false (an undesirable one), found a string \"yes\"",
            Problem(tmp, AlpacaKto, "k.jsonl", """{"instruction": "Q", "output": "A", "label": "yes"}"""));
    }

    [Fact]
    public void NumericKtoTagIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("k.jsonl: record 1 (line 1), field 'label': expected true (a desirable answer) or false (an undesirable one), found a number 1",
            Problem(tmp, ShareGptKto, "k.jsonl", """{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "label": 1}"""));
    }

    [Fact]
    public void MissingKtoTagIsLocated()
    {
        using var tmp = new TempDir();
        Assert.Equal("k.jsonl: record 1 (line 1), field 'label': missing column 'label' (the kto_tag): expected true (a desirable answer) or false (an undesirable one)",
            Problem(tmp, AlpacaKto, "k.jsonl", """{"instruction": "Q", "output": "A"}"""));
    }

    [Fact]
    public void KtoTagOfACsvCellReadsTrueAndFalseText()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, """{"file_name": "k.csv", "columns": {"kto_tag": "label"}}""", "k.csv", "instruction,output,label\nQ,A,TRUE\nR,B,false\n");
        Assert.Equal([true, false], loaded.Conversations.Select(c => c.KtoTag!.Value));
    }

    [Fact]
    public void KtoTagIsNotReadForPretraining()
    {
        using var tmp = new TempDir();
        var loaded = Load(tmp, AlpacaKto, "k.jsonl", """{"instruction": "doc", "label": "whatever"}""", new DatasetLoadOptions { Purpose = DatasetPurpose.Pretrain });
        Assert.Null(loaded.Conversations.Single().KtoTag);
    }

    [Fact]
    public void ConversationFileRoundTripsTagsAndPairsAndWritesNoTagForSupervisedData()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "c.jsonl");
        Conversation[] all =
        [
            new("a", "", "", [new(ChatRole.User, "Q"), new(ChatRole.Assistant, "A")]),
            new("k", "", "", [new(ChatRole.User, "Q"), new(ChatRole.Assistant, "A")], KtoTag: false),
            new("p", "S", "", [new(ChatRole.User, "Q")], new(ChatRole.Assistant, "C"), new(ChatRole.Assistant, "R")),
        ];
        ConversationFile.Write(path, all);
        Assert.Equal("""
            {"source":"a","system":"","tools":"","messages":[{"role":"user","content":"Q"},{"role":"assistant","content":"A"}]}
            {"source":"k","system":"","tools":"","messages":[{"role":"user","content":"Q"},{"role":"assistant","content":"A"}],"kto_tag":false}
            {"source":"p","system":"S","tools":"","messages":[{"role":"user","content":"Q"}],"chosen":{"role":"assistant","content":"C"},"rejected":{"role":"assistant","content":"R"}}

            """.ReplaceLineEndings("\n"), File.ReadAllText(path));
        var back = ConversationFile.Read(path);
        Assert.Equal([null, false, null], back.Select(c => c.KtoTag));
        Assert.Equal(all[2].Chosen, back[2].Chosen);
    }
}

/// <summary>data/identity_pref*.json and data/identity_kto.json: the bundled preference sets a tiny model trains DPO/KTO on.</summary>
public sealed class BundledPreferenceSetTests
{
    private static readonly DatasetLoadOptions IdentityPipeline = new()
    {
        Placeholders = new Dictionary<string, string> { ["name"] = "FineTune Assistant", ["author"] = "the FineTune team" },
    };

    private static IReadOnlyList<Conversation> Load(string name) =>
        DatasetLoader.Load(DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json")), name, IdentityPipeline).Conversations;

    /// <summary>Tokens of each answer as the demo model trains it: the scratch tokenizer, qwen3's think block and end of turn.</summary>
    private static int AnswerTokens(ChatMessage answer, Conversation c)
    {
        var tokenizer = FineTune.Tokenizers.Tokenizer.FromDirectory(Path.Combine(AppContext.BaseDirectory, "Fixtures", "scratch-tokenizer"));
        var preprocessor = new Preprocessing.Preprocessor(tokenizer, Templates.ChatTemplate.Get("qwen3"), new Preprocessing.PreprocessOptions());
        var pair = preprocessor.EncodePair(c with { Chosen = answer, Rejected = answer, KtoTag = null, Messages = c.KtoTag is null ? c.Messages : c.Messages.Take(c.Messages.Count - 1).ToList() });
        return pair.Chosen.Labels.Count(l => l != Preprocessing.TokenizedSample.IgnoreIndex);
    }

    [Fact]
    public void IdentityPrefHolds48PairsOfVariedPromptsWhoseChosenAnswerNamesTheAssistant()
    {
        var pairs = Load("identity_pref");
        Assert.Equal(48, pairs.Count);
        Assert.Equal(48, pairs.Select(p => p.Messages[^1].Content).Distinct().Count());
        Assert.All(pairs, p => Assert.True(p.Chosen!.Content.Contains("FineTune Assistant", StringComparison.Ordinal) || p.Chosen.Content.Contains("the FineTune team", StringComparison.OrdinalIgnoreCase), p.Chosen.Content));
        Assert.All(pairs, p => Assert.DoesNotContain("FineTune", p.Rejected!.Content, StringComparison.Ordinal));
        Assert.All(pairs, p => Assert.NotEqual(p.Chosen, p.Rejected));
        Assert.DoesNotContain(pairs, p => (p.Chosen!.Content + p.Rejected!.Content + p.Messages[0].Content).Contains("{{", StringComparison.Ordinal));
    }

    [Fact]
    public void BundledPreferenceAnswersAreAtMost40TokensForTheDemoModel()
    {
        var answers = Load("identity_pref").Concat(Load("identity_pref_sharegpt")).SelectMany(p => new[] { (p.Chosen!, p), (p.Rejected!, p) })
            .Concat(Load("identity_kto").Select(k => (k.Messages[^1], k)));
        var longest = answers.Max(a => AnswerTokens(a.Item1, a.Item2));
        Assert.InRange(longest, 10, 40);
    }

    [Fact]
    public void IdentityPrefShareGptExercisesHistoryAndSystemMessages()
    {
        var pairs = Load("identity_pref_sharegpt");
        Assert.Equal(8, pairs.Count);
        Assert.Equal(3, pairs.Count(p => p.Messages.Count == 3));
        Assert.Equal(["You are FineTune Assistant, made by the FineTune team."], pairs.Select(p => p.System).Where(s => s.Length > 0).Distinct());
    }

    [Fact]
    public void IdentityKtoHolds48RowsHalfDesirable()
    {
        var rows = Load("identity_kto");
        Assert.Equal(48, rows.Count);
        Assert.Equal(24, rows.Count(r => r.KtoTag == true));
        // Neighbours never share a prompt, so the KL completion (the previous row's) is always a mismatched one.
        Assert.All(rows.Zip(rows.Skip(1)), n => Assert.NotEqual(n.First.Messages[0].Content, n.Second.Messages[0].Content));
        Assert.All(rows.Where(r => r.KtoTag == true), r => Assert.Contains("FineTune", r.Messages[^1].Content, StringComparison.Ordinal));
    }
}
