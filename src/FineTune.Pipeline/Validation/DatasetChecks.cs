using FineTune.Data;
using FineTune.Data.Registry;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Validation;

/// <summary>
/// The names in <c>data.dataset</c> against dataset_info.json, at validation time: an unknown name or a bad entry is
/// located at its list item. Only the entries the pipeline names are interpreted, so a bad entry of another dataset
/// stops nobody. A registry that cannot be read at all is left to the register stage, which says so.
/// </summary>
internal static class DatasetChecks
{
    public static void Apply(PipelineDefinition def, PipelineLoader.Binder b)
    {
        if (def.Stages.Register is null || def.Data.Dataset.Count == 0) return;
        var pipelineDir = Path.GetDirectoryName(b.FilePath)!;
        var registryPath = Path.Combine(def.Data.ResolveDatasetDir(pipelineDir), "dataset_info.json");
        if (!File.Exists(registryPath)) return;
        DatasetRegistry registry;
        try
        {
            registry = DatasetRegistry.Load(registryPath);
        }
        catch (DatasetException)
        {
            return;
        }
        var shown = Path.GetRelativePath(pipelineDir, registryPath);
        for (var i = 0; i < def.Data.Dataset.Count; i++)
        {
            var name = def.Data.Dataset[i];
            if (!registry.Names.Contains(name, StringComparer.Ordinal))
            {
                var suggestion = DidYouMean.Suggest(name, registry.Names);
                b.Error($"$.data.dataset[{i}]", $"no dataset named '{name}' in {shown}; " + (suggestion is not null
                    ? $"did you mean '{suggestion}'?"
                    : $"registered: {string.Join(", ", registry.Names.Order(StringComparer.Ordinal))}"));
                continue;
            }
            try
            {
                registry.Get(name);
            }
            catch (DatasetException e)
            {
                b.Error($"$.data.dataset[{i}]", e.Message);
            }
        }
    }
}
