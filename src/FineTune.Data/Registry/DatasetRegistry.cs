using System.Text.Json;
using FineTune.Data.Reading;
using FineTune.IO;

namespace FineTune.Data.Registry;

/// <summary>
/// A parsed <c>dataset_info.json</c> (LLaMA-Factory's format): dataset name → entry. Dataset files are
/// resolved relative to the registry's directory, as LLaMA-Factory's <c>dataset_dir</c>.
/// </summary>
public sealed class DatasetRegistry
{
    private static readonly string[] SupportedExtensions = [".json", ".jsonl", ".csv"];

    /// <summary>Keys of an entry that FineTune reads (others, such as file_sha1, are ignored); schemas/dataset_info.schema.json lists the same.</summary>
    public static readonly IReadOnlyList<string> EntryKeys =
        ["file_name", "formatting", "ranking", "columns", "tags", "num_samples", "hf_hub_url", "ms_hub_url", "script_url", "subset", "split", "folder"];

    public static readonly IReadOnlyList<string> ColumnKeys =
        ["prompt", "query", "response", "history", "messages", "system", "tools", "images", "chosen", "rejected", "kto_tag"];

    public static readonly IReadOnlyList<string> TagKeys =
        ["role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"];

    /// <summary>Values of <c>formatting</c>.</summary>
    public static readonly IReadOnlyList<string> FormattingNames = ["alpaca", "sharegpt"];

    /// <summary>The most FineTune reads of a dataset_info.json (LLaMA-Factory's own, with some 100 entries, is 20 KB).</summary>
    public const long MaxRegistryBytes = 16L << 20;

    private readonly Dictionary<string, JsonElement> _descriptions;
    private readonly Dictionary<string, DatasetEntry> _entries = new(StringComparer.Ordinal);

    private DatasetRegistry(string path, IReadOnlyList<string> names, Dictionary<string, JsonElement> descriptions)
    {
        RegistryPath = path;
        Names = names;
        _descriptions = descriptions;
    }

    public string RegistryPath { get; }
    public string Directory => Path.GetDirectoryName(RegistryPath)!;

