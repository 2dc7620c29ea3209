namespace FineTune.Data.Registry;

/// <summary>How records of a dataset file are laid out (LLaMA-Factory's <c>formatting</c>).</summary>
public enum DatasetFormatting { Alpaca, ShareGpt }

/// <summary>
/// Column names inside each record. Defaults are LLaMA-Factory's: an entry that names no columns reads
/// <c>instruction</c>/<c>input</c>/<c>output</c> (alpaca) or <c>conversations</c> (sharegpt).
/// </summary>
public sealed record DatasetColumns
{
    public string? Prompt { get; init; } = "instruction";
    public string? Query { get; init; } = "input";
    public string? Response { get; init; } = "output";
    public string? History { get; init; }
    public string? Messages { get; init; } = "conversations";
    public string? System { get; init; }
    public string? Tools { get; init; }
    public string? Images { get; init; }
    public string? Chosen { get; init; }
    public string? Rejected { get; init; }
    public string? KtoTag { get; init; }
}

/// <summary>Keys and role values inside sharegpt messages. Defaults: <c>from</c>/<c>value</c>, <c>human</c>/<c>gpt</c>.</summary>
public sealed record DatasetTags
{
    public string RoleTag { get; init; } = "from";
    public string ContentTag { get; init; } = "value";
    public string UserTag { get; init; } = "human";
    public string AssistantTag { get; init; } = "gpt";
    public string ObservationTag { get; init; } = "observation";
    public string FunctionTag { get; init; } = "function_call";
    public string SystemTag { get; init; } = "system";
}

/// <summary>One entry of <c>dataset_info.json</c>.</summary>
public sealed record DatasetEntry
{
    public required string Name { get; init; }
    public string? FileName { get; init; }
    public DatasetFormatting Formatting { get; init; } = DatasetFormatting.Alpaca;
    public bool Ranking { get; init; }
    public DatasetColumns Columns { get; init; } = new();
    public DatasetTags Tags { get; init; } = new();
    /// <summary>Take this many records (a seeded sample; repeats the file when larger than it).</summary>
    public int? NumSamples { get; init; }
    public string? HfHubUrl { get; init; }
    public string? MsHubUrl { get; init; }
    public string? ScriptUrl { get; init; }
    public string? Subset { get; init; }
    public string? Split { get; init; }
    public string? Folder { get; init; }
}
