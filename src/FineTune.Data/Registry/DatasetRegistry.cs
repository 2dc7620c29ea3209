using System.Text.Json;

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

    private DatasetRegistry(string path, IReadOnlyDictionary<string, DatasetEntry> entries)
    {
        RegistryPath = path;
        Entries = entries;
    }

    public string RegistryPath { get; }
    public string Directory => Path.GetDirectoryName(RegistryPath)!;
    public IReadOnlyDictionary<string, DatasetEntry> Entries { get; }

    public static DatasetRegistry Load(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
            throw new DatasetException($"{full}: dataset registry not found. Create a dataset_info.json (see docs/data.md) or point `data.dataset_dir` at the folder holding one.");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(full), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new DatasetException($"{full}: invalid JSON at line {e.LineNumber + 1}, column {e.BytePositionInLine + 1}: {FirstSentence(e.Message)}", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new DatasetException($"{full}: expected a JSON object mapping dataset names to descriptions, found {doc.RootElement.ValueKind}.");
            var entries = new Dictionary<string, DatasetEntry>(StringComparer.Ordinal);
            foreach (var property in doc.RootElement.EnumerateObject())
                entries[property.Name] = ParseEntry(full, property.Name, property.Value);
            return new DatasetRegistry(full, entries);
        }
    }

    public static DatasetEntry ParseEntry(string file, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw new DatasetException($"{file}: dataset '{name}': expected an object, found {value.ValueKind}.");
        var formattingText = OptionalString(file, name, value, "formatting") ?? "alpaca";
        var formatting = formattingText switch
        {
            "alpaca" => DatasetFormatting.Alpaca,
            "sharegpt" => DatasetFormatting.ShareGpt,
            _ => throw new DatasetException($"{file}: dataset '{name}': unknown formatting '{formattingText}'; expected 'alpaca' or 'sharegpt'."),
        };
        var columns = new DatasetColumns();
        if (value.TryGetProperty("columns", out var c) && c.ValueKind == JsonValueKind.Object)
        {
            foreach (var key in c.EnumerateObject())
                if (!ColumnKeys.Contains(key.Name))
                    throw new DatasetException($"{file}: dataset '{name}': unknown column key '{key.Name}'; expected one of {string.Join(", ", ColumnKeys)}.");
            // A named column replaces the default; an unnamed one keeps it (LLaMA-Factory's set_attr).
            string? Col(string key, string? fallback) =>
                c.TryGetProperty(key, out var v) ? (v.ValueKind == JsonValueKind.String ? v.GetString() : v.ValueKind == JsonValueKind.Null ? null : throw new DatasetException($"{file}: dataset '{name}': columns.{key} must be a string.")) : fallback;
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
        if (formatting == DatasetFormatting.ShareGpt && value.TryGetProperty("tags", out var t) && t.ValueKind == JsonValueKind.Object)
        {
            foreach (var key in t.EnumerateObject())
                if (!TagKeys.Contains(key.Name))
                    throw new DatasetException($"{file}: dataset '{name}': unknown tag key '{key.Name}'; expected one of {string.Join(", ", TagKeys)}.");
            string Tag(string key, string fallback) => t.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : fallback;
            tags = new DatasetTags
            {
                RoleTag = Tag("role_tag", tags.RoleTag), ContentTag = Tag("content_tag", tags.ContentTag), UserTag = Tag("user_tag", tags.UserTag),
                AssistantTag = Tag("assistant_tag", tags.AssistantTag), ObservationTag = Tag("observation_tag", tags.ObservationTag),
                FunctionTag = Tag("function_tag", tags.FunctionTag), SystemTag = Tag("system_tag", tags.SystemTag),
            };
        }
        int? numSamples = null;
        if (value.TryGetProperty("num_samples", out var ns) && ns.ValueKind != JsonValueKind.Null)
        {
            if (ns.ValueKind != JsonValueKind.Number || !ns.TryGetInt32(out var n) || n <= 0)
                throw new DatasetException($"{file}: dataset '{name}': num_samples must be a positive integer.");
            numSamples = n;
        }
        var ranking = value.TryGetProperty("ranking", out var r) && r.ValueKind == JsonValueKind.True;
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

    /// <summary>The entry for <paramref name="name"/>, or an error listing the registered names.</summary>
    public DatasetEntry Get(string name)
    {
        if (Entries.TryGetValue(name, out var entry)) return entry;
        throw new DatasetException($"{RegistryPath}: no dataset named '{name}'. Registered: {string.Join(", ", Entries.Keys.Order(StringComparer.Ordinal))}. Add an entry to dataset_info.json or fix the name in the pipeline.");
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
            return files;
        }
        if (!File.Exists(path))
            throw new DatasetException($"{path}: file of dataset '{entry.Name}' not found (file_name '{entry.FileName}' in {RegistryPath}).");
        if (!IsSupported(path))
            throw new DatasetException($"{path}: dataset '{entry.Name}': unsupported file type '{Path.GetExtension(path)}'; use .json (array or lines), .jsonl or .csv.");
        return [path];
    }

    private static bool IsSupported(string path) => SupportedExtensions.Contains(Path.GetExtension(path).ToLowerInvariant());

    private static string? OptionalString(string file, string name, JsonElement obj, string key)
    {
        if (!obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new DatasetException($"{file}: dataset '{name}': {key} must be a string, found {v.ValueKind}.");
        return v.GetString();
    }

    internal static string FirstSentence(string message)
    {
        var i = message.IndexOf(". ", StringComparison.Ordinal);
        return i < 0 ? message : message[..(i + 1)];
    }
}
