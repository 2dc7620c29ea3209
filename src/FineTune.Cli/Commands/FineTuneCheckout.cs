namespace FineTune.Cli.Commands;

/// <summary>
/// The FineTune checkout a new pipeline folder builds against: its build/FineTune.targets (what `dotnet build DIR`
/// imports) and schemas/pipeline.schema.json (the editor's schema line). Found walking up from the folder (a pipeline
/// inside the checkout gets relative paths that survive a clone), else from the running finetune binary.
/// </summary>
public sealed record FineTuneCheckout(string Root)
{
    public string Targets => Path.Combine(Root, "build", "FineTune.targets");
    public string Schema => Path.Combine(Root, "schemas", "pipeline.schema.json");

    public static FineTuneCheckout? Find(string pipelineDirectory)
    {
        foreach (var start in new[] { pipelineDirectory, AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(Path.GetFullPath(start)); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "build", "FineTune.targets")) && File.Exists(Path.Combine(dir.FullName, "FineTune.sln")))
                    return new FineTuneCheckout(dir.FullName);
        return null;
    }

    /// <summary>pipeline.proj: the project `dotnet build DIR` finds, importing FineTune's targets by a relative path.</summary>
    public string ProjectFor(string pipelineDirectory) =>
        "<!-- `dotnet build` in this folder runs pipeline.yaml through FineTune's build/FineTune.targets. -->\n" +
        "<Project DefaultTargets=\"Build\">\n" +
        $"  <Import Project=\"{Path.GetRelativePath(Path.GetFullPath(pipelineDirectory), Targets).Replace('\\', '/')}\" />\n" +
        "</Project>\n";
}
