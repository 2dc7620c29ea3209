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
        var registers = def.Stages.OfKind(StageKind.Register);
        if (registers.Count == 0) return;
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
        var checkedShared = false;
        foreach (var register in registers)
        {
            var own = ((RegisterConfig)register.Block).Dataset;
            // data.dataset is checked once however many register stages read it.
            if (own is null && checkedShared) continue;
            checkedShared |= own is null;
            var list = own ?? def.Data.Dataset;
            var listPath = own is null ? "$.data.dataset" : $"$.stages.{register.Name}.dataset";
            // The train stages that train on this register's records (through the split stages that read it).
            var trains = def.Stages.OfKind(StageKind.Train)
                .Where(t => def.Stages.Provider(t, StageKind.Split) is { } split && (own is null
                    ? def.Stages.Provider(split, StageKind.Register) is { Block: RegisterConfig { Dataset: null } }
                    : split.Reads.GetValueOrDefault(StageKind.Register) == register.Name))
                .ToArray();
            for (var i = 0; i < list.Count; i++)
            {
                var name = list[i];
                if (!registry.Names.Contains(name, StringComparer.Ordinal))
                {
                    var suggestion = DidYouMean.Suggest(name, registry.Names);
                    b.Error($"{listPath}[{i}]", $"no dataset named '{name}' in {shown}; " + (suggestion is not null
                        ? $"did you mean '{suggestion}'?"
                        : $"registered: {string.Join(", ", registry.Names.Order(StringComparer.Ordinal))}"));
                    continue;
                }
                try
                {
                    var entry = registry.Get(name);
                    foreach (var trainStage in trains)
                    {
                        var train = (TrainConfig)trainStage.Block;
                        if (DataProblem(train, entry) is not { } problem) continue;
                        var has = train.Objective == TrainingObjective.Kto ? "has no columns.kto_tag"
                            : entry.Ranking ? "is a ranking dataset (ranking: true)" : "has no ranking: true";
                        // At the objective where the pipeline writes one, else at the dataset that does not fit the default (sft).
                        var objectivePath = $"$.stages.{trainStage.Name}.stage";
                        var at = b.Positions.ContainsKey(objectivePath) ? objectivePath : $"{listPath}[{i}]";
                        var fix = own is null ? "name datasets that fit the objective in data.dataset" : $"name datasets that fit the objective in stages.{register.Name}.dataset";
                        b.Error(at, $"{problem}, but dataset '{name}' in {shown} {has}; {fix}");
                    }
                }
                catch (DatasetException e)
                {
                    b.Error($"{listPath}[{i}]", e.Message);
                }
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
