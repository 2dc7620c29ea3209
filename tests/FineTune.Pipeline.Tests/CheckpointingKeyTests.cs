using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>stages.train.gradient_checkpointing (false | true | auto) and max_memory: validation, fingerprint and engine mapping.</summary>
public sealed class CheckpointingKeyTests
{
    private static TrainConfig Load(string trainKeys, TempDir dir)
    {
        var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + trainKeys));
        return PipelineLoader.Load(file).Definition.Stages.Train!;
    }

    private static string[] Errors(string trainKeys)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + trainKeys));
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        return e.Errors.Select(x => $"{x.JsonPath}: {x.Message}").ToArray();
    }

    private static string Fingerprinted(TrainConfig cfg) =>
        CanonicalJson.Serialize(CanonicalJson.FromRecord(cfg)["gradient_checkpointing"]);

    [Fact]
    public void Auto_is_the_default_and_each_value_maps_to_the_engines_mode()
    {
        using var dir = new TempDir();
        Assert.Equal(GradientCheckpointingSetting.Auto, Load("", dir).GradientCheckpointing);
        Assert.Equal(CheckpointingMode.Auto, TrainStage.Setup(Load("    gradient_checkpointing: auto\n", dir)).Checkpointing);
        Assert.Equal(CheckpointingMode.On, TrainStage.Setup(Load("    gradient_checkpointing: true\n", dir)).Checkpointing);
        Assert.Equal(CheckpointingMode.Off, TrainStage.Setup(Load("    gradient_checkpointing: False\n", dir)).Checkpointing);
        Assert.Equal(40L << 30, TrainStage.Setup(Load("    max_memory: 40GiB\n", dir)).MaxMemoryBytes);
        Assert.Null(TrainStage.Setup(Load("", dir)).MaxMemoryBytes);
    }

    [Fact]
    public void True_and_false_fingerprint_as_the_booleans_they_were_and_max_memory_not_at_all()
    {
        using var dir = new TempDir();
        Assert.Equal("false", Fingerprinted(Load("    gradient_checkpointing: false\n", dir)));
        Assert.Equal("true", Fingerprinted(Load("    gradient_checkpointing: true\n", dir)));
        Assert.Equal("\"auto\"", Fingerprinted(Load("    gradient_checkpointing: auto\n", dir)));
        Assert.Equal("\"auto\"", Fingerprinted(Load("", dir)));
        Assert.Equal(CanonicalJson.Serialize(CanonicalJson.FromRecord(Load("", dir))),
            CanonicalJson.Serialize(CanonicalJson.FromRecord(Load("    max_memory: 40GiB\n", dir))));
    }

    [Fact]
    public void Wrong_values_are_located_errors()
    {
        Assert.Equal(["$.stages.train.gradient_checkpointing: expected one of false, true, auto, got 'sometimes'"],
            Errors("    gradient_checkpointing: sometimes\n"));
        Assert.Equal(["$.stages.train.max_memory: '40 gigs' does not match the pattern " + TrainConfig.MemorySizePattern],
            Errors("    max_memory: 40 gigs\n"));
    }
}
