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
                var entry = registry.Get(name);
                if (DataProblem(def.Stages.Train, entry) is { } problem)
                {
                    var has = def.Stages.Train!.Objective == TrainingObjective.Kto ? "has no columns.kto_tag"
                        : entry.Ranking ? "is a ranking dataset (ranking: true)" : "has no ranking: true";
                    // At the objective where the pipeline writes one, else at the dataset that does not fit the default (sft).
                    var at = b.Positions.ContainsKey("$.stages.train.stage") ? "$.stages.train.stage" : $"$.data.dataset[{i}]";
                    b.Error(at, $"{problem}, but dataset '{name}' in {shown} {has}; name datasets that fit the objective in data.dataset");
                }
            }
            catch (DatasetException e)
            {
                b.Error($"$.data.dataset[{i}]", e.Message);
            }
        }
    }

    /// <summary>What an objective needs of each dataset it trains on (LLaMA-Factory's rules): null when the entry fits.</summary>
    private static string? DataProblem(TrainConfig? train, DatasetEntry entry) => train?.Objective switch
    {
        TrainingObjective.Dpo or TrainingObjective.Rm when !entry.Ranking =>
            $"stage {Describe(train.Objective)} trains on preference pairs (chosen and rejected answers)",
        TrainingObjective.Kto when entry.Columns.KtoTag is null =>
            "stage kto trains on answers tagged desirable or undesirable and needs a kto_tag column",
        TrainingObjective.Pt or TrainingObjective.Sft when entry.Ranking =>
            $"stage {Describe(train.Objective)} trains on single answers, not preference pairs",
        _ => null,
    };

    private static string Describe(TrainingObjective o) => o.ToString().ToLowerInvariant();
}
