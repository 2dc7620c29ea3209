using FineTune.Pipeline.Validation;

namespace FineTune.Board;

/// <summary>
/// The pipelines the board shows: every <c>pipelines/&lt;name&gt;/pipeline.yaml</c> under the root. Requests name a
/// pipeline by its directory name only, and only names found here resolve, so no request can reach another path.
/// </summary>
public sealed class PipelineCatalog(string root)
{
    public string Root { get; } = Path.GetFullPath(root);

    public IReadOnlyList<string> Names()
    {
        var dir = Path.Combine(Root, "pipelines");
        if (!Directory.Exists(dir)) return [];
        return Directory.EnumerateDirectories(dir)
            .Where(d => File.Exists(Path.Combine(d, PipelineLoader.DefaultFileName)))
            .Select(d => Path.GetFileName(d)!)
            .Order(StringComparer.Ordinal)
            .ToArray();
    }

    /// <summary>The pipeline file of <paramref name="name"/>, or null when the root has no such pipeline.</summary>
    public string? FileOf(string name) =>
        Names().Contains(name, StringComparer.Ordinal) ? Path.Combine(Root, "pipelines", name, PipelineLoader.DefaultFileName) : null;

    /// <summary>The pipeline file's path relative to the root, with '/' (as git names it).</summary>
    public string RelativeFile(string name) => $"pipelines/{name}/{PipelineLoader.DefaultFileName}";
}
