using FineTune.Data.Reading;
using FineTune.Data.Registry;

namespace FineTune.Data.Tests;

public sealed class DatasetLoaderTests
{
    private static readonly DatasetLoadOptions Sft = new();

    private static LoadedDataset LoadOne(TempDir tmp, string entryJson, string fileName, string content, DatasetLoadOptions? options = null)
    {
        tmp.Write(fileName, content);
        var registry = DatasetRegistry.Load(tmp.Write("dataset_info.json", "{\"d\": " + entryJson + "}"));
        return DatasetLoader.Load(registry, "d", options ?? Sft);
    }

    private static DatasetValidationException Invalid(TempDir tmp, string entryJson, string fileName, string content) =>
        Assert.Throws<DatasetValidationException>(() => LoadOne(tmp, entryJson, fileName, content));

    [Fact]
    public void IdentityFillsNameAndAuthorPlaceholders()
    {
        var registry = DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json"));
        var options = Sft with { Placeholders = new Dictionary<string, string> { ["name"] = "Ferret", ["author"] = "FineTune" } };
        var loaded = DatasetLoader.Load(registry, "identity", options);
        Assert.Equal(30, loaded.Conversations.Count);
        Assert.Equal("I am Ferret, an AI assistant made by FineTune.", loaded.Conversations[3].Messages[1].Content);
        Assert.DoesNotContain(loaded.Conversations, c => c.Messages.Any(m => m.Content.Contains("{{", StringComparison.Ordinal)));
    }

    [Fact]
    public void BundledDatasetsAllLoadWithoutProblems()
    {
        var registry = DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json"));
        var counts = registry.Names.Order(StringComparer.Ordinal).Select(n => DatasetLoader.Load(registry, n, Sft).Conversations.Count);
        Assert.Equal([16, 30, 48, 48, 8, 8, 3], counts);
    }

    [Fact]
    public void AlpacaJoinsInstructionAndInputWithNewlineAndKeepsHistory()
    {
        using var tmp = new TempDir();
        var loaded = LoadOne(tmp, """{"file_name": "a.json", "columns": {"history": "history", "system": "system"}}""", "a.json", """
            [{"instruction": "Translate", "input": "Hallo", "output": "Hello", "system": "Be brief.", "history": [["Hi", "Hey"]]}]
            """);
        var c = loaded.Conversations.Single();
        Assert.Equal("Be brief.", c.System);
        Assert.Equal([(ChatRole.User, "Hi"), (ChatRole.Assistant, "Hey"), (ChatRole.User, "Translate\nHallo"), (ChatRole.Assistant, "Hello")],
            c.Messages.Select(m => (m.Role, m.Content)));
    }

    [Fact]
    public void OpenAiStyleMessagesReadThroughTagsWithLeadingSystem()
    {
        using var tmp = new TempDir();
        var loaded = LoadOne(tmp, """
            {"file_name": "o.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
             "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}}
            """, "o.jsonl", """
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]}
            """);
        var c = loaded.Conversations.Single();
        Assert.Equal("S", c.System);
        Assert.Equal([(ChatRole.User, "U"), (ChatRole.Assistant, "A")], c.Messages.Select(m => (m.Role, m.Content)));
    }

