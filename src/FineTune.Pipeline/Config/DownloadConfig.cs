using System.ComponentModel;

namespace FineTune.Pipeline.Config;

/// <summary><c>stages.download</c>: fetch (hf://), copy (local path) or generate (scratch) the base model.</summary>
public sealed record DownloadConfig
{
    [Description("Branch, tag or commit on the Hub; overrides an @revision in model.source. Resolved to a commit recorded in pipeline.lock.")]
    public string? Revision { get; init; }

    [ScalarOrList, Description("Glob patterns of the files to download (default: everything a model directory needs).")]
    public IReadOnlyList<string>? AllowPatterns { get; init; }
}