    /// <summary>The registered dataset names, in file order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>
    /// Reads the registry as JSON; each entry is interpreted when <see cref="Get"/> asks for it, so a bad entry fails
    /// only the pipelines that use it, as in LLaMA-Factory.
    /// </summary>
    public static DatasetRegistry Load(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full) && !System.IO.Directory.Exists(full))
            throw new DatasetException($"{full}: dataset registry not found. Create a dataset_info.json (see docs/data.md) or point `data.dataset_dir` at the folder holding one.");
        var bytes = InputFile.ReadAllBytes(full, MaxRegistryBytes, "dataset_info.json", p => new DatasetException($"{full}: {p.Text}; " +
            (p.TooLarge ? "dataset_info.json describes datasets; the records belong in the files it names." : "dataset_info.json must be a regular JSON file.")));
        if (InputFile.Utf8Problem(bytes, out _) is { } encoding)
            throw new DatasetException($"{full}: {encoding}.");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(bytes.AsMemory(bytes.Length - InputFile.WithoutByteOrderMark(bytes).Length),
                new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new DatasetException($"{full}: invalid JSON at line {e.LineNumber + 1}, column {e.BytePositionInLine + 1}: {FirstSentence(e.Message)}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new DatasetException($"{full}: expected a JSON object mapping dataset names to descriptions, found {doc.RootElement.ValueKind}.");
            var names = new List<string>();
            var descriptions = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                // A name given twice: the later description wins, as Python's json.load has it.
                if (!descriptions.ContainsKey(property.Name)) names.Add(property.Name);
                descriptions[property.Name] = property.Value.Clone();
            }
            return new DatasetRegistry(full, names, descriptions);
        }
    }

    /// <summary>Interprets one entry; errors name the file, the dataset and the key.</summary>
    public static DatasetEntry ParseEntry(string file, string name, JsonElement value)
    {
        DatasetException Bad(string key, string message) => new($"{file}: dataset '{name}', key '{key}': {message}");
        if (value.ValueKind != JsonValueKind.Object)
            throw new DatasetException($"{file}: dataset '{name}': expected an object with file_name (or a hub URL), formatting, columns, …, got {Show(value)}.");
        var formattingText = OptionalString(file, name, value, "formatting") ?? "alpaca";
        var formatting = formattingText switch
        {
            "alpaca" => DatasetFormatting.Alpaca,
            "sharegpt" => DatasetFormatting.ShareGpt,
            _ => throw Bad("formatting", $"unknown formatting '{formattingText}'; expected 'alpaca' or 'sharegpt'."),
        };
        var columns = new DatasetColumns();
        if (Present(value, "columns") is { } c)
        {
            if (c.ValueKind != JsonValueKind.Object)
                throw Bad("columns", $"expected an object mapping column roles to column names, got {Show(c)}.");
            foreach (var key in c.EnumerateObject())
                if (!ColumnKeys.Contains(key.Name))
                    throw Bad($"columns.{key.Name}", $"unknown column key; expected one of {string.Join(", ", ColumnKeys)}.");
            // A named column replaces the default; an unnamed one keeps it (LLaMA-Factory's set_attr).
            string? Col(string key, string? fallback) =>
                !c.TryGetProperty(key, out var v) ? fallback
                : v.ValueKind == JsonValueKind.String ? v.GetString()
                : v.ValueKind == JsonValueKind.Null ? null
                : throw Bad($"columns.{key}", $"expected a string (a column name), got {Show(v)}.");
            columns = new DatasetColumns
            {
                Prompt = Col("prompt", columns.Prompt), Query = Col("query", columns.Query), Response = Col("response", columns.Response),
                History = Col("history", columns.History), Messages = Col("messages", columns.Messages), System = Col("system", columns.System),
                Tools = Col("tools", columns.Tools), Images = Col("images", columns.Images), Chosen = Col("chosen", columns.Chosen),
                Rejected = Col("rejected", columns.Rejected), KtoTag = Col("kto_tag", columns.KtoTag),
            };
        }
        var tags = new DatasetTags();
        // Tags apply to sharegpt only, as in LLaMA-Factory's parser.
        if (formatting == DatasetFormatting.ShareGpt && Present(value, "tags") is { } t)
        {
            if (t.ValueKind != JsonValueKind.Object)
                throw Bad("tags", $"expected an object mapping tag names to values, got {Show(t)}.");
            foreach (var key in t.EnumerateObject())
                if (!TagKeys.Contains(key.Name))
                    throw Bad($"tags.{key.Name}", $"unknown tag key; expected one of {string.Join(", ", TagKeys)}.");
            string Tag(string key, string fallback) =>
                !t.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null ? fallback
                : v.ValueKind == JsonValueKind.String ? v.GetString()!
                : throw Bad($"tags.{key}", $"expected a string, got {Show(v)}.");
            tags = new DatasetTags
            {
                RoleTag = Tag("role_tag", tags.RoleTag), ContentTag = Tag("content_tag", tags.ContentTag), UserTag = Tag("user_tag", tags.UserTag),
                AssistantTag = Tag("assistant_tag", tags.AssistantTag), ObservationTag = Tag("observation_tag", tags.ObservationTag),
                FunctionTag = Tag("function_tag", tags.FunctionTag), SystemTag = Tag("system_tag", tags.SystemTag),
            };
        }
        int? numSamples = null;
        if (Present(value, "num_samples") is { } ns)
        {
            if (ns.ValueKind != JsonValueKind.Number || !ns.TryGetInt32(out var n) || n <= 0)
                throw Bad("num_samples", $"expected a positive integer, got {Show(ns)}.");
            numSamples = n;
        }
        var ranking = Present(value, "ranking") switch
        {
            null => false,
            { ValueKind: JsonValueKind.True } => true,
            { ValueKind: JsonValueKind.False } => false,
            var other => throw Bad("ranking", $"expected true or false, got {Show(other.Value)}."),
        };
        // Checked once here rather than in every record: without these names no record can be read.
        if (ranking && (columns.Chosen is null || columns.Rejected is null))
            throw Bad("columns", $"ranking: true needs columns.chosen and columns.rejected (the columns holding the chosen and the rejected answer), e.g. \"columns\": {{\"chosen\": \"chosen\", \"rejected\": \"rejected\"}}.");
        if (ranking && columns.KtoTag is not null)
            throw Bad("columns.kto_tag", "a kto_tag dataset holds single answers tagged desirable or undesirable; it cannot also be ranking: true (chosen/rejected pairs). Register the two kinds as two datasets.");
        return new DatasetEntry
        {
            Name = name,
            FileName = OptionalString(file, name, value, "file_name"),
            Formatting = formatting,
            Ranking = ranking,
            Columns = columns,
            Tags = tags,
            NumSamples = numSamples,
            HfHubUrl = OptionalString(file, name, value, "hf_hub_url"),
            MsHubUrl = OptionalString(file, name, value, "ms_hub_url"),
            ScriptUrl = OptionalString(file, name, value, "script_url"),
            Subset = OptionalString(file, name, value, "subset"),
            Split = OptionalString(file, name, value, "split"),
            Folder = OptionalString(file, name, value, "folder"),
        };
    }

    /// <summary>The entry for <paramref name="name"/>, or an error listing the registered names (or what is wrong with the entry).</summary>
    public DatasetEntry Get(string name)
    {
        if (_entries.TryGetValue(name, out var entry)) return entry;
        if (!_descriptions.TryGetValue(name, out var description))
            throw new DatasetException($"{RegistryPath}: no dataset named '{name}'. Registered: {string.Join(", ", Names.Order(StringComparer.Ordinal))}. Add an entry to dataset_info.json or fix the name in the pipeline.");
        return _entries[name] = ParseEntry(RegistryPath, name, description);
    }

    /// <summary>The local files an entry reads: its file, or every .json/.jsonl/.csv file of its folder (sorted).</summary>
    public IReadOnlyList<string> ResolveFiles(DatasetEntry entry)
    {
        if (entry.FileName is null)
        {
            var remote = entry.HfHubUrl ?? entry.MsHubUrl ?? entry.ScriptUrl;
            throw new DatasetException(remote is null
                ? $"{RegistryPath}: dataset '{entry.Name}' has no file_name."
                : $"{RegistryPath}: dataset '{entry.Name}' names a hub dataset ('{remote}'); FineTune reads local files only: download it and set file_name.");
        }
        var path = Path.GetFullPath(Path.Combine(Directory, entry.FileName));
        if (System.IO.Directory.Exists(path))
        {
            var files = System.IO.Directory.GetFiles(path).Where(IsSupported).Order(StringComparer.Ordinal).ToList();
            if (files.Count == 0)
                throw new DatasetException($"{path}: folder of dataset '{entry.Name}' holds no .json, .jsonl or .csv files.");
            foreach (var file in files)
                if (InputFile.Check(file, RecordReader.MaxFileBytes, RecordReader.LimitFor) is { } p)
                    throw new DatasetException($"{file}: dataset '{entry.Name}': {p.Text}; " + (p.TooLarge
                        ? "split it into several files of the folder."
                        : "remove it from the folder, or replace it with a regular file."));
            return files;
        }
        if (!File.Exists(path))
            throw new DatasetException($"{path}: file of dataset '{entry.Name}' not found (file_name '{entry.FileName}' in {RegistryPath}).");
        if (!IsSupported(path))
            throw new DatasetException($"{path}: dataset '{entry.Name}': unsupported file type '{Path.GetExtension(path)}'; use .json (array or lines), .jsonl or .csv.");
        // Checked before anything reads or hashes the file: a link to /dev/zero would never end.
        if (InputFile.Check(path, RecordReader.MaxFileBytes, RecordReader.LimitFor) is { } problem)
            throw new DatasetException($"{path}: dataset '{entry.Name}': {problem.Text}; {RecordReader.Advice(problem)}");
        return [path];
    }

    private static bool IsSupported(string path) => SupportedExtensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    private static string? OptionalString(string file, string name, JsonElement obj, string key)
    {
        if (Present(obj, key) is not { } v) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new DatasetException($"{file}: dataset '{name}', key '{key}': expected a string, got {Show(v)}.");
        return v.GetString();
    }

    /// <summary>The value of <paramref name="key"/> unless it is absent or null (null means "not set", as in Python).</summary>
    private static JsonElement? Present(JsonElement obj, string key) =>
        obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    /// <summary>A value as written, shortened for a message.</summary>
    private static string Show(JsonElement v)
    {
        var text = v.GetRawText();
        return text.Length <= 60 ? text : text[..57] + "…";
    }

    internal static string FirstSentence(string message)
    {
        var i = message.IndexOf(". ", StringComparison.Ordinal);
        return i < 0 ? message : message[..(i + 1)];
    }
}
