using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>Command-line overrides (stages.train.learning_rate=1e-4): applied before validation, named in errors, recorded in the lock.</summary>
public sealed class OverrideTests
{
    [Fact]
    public void OverridesSetScalarsListsAndNewBlocksBeforeValidation()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        var p = PipelineLoader.Load(file, ["stages.train.learning_rate=1e-4", "data.dataset=[identity]", "stages.split.cutoff_len=128", "stages.train.lora_target=q_proj,v_proj"]);
        Assert.Equal(1e-4, p.Definition.Stages.Train!.LearningRate);
        Assert.Equal(["q_proj", "v_proj"], p.Definition.Stages.Train.LoraTarget);
        Assert.Equal(["identity"], p.Definition.Data.Dataset);
        Assert.Equal(128, p.Definition.Stages.Split!.CutoffLen);
        Assert.Equal(10, p.Definition.Stages.Train.MaxSteps); // the file's other values stay
        Assert.Equal(["stages.train.learning_rate=1e-4", "data.dataset=[identity]", "stages.split.cutoff_len=128", "stages.train.lora_target=q_proj,v_proj"], p.Overrides);
    }

    [Fact]
    public void ErrorsAboutAnOverrideNameTheOverride()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file, ["stages.train.lerning_rate=1e-4", "stages.train.lora_rank=eight", "model.source.x=1", "nokey"]));
        Assert.Equal([
            "override model.source.x=1: $.model.source: model.source is a value in the file, not a block; override it as model.source=…",
            "override nokey: $: expected a dotted key path, '=' and a value, e.g. stages.train.learning_rate=1e-4",
        ], e.Errors.Select(x => x.ToString()));
        e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file, ["stages.train.lerning_rate=1e-4", "stages.train.lora_rank=eight"]));
        Assert.Equal([
            "override stages.train.lerning_rate=1e-4: $.stages.train.lerning_rate: unknown key 'lerning_rate' in stages.train; did you mean 'learning_rate'?",
            "override stages.train.lora_rank=eight: $.stages.train.lora_rank: expected an integer in [1, 65536], got 'eight'",
        ], e.Errors.Select(x => x.ToString()));
    }

    [Fact]
    public void TheLockSaysWhichOverridesProducedItAndDropsThemWhenNoneAreGiven()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir);
        var counter = dir.File("count.txt");
        var runner = new PipelineRunner(FakeStage.All(counter));
        runner.Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        var plain = File.ReadAllText(dir.File("pipeline.lock"));
        Assert.DoesNotContain("overrides", plain);

        runner.Run(PipelineLoader.Load(file, ["stages.train.learning_rate=1e-4"]), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        var overridden = File.ReadAllText(dir.File("pipeline.lock"));
        Assert.StartsWith("{\n  \"version\": 1,\n  \"overrides\": [\n    \"stages.train.learning_rate=1e-4\"\n  ],\n  \"stages\": {", overridden);
        Assert.Contains("\"learning_rate\": 0.0001", overridden);
        Assert.Equal(["stages.train.learning_rate=1e-4"], LockFile.Read(dir.File("pipeline.lock")).Overrides);

        // Without the override the first run's stages are reused from the cache and the lock is byte for byte what it was.
        runner.Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        Assert.Equal(plain, File.ReadAllText(dir.File("pipeline.lock")));
    }

    [Fact]
    public void CliTakesOverridesAfterThePipelineAndNamesThemInErrors()
    {
        using var dir = new TempDir();
        TestPipelines.Write(dir);
        var (code, _, err) = CliTests.Finetune("validate", dir.Path, "stages.train.lerning_rate=1e-4");
        Assert.Equal(2, code);
        Assert.Equal("override stages.train.lerning_rate=1e-4: error: $.stages.train.lerning_rate: unknown key 'lerning_rate' in stages.train; did you mean 'learning_rate'?\n1 error(s).\n", err);
        (code, _, err) = CliTests.Finetune("validate", dir.Path, "stages.train.learning_rate=1e-4");
        Assert.Equal("", err);
        Assert.Equal(0, code);
    }
}
