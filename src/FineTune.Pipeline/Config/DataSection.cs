using System.ComponentModel;

namespace FineTune.Pipeline.Config;

/// <summary>The <c>data</c> block (LLaMA-Factory's dataset arguments).</summary>
public sealed record DataSection
{
    [NotFingerprinted, Description("Directory holding dataset_info.json, relative to the pipeline file (its files enter fingerprints by content, not path); default: the nearest 'data' directory with a dataset_info.json found walking up from the pipeline file.")]
    public string? DatasetDir { get; init; }

    [ScalarOrList, Description("Names of datasets in dataset_info.json (a list, or a comma-separated string).")]
    public IReadOnlyList<string> Dataset { get; init; } = [];

    [Description("Chat template name (LLaMA-Factory's names: qwen3, chatml, llama3, default, empty, ...).")]
    public string? Template { get; init; }

    [Description("Values substituted for {{key}} in the dataset text (e.g. name, author for the identity dataset).")]
    public IReadOnlyDictionary<string, string> Placeholders { get; init; } = new Dictionary<string, string>();

    /// <summary>The dataset directory as an absolute path (see <see cref="DatasetDir"/> for the default).</summary>
    public string ResolveDatasetDir(string pipelineDirectory)
    {
        if (DatasetDir is not null)
            return Path.GetFullPath(Path.Combine(pipelineDirectory, DatasetDir));
        for (var dir = new DirectoryInfo(Path.GetFullPath(pipelineDirectory)); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "data");
            if (File.Exists(Path.Combine(candidate, "dataset_info.json")))
                return candidate;
        }
        return Path.Combine(Path.GetFullPath(pipelineDirectory), "data");
    }
}
