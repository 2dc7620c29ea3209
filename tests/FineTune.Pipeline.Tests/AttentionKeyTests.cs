using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>stages.train.attention (cudnn | cudnn_fast | flash): parsing, the located error of another value, the fingerprint.</summary>
public sealed class AttentionKeyTests
{
    private static string PipelineFile(string trainKeys, TempDir dir) =>
        TestPipelines.Write(dir, TestPipelines.Full.Replace("    learning_rate: 0.005\n", "    learning_rate: 0.005\n" + trainKeys));

    [Theory]
    [InlineData("cudnn", AttentionChoice.Cudnn)]
    [InlineData("cudnn_fast", AttentionChoice.CudnnFast)]
    [InlineData("flash", AttentionChoice.Flash)]
    public void Each_value_loads(string text, AttentionChoice expected)
    {
        using var dir = new TempDir();
        Assert.Equal(expected, PipelineLoader.Load(PipelineFile($"    attention: {text}\n", dir)).Definition.Stages.Train!.Attention);
    }

    [Fact]
    public void Each_value_maps_to_the_cuda_backends_setting()
    {
        Assert.Equal(FineTune.Engine.Cuda.AttentionKernels.Cudnn, TrainStage.AttentionKernelsOf(AttentionChoice.Cudnn));
        Assert.Equal(FineTune.Engine.Cuda.AttentionKernels.CudnnFast, TrainStage.AttentionKernelsOf(AttentionChoice.CudnnFast));
        Assert.Equal(FineTune.Engine.Cuda.AttentionKernels.Flash, TrainStage.AttentionKernelsOf(AttentionChoice.Flash));
    }

    [Fact]
    public void Another_value_is_a_located_error_naming_the_choices()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(PipelineFile("    attention: fa3\n", dir)));
        var error = Assert.Single(e.Errors);
        Assert.Equal("$.stages.train.attention", error.JsonPath);
        Assert.True(error.Line > 0);
        Assert.Contains("cudnn_fast", error.Message);
    }

    [Fact]
    public void Unset_stays_out_of_the_fingerprint_and_a_value_enters_it()
    {
        using var dir = new TempDir();
        var unset = CanonicalJson.FromRecord(PipelineLoader.Load(PipelineFile("", dir)).Definition.Stages.Train!);
        Assert.False(unset.ContainsKey("attention"));
        using var dir2 = new TempDir();
        var flash = CanonicalJson.FromRecord(PipelineLoader.Load(PipelineFile("    attention: flash\n", dir2)).Definition.Stages.Train!);
        Assert.Equal("\"flash\"", CanonicalJson.Serialize(flash["attention"]));
    }
}