    [Fact]
    public void MissingColumnNamesFileRecordLineAndColumn()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "a.json"}""", "a.json", "[\n  {\"instruction\": \"x\", \"output\": \"y\"},\n  {\"output\": \"y\"}\n]");
        Assert.Equal(1, e.TotalProblems);
        Assert.Equal($"{tmp.Path}/a.json: record 2 (line 3), field 'instruction': missing column 'instruction' (the prompt)", e.Problems[0].ToString());
    }

    [Fact]
    public void WrongRoleOrderInShareGptIsLocatedAtTheMessage()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "s.json", "formatting": "sharegpt"}""", "s.json", """
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}]
            """);
        Assert.Equal("conversations[1].from", e.Problems[0].Field);
        Assert.Equal("wrong role order: 'human' where an answer ('gpt' or 'function_call') must come (turns alternate prompt, answer)", e.Problems[0].Message);
    }

    [Fact]
    public void ObservationMayOnlyFollowAFunctionCall()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "s.json", "formatting": "sharegpt"}""", "s.json", """
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "observation", "value": "b"}]}]
            """);
        Assert.Equal("conversations[1].from", e.Problems[0].Field);
    }

    [Fact]
    public void ConversationEndingWithAPromptIsRejected()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "s.json", "formatting": "sharegpt"}""", "s.json", """
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}, {"from": "human", "value": "c"}]}]
            """);
        Assert.Equal("3 turns: the conversation must end with an answer ('gpt' or 'function_call')", e.Problems[0].Message);
    }

    [Fact]
    public void UnknownRoleListsTheConfiguredTags()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "s.json", "formatting": "sharegpt"}""", "s.json", """
            [{"conversations": [{"from": "user", "value": "a"}, {"from": "gpt", "value": "b"}]}]
            """);
        Assert.Equal("unknown role 'user': expected one of 'human', 'gpt', 'observation', 'function_call'", e.Problems[0].Message);
    }

    [Fact]
    public void EmptyResponseIsAnError()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "a.jsonl"}""", "a.jsonl", "{\"instruction\": \"q\", \"output\": \"  \"}\n");
        Assert.Equal(("output", "empty response"), (e.Problems[0].Field, e.Problems[0].Message));
    }

    [Fact]
    public void InvalidJsonLineReportsItsLineNumber()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "a.jsonl"}""", "a.jsonl",
            "{\"instruction\": \"q\", \"output\": \"a\"}\n\n{\"instruction\": \"q\", \"output\": \"a\",}\n");
        Assert.Equal(3, e.Problems[0].Line);
        Assert.StartsWith("invalid JSON at line 3, column 36:", e.Problems[0].Message);
    }

    [Fact]
    public void InvalidJsonArrayReportsLineAndColumn()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "a.json"}""", "a.json", "[\n  {\"instruction\": \"q\", \"output\": \"a\"}\n  {\"instruction\": \"q\"}\n]");
        Assert.StartsWith("invalid JSON at line 3, column 3:", e.Problems[0].Message);
    }

    [Fact]
    public void FunctionCallMustBeJsonWithNameAndArguments()
    {
        using var tmp = new TempDir();
        var e = Invalid(tmp, """{"file_name": "s.json", "formatting": "sharegpt"}""", "s.json", """
            [{"conversations": [{"from": "human", "value": "a"}, {"from": "function_call", "value": "get_weather(Oslo)"}]}]
            """);
        Assert.Equal("conversations[1].value", e.Problems[0].Field);
        Assert.StartsWith("a function call must be JSON", e.Problems[0].Message);
    }

    [Fact]
    public void AtMostTwentyProblemsAreListedWithTheTotal()
    {
        using var tmp = new TempDir();
        var lines = string.Concat(Enumerable.Range(0, 25).Select(i => "{\"instruction\": \"q\"}\n"));
        var e = Invalid(tmp, """{"file_name": "a.jsonl"}""", "a.jsonl", lines);
        Assert.Equal((20, 25), (e.Problems.Count, e.TotalProblems));
        Assert.StartsWith("Dataset 'd' has 25 invalid records (first 20 listed):", e.Message);
    }

    [Fact]
    public void SkipInvalidDropsAndCountsBadRecords()
    {
        using var tmp = new TempDir();
        var loaded = LoadOne(tmp, """{"file_name": "a.jsonl"}""", "a.jsonl",
            "{\"instruction\": \"q\", \"output\": \"a\"}\n{\"instruction\": \"q\"}\nnot json\n{\"instruction\": \"r\", \"output\": \"b\"}\n",
            Sft with { SkipInvalid = true });
        Assert.Equal((2, 2, 4), (loaded.Conversations.Count, loaded.Dropped, loaded.RecordsRead));
    }

    [Fact]
    public void CsvRowsReadWithQuotedCommasAndNewlines()
    {
        using var tmp = new TempDir();
        var loaded = LoadOne(tmp, """{"file_name": "a.csv"}""", "a.csv", "instruction,input,output\n\"Say a, b\",,\"line1\nline2\"\nq2,x,\"He said \"\"hi\"\"\"\n");
        Assert.Equal(["Say a, b", "line1\nline2", "q2\nx", "He said \"hi\""],
            loaded.Conversations.SelectMany(c => c.Messages.Select(m => m.Content)));
    }

    [Fact]
    public void PretrainReadsThePromptColumnOnly()
    {
        using var tmp = new TempDir();
        var loaded = LoadOne(tmp, """{"file_name": "t.jsonl", "columns": {"prompt": "text"}}""", "t.jsonl",
            "{\"text\": \"doc one\"}\n{\"text\": \"doc two\"}\n", Sft with { Purpose = DatasetPurpose.Pretrain });
        Assert.Equal(["doc one", "doc two"], loaded.Conversations.Select(c => c.Messages.Single().Content));
        Assert.True(loaded.Conversations[0].IsPretrainText);
    }

    [Fact]
    public void NumSamplesTakesASeededSampleAndRepeatsWhenLarger()
    {
        using var tmp = new TempDir();
        var lines = string.Concat(Enumerable.Range(0, 5).Select(i => $"{{\"instruction\": \"q{i}\", \"output\": \"a\"}}\n"));
        var loaded = LoadOne(tmp, """{"file_name": "a.jsonl", "num_samples": 7}""", "a.jsonl", lines);
        var prompts = loaded.Conversations.Select(c => c.Messages[0].Content).ToList();
        Assert.Equal(["q0", "q1", "q2", "q3", "q4"], prompts.Take(5));
        Assert.Equal(2, prompts.Skip(5).Distinct().Count());
    }

    [Fact]
    public void MaxSamplesReadsTheFirstRecords()
    {
        using var tmp = new TempDir();
        var lines = string.Concat(Enumerable.Range(0, 5).Select(i => $"{{\"instruction\": \"q{i}\", \"output\": \"a\"}}\n"));
        var loaded = LoadOne(tmp, """{"file_name": "a.jsonl"}""", "a.jsonl", lines, Sft with { MaxSamples = 2 });
        Assert.Equal(["q0", "q1"], loaded.Conversations.Select(c => c.Messages[0].Content));
    }
}
