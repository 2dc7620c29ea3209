using FineTune.Models;
using FineTune.Models.Hub;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;

namespace FineTune.Pipeline.Validation;

/// <summary>
/// The train block's module names (lora_target, additional_target, freeze_trainable_modules, freeze_extra_modules)
/// checked against the model's real modules: at load time (`finetune validate`, and every command) where the model is
/// known without a download — a scratch config, a local model directory, a hub model already downloaded — and by the
/// train stage before it trains, always.
/// </summary>
public static class ModuleNameChecks
{
    /// <summary>Each wrong value as (JSON path, message with a "did you mean" where one is close).</summary>
    /// <param name="stageName">The train stage's name (its key under stages), where the paths point.</param>
    public static IReadOnlyList<(string JsonPath, string Message)> Check(TrainConfig train, TransformerSpec model, string stageName = "train") =>
        TrainableModules.Check(model, TrainStage.Setup(train)).Select(p =>
        {
            var suggestion = DidYouMean.Suggest(p.Value, p.Candidates);
            return ($"$.stages.{stageName}.{p.Option}[{p.Index}]",
                $"'{p.Value}' {p.Problem}" + (suggestion is null ? "" : $"; did you mean '{suggestion}'?") + $" ({p.Expected})");
        }).ToList();

    internal static void Apply(PipelineDefinition def, PipelineLoader.Binder b)
    {
        var trains = def.Stages.OfKind(StageKind.Train);
        if (trains.Count == 0 || KnownModel(def, Path.GetDirectoryName(b.FilePath)!) is not { } model) return;
        foreach (var train in trains)
            foreach (var (path, message) in Check((TrainConfig)train.Block, model, train.Name))
                b.Error(path, message);
    }

    /// <summary>The model's shape when it is known without downloading anything; null otherwise (or when its files are broken:
    /// the download stage reports those).</summary>
    public static TransformerSpec? KnownModel(PipelineDefinition def, string pipelineDirectory)
    {
        var source = def.Model;
        try
        {
            if (source.IsScratch)
                return source.Scratch is { } s ? ScratchSpec(s) : null;
            if (source.IsHub)
                return DownloadedHubConfig(def, pipelineDirectory) is { } config ? TransformerSpec.FromConfig(ModelConfig.Load(config)) : null;
            var local = Path.Combine(pipelineDirectory, source.Source, "config.json");
            return File.Exists(local) ? TransformerSpec.FromConfig(ModelConfig.Load(local)) : null;
        }
        catch (Exception e) when (e is ModelFormatException or NotSupportedException or ArgumentException or HubException or IOException
                                  or System.Text.Json.JsonException or InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>The shape a scratch model of these settings gets (only what module names depend on matters here).</summary>
    private static TransformerSpec ScratchSpec(ScratchConfig s)
    {
        string architecture = ConfigModel.EnumName(s.Architecture);
        var (qkvBias, outputBias, qkNorm) = TransformerSpec.Variant(architecture, attentionBias: false);
        return new TransformerSpec
        {
            Architecture = architecture, VocabSize = s.VocabSize ?? 1, HiddenSize = s.HiddenSize, IntermediateSize = s.IntermediateSize,
            NumLayers = s.NumHiddenLayers, NumHeads = s.NumAttentionHeads, NumKvHeads = s.NumKeyValueHeads, HeadDimOverride = s.HeadDim,
            TieWordEmbeddings = s.TieWordEmbeddings, QkvBias = qkvBias, OutputBias = outputBias, QkNorm = qkNorm,
            Moe = s.ExpertsFor(TransformerSpec.FamilyOf(architecture)),
        };
    }

    /// <summary>config.json of a hub model the download stage has already fetched (its verified blob in the download stage's hub store).</summary>
    private static string? DownloadedHubConfig(PipelineDefinition def, string pipelineDirectory)
    {
        if (def.Stages.OfKind(StageKind.Download) is not [var download]) return null;
        var reference = HubModelReference.Parse(def.Model.Source, ((DownloadConfig)download.Block).Revision);
        var store = DownloadStage.StoreIn(StageCache.Beside(pipelineDirectory).WorkDirectory(download.Name));
        if (store.Load(reference.RepoId, reference.Revision) is not { } snapshot) return null;
        if (snapshot.Files.FirstOrDefault(f => f.Path == "config.json") is not { } file) return null;
        var blob = store.BlobPath(snapshot.RepoId, snapshot.Commit, file);
        return File.Exists(blob) ? blob : null;
    }
}
