using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>The training objective (stages.train.stage, LLaMA-Factory's key) and its older place, stages.split.stage.</summary>
public sealed class ObjectiveTests
{
    private static string Pipeline(string split, string train) => TestPipelines.Scratch("objective", placeholders: false) + $$"""
        stages:
          download: {}
          register: {}
          split:
            val_size: 0.1
        {{split}}
          train:
            max_steps: 2
        {{train}}
        """;

    private static LoadedPipeline Load(TempDir dir, string yaml, string registry = """{"identity": {"file_name": "identity.json"}}""")
    {
        var file = TestPipelines.Write(dir, yaml);
        dir.Write("data/dataset_info.json", registry);
        return PipelineLoader.Load(file);
    }

    private static string[] Errors(string yaml, string registry)
    {
        using var dir = new TempDir();
        var e = Assert.Throws<PipelineValidationException>(() => Load(dir, yaml, registry));
        return e.Errors.Select(x => (x with { File = Path.GetFileName(x.File) }).ToString()).ToArray();
    }

    private static Dictionary<StageKind, string> Fingerprints(LoadedPipeline p) =>
        p.Stages.Where(s => s.Kind is StageKind.Register or StageKind.Split or StageKind.Train)
            .ToDictionary(s => s.Kind, s => ContentHasher.Sha256Hex(CanonicalJson.Serialize(StageFingerprint.ParametersOf(s, p.Definition))));

    [Fact]
    public void TrainStagePtMeansWhatSplitStagePtMeantWithTheSameFingerprints()
    {
        using var a = new TempDir();
        using var b = new TempDir();
        var old = Load(a, Pipeline("    stage: pt", ""));
        var moved = Load(b, Pipeline("", "    stage: pt"));

        Assert.Equal(TrainingStage.Pt, moved.Definition.Stages.Split!.Stage);
        Assert.Equal(TrainingObjective.Pt, old.Definition.Stages.Train!.Objective);
        Assert.Equal(TrainingObjective.Pt, moved.Definition.Stages.Train!.Objective);
        Assert.Equal(Fingerprints(old), Fingerprints(moved));
        Assert.Contains("\"stage\":\"pt\"", CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Register, moved.Definition)));
    }

    [Fact]
    public void NoStageKeyMeansSft()
    {
        using var dir = new TempDir();
        var p = Load(dir, Pipeline("", ""));
        Assert.Equal(TrainingObjective.Sft, p.Definition.Stages.Train!.Objective);
        Assert.Equal(TrainingStage.Sft, p.Definition.Stages.Split!.Stage);
    }

    [Fact]
    public void ContradictingStageKeysAreOneLocatedError()
    {
        Assert.Equal(
            ["pipeline.yaml:18:12: $.stages.train.stage: stage sft contradicts stages.split.stage: pt; keep one (stages.train.stage is LLaMA-Factory's place, stages.split.stage the older one)"],
            Errors(Pipeline("    stage: pt", "    stage: sft"), """{"identity": {"file_name": "identity.json"}}"""));
    }

    [Fact]
    public void DpoOnAnswerDataSaysWhatTheObjectiveNeeds()
    {
        Assert.Equal(
        [
            "pipeline.yaml:18:12: $.stages.train.stage: stage dpo trains on preference pairs (chosen and rejected answers), but dataset 'identity' in data/dataset_info.json has no ranking: true; name datasets that fit the objective in data.dataset",
        ], Errors(Pipeline("", "    stage: dpo"), """{"identity": {"file_name": "identity.json"}}"""));
    }

    [Fact]
    public void KtoWithoutKtoTagColumnSaysSo()
    {
        Assert.Contains(
            "pipeline.yaml:18:12: $.stages.train.stage: stage kto trains on answers tagged desirable or undesirable and needs a kto_tag column, but dataset 'identity' in data/dataset_info.json has no columns.kto_tag; name datasets that fit the objective in data.dataset",
            Errors(Pipeline("", "    stage: kto"), """{"identity": {"file_name": "identity.json"}}"""));
    }

    [Fact]
    public void SftOnARankingDatasetIsLocatedAtTheDataset()
    {
        Assert.Equal(
            ["pipeline.yaml:8:13: $.data.dataset[0]: stage sft trains on single answers, not preference pairs, but dataset 'identity' in data/dataset_info.json is a ranking dataset (ranking: true); name datasets that fit the objective in data.dataset"],
            Errors(Pipeline("", ""), """{"identity": {"file_name": "identity.json", "ranking": true, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}}"""));
    }
}
