using System.Text.Json;
using FineTune.Data.Registry;

namespace FineTune.Data.Tests;

public sealed class RegistryTests
{
    [Fact]
    public void BundledRegistryListsTheBundledDatasets()
    {
        var registry = DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json"));
        Assert.Equal(["alpaca_mini", "identity", "identity_kto", "identity_pref", "identity_pref_sharegpt", "roleplay_mini", "tool_calls_mini"], registry.Names.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void EntryWithoutColumnsGetsLlamaFactoryDefaults()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """{"d": {"file_name": "d.json"}}""");
        var entry = DatasetRegistry.Load(path).Get("d");
        Assert.Equal(DatasetFormatting.Alpaca, entry.Formatting);
        Assert.Equal(("instruction", "input", "output", "conversations"), (entry.Columns.Prompt, entry.Columns.Query, entry.Columns.Response, entry.Columns.Messages));
        Assert.Null(entry.Columns.System);
        Assert.Equal(("from", "value", "human", "gpt"), (entry.Tags.RoleTag, entry.Tags.ContentTag, entry.Tags.UserTag, entry.Tags.AssistantTag));
    }

    [Fact]
    public void NamedColumnsReplaceDefaultsAndOthersStay()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """{"d": {"file_name": "d.json", "columns": {"prompt": "q", "system": "sys"}}}""");
        var c = DatasetRegistry.Load(path).Get("d").Columns;
        Assert.Equal(("q", "input", "output", "sys"), (c.Prompt, c.Query, c.Response, c.System));
    }

    [Fact]
    public void TagsAreReadForShareGptOnly()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """
            {"s": {"file_name": "s.json", "formatting": "sharegpt", "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}},
             "a": {"file_name": "a.json", "tags": {"role_tag": "role"}}}
            """);
        var registry = DatasetRegistry.Load(path);
        Assert.Equal(("role", "content", "user", "assistant", "system"), (registry.Get("s").Tags.RoleTag, registry.Get("s").Tags.ContentTag, registry.Get("s").Tags.UserTag, registry.Get("s").Tags.AssistantTag, registry.Get("s").Tags.SystemTag));
        Assert.Equal("from", registry.Get("a").Tags.RoleTag);
    }

    [Fact]
    public void UnknownFormattingNamesDatasetAndValue()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """{"d": {"file_name": "d.json", "formatting": "openai_chat"}}""");
        var e = Assert.Throws<DatasetException>(() => DatasetRegistry.Load(path).Get("d"));
        Assert.Equal($"{path}: dataset 'd', key 'formatting': unknown formatting 'openai_chat'; expected 'alpaca' or 'sharegpt'.", e.Message);
    }

    [Fact]
    public void BadEntryFailsOnlyWhenItIsUsed()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """
            {"good": {"file_name": "g.json"},
             "bad": {"file_name": "b.json", "num_samples": -3}}
            """);
        var registry = DatasetRegistry.Load(path);
        Assert.Equal("g.json", registry.Get("good").FileName);
        Assert.Equal(["good", "bad"], registry.Names);
        var e = Assert.Throws<DatasetException>(() => registry.Get("bad"));
        Assert.Equal($"{path}: dataset 'bad', key 'num_samples': expected a positive integer, got -3.", e.Message);
    }

    [Theory]
    [InlineData("""{"file_name": 7}""", "key 'file_name': expected a string, got 7.")]
    [InlineData("""{"file_name": "b.json", "columns": ["prompt"]}""", "key 'columns': expected an object mapping column roles to column names, got [\"prompt\"].")]
    [InlineData("""{"file_name": "b.json", "columns": {"prompt": 1}}""", "key 'columns.prompt': expected a string (a column name), got 1.")]
    [InlineData("""{"file_name": "b.json", "formatting": "sharegpt", "tags": {"role_tag": false}}""", "key 'tags.role_tag': expected a string, got false.")]
    [InlineData("""{"file_name": "b.json", "ranking": "yes"}""", "key 'ranking': expected true or false, got \"yes\".")]
    [InlineData("""["b.json"]""", "expected an object with file_name (or a hub URL), formatting, columns, …, got [\"b.json\"].")]
    public void EntryErrorsNameTheRegistryTheEntryAndTheKey(string entry, string message)
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", "{\"good\": {\"file_name\": \"g.json\"}, \"bad\": " + entry + "}");
        var registry = DatasetRegistry.Load(path);
        var e = Assert.Throws<DatasetException>(() => registry.Get("bad"));
        Assert.Equal($"{path}: dataset 'bad'" + (message.StartsWith("key", StringComparison.Ordinal) ? ", " : ": ") + message, e.Message);
    }

    [Fact]
    public void RegistryWithUtf8ByteOrderMarkIsRead()
    {
        using var tmp = new TempDir();
        var path = tmp.WriteBytes("dataset_info.json", [0xEF, 0xBB, 0xBF, .. """{"d": {"file_name": "d.json"}}"""u8]);
        Assert.Equal("d.json", DatasetRegistry.Load(path).Get("d").FileName);
    }

    [Fact]
    public void RegistryInLatin1IsReportedWithItsByteOffset()
    {
        using var tmp = new TempDir();
        var path = tmp.WriteBytes("dataset_info.json", System.Text.Encoding.Latin1.GetBytes("{\"caf\u00e9\": {\"file_name\": \"d.json\"}}"));
        var e = Assert.Throws<DatasetException>(() => DatasetRegistry.Load(path));
        Assert.Equal($"{path}: byte 0xE9 at offset 5 (line 1, column 6) is not UTF-8: save the file as UTF-8 (e.g. iconv -f windows-1252 -t utf-8).", e.Message);
    }

    [Fact]
    public void RegistryLinkedToDevZeroIsRejectedBeforeReading()
    {
        using var tmp = new TempDir();
        var link = Path.Combine(tmp.Path, "dataset_info.json");
        File.CreateSymbolicLink(link, "/dev/zero");
        var e = Assert.Throws<DatasetException>(() => DatasetRegistry.Load(link));
        Assert.Equal($"{link}: links to /dev/zero, a character device, not a regular file; dataset_info.json must be a regular JSON file.", e.Message);
    }

    [Fact]
    public void UnknownDatasetNameListsRegisteredNames()
    {
        var registry = DatasetRegistry.Load(Path.Combine(TestPaths.DataDir, "dataset_info.json"));
        var e = Assert.Throws<DatasetException>(() => registry.Get("idenity"));
        Assert.Contains("no dataset named 'idenity'. Registered: alpaca_mini, identity, identity_kto, identity_pref, identity_pref_sharegpt, roleplay_mini, tool_calls_mini.", e.Message);
    }

    [Fact]
    public void UnknownKeysSuchAsFileSha1AreIgnored()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """{"d": {"file_name": "d.json", "file_sha1": "abc"}}""");
        Assert.Equal("d.json", DatasetRegistry.Load(path).Get("d").FileName);
    }

    [Fact]
    public void FolderResolvesToItsDataFilesSorted()
    {
        using var tmp = new TempDir();
        tmp.Write("parts/b.jsonl", "");
        tmp.Write("parts/a.json", "[]");
        tmp.Write("parts/readme.md", "");
        var path = tmp.Write("dataset_info.json", """{"d": {"file_name": "parts"}}""");
        var registry = DatasetRegistry.Load(path);
        Assert.Equal(["a.json", "b.jsonl"], registry.ResolveFiles(registry.Get("d")).Select(Path.GetFileName));
    }

    [Fact]
    public void HubOnlyEntryExplainsThatFilesAreLocal()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("dataset_info.json", """{"d": {"hf_hub_url": "org/ds"}}""");
        var registry = DatasetRegistry.Load(path);
        var e = Assert.Throws<DatasetException>(() => registry.ResolveFiles(registry.Get("d")));
        Assert.Contains("names a hub dataset ('org/ds'); FineTune reads local files only", e.Message);
    }

    [Fact]
    public void SchemaDeclaresExactlyTheKeysTheParserReads()
    {
        using var schema = JsonDocument.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "schemas", "dataset_info.schema.json")));
        var defs = schema.RootElement.GetProperty("definitions");
        string[] Keys(string def) => defs.GetProperty(def).GetProperty("properties").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(DatasetRegistry.EntryKeys.Order(StringComparer.Ordinal), Keys("entry"));
        Assert.Equal(DatasetRegistry.ColumnKeys.Order(StringComparer.Ordinal), Keys("columns"));
        Assert.Equal(DatasetRegistry.TagKeys.Order(StringComparer.Ordinal), Keys("tags"));
        Assert.Equal(DatasetRegistry.FormattingNames, defs.GetProperty("entry").GetProperty("properties").GetProperty("formatting").GetProperty("enum").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public void SchemaDefaultsEqualTheRecordDefaults()
    {
        using var schema = JsonDocument.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "schemas", "dataset_info.schema.json")));
        var defs = schema.RootElement.GetProperty("definitions");
        string? Default(string def, string key)
        {
            var d = defs.GetProperty(def).GetProperty("properties").GetProperty(key).GetProperty("default");
            return d.ValueKind == JsonValueKind.Null ? null : d.GetString();
        }
        var c = new DatasetColumns();
        Assert.Equal([c.Prompt, c.Query, c.Response, c.History, c.Messages, c.System, c.Tools, c.Images, c.Chosen, c.Rejected, c.KtoTag],
            DatasetRegistry.ColumnKeys.Select(k => Default("columns", k)));
        var t = new DatasetTags();
        Assert.Equal([t.RoleTag, t.ContentTag, t.UserTag, t.AssistantTag, t.ObservationTag, t.FunctionTag, t.SystemTag],
            DatasetRegistry.TagKeys.Select(k => Default("tags", k)));
    }

    [Fact]
    public async Task BundledRegistryValidatesAgainstTheSchema()
    {
        var schema = await NJsonSchema.JsonSchema.FromFileAsync(Path.Combine(TestPaths.RepoRoot, "schemas", "dataset_info.schema.json"));
        var errors = schema.Validate(File.ReadAllText(Path.Combine(TestPaths.DataDir, "dataset_info.json")));
        Assert.Empty(errors);
    }

    [Fact]
    public async Task SchemaRejectsAnUnknownColumnKey()
    {
        var schema = await NJsonSchema.JsonSchema.FromFileAsync(Path.Combine(TestPaths.RepoRoot, "schemas", "dataset_info.schema.json"));
        var errors = schema.Validate("""{"d": {"file_name": "d.json", "columns": {"promt": "q"}}}""");
        Assert.Single(errors);
    }
}
