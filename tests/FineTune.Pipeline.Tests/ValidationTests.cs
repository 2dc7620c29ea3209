using FineTune.Models.Tests;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

public sealed class ValidationTests
{
    private static IReadOnlyList<PipelineError> Errors(string yaml)
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, yaml);
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        return e.Errors.Select(x => x with { File = Path.GetFileName(x.File) }).ToArray();
    }

    private const string FiveMistakes = """
        name: bad
        model:
          source: scratch
          scratch:
            architecture: lama
        data:
          dataset: [identity]
          template: qwen3
        stages:
          download: {}
          register: {}
          split:
            val_size: 0.1
            cutoff_len: -5
          train:
            lerning_rate: 0.001
            lora_rank: eight
            device: gpu
        """;

    [Fact]
    public void FiveMistakesGiveFiveLocatedErrors()
    {
        var errors = Errors(FiveMistakes).Select(e => e.ToString()).ToArray();
        Assert.Equal(
        [
            "pipeline.yaml:5:19: $.model.scratch.architecture: expected one of llama, qwen2, qwen3, got 'lama'; did you mean 'llama'?",
            "pipeline.yaml:14:17: $.stages.split.cutoff_len: -5 is out of range: expected an integer ≥ 1",
            "pipeline.yaml:16:5: $.stages.train.lerning_rate: unknown key 'lerning_rate' in stages.train; did you mean 'learning_rate'?",
            "pipeline.yaml:17:16: $.stages.train.lora_rank: expected an integer in [1, 65536], got 'eight'",
            "pipeline.yaml:18:13: $.stages.train.device: 'gpu' does not match auto, cpu, cuda or cuda:N",
        ], errors);
    }

    [Fact]
    public void MisspelledGgufTypeIsLocatedWithASuggestion()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("formats: [hf]", "formats: [gguf]\n    gguf_type: q4_km")));
        Assert.Equal("$.stages.export.gguf_type", error.JsonPath);
        Assert.Equal("expected one of f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q5_0, q4_0, q3_k_m, q2_k, f32, got 'q4_km'; did you mean 'q4_k_m'?", error.Message);
        Assert.Equal((24, 16), (error.Line, error.Column));
    }

    [Fact]
    public void WrongGgufTypeInAListIsLocatedAtItsItem()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("formats: [hf]", "formats: [gguf]\n    gguf_type: [q8_0, q6_km]")));
        Assert.Equal("$.stages.export.gguf_type[1]", error.JsonPath);
        Assert.Equal("expected one of f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q4_k_m, q4_k_s, q5_0, q4_0, q3_k_m, q2_k, f32, got 'q6_km'; did you mean 'q6_k'?", error.Message);
    }

    [Fact]
    public void UnknownTopLevelKeyWithoutCloseMatchListsTheAllowedKeys()
    {
        var error = Assert.Single(Errors(TestPipelines.Full + "\nextras: 1\n"));
        Assert.Equal("unknown key 'extras' at the top level; expected one of: name, model, data, stages", error.Message);
        Assert.Equal((24, 1), (error.Line, error.Column));
    }

    [Fact]
    public void MisspelledStageNameSuggestsTheStage()
    {
        var yaml = TestPipelines.Full.Replace("  eval:\n", "  evaluate:\n");
        var error = Assert.Single(Errors(yaml));
        Assert.Equal("$.stages.evaluate", error.JsonPath);
        Assert.Equal("unknown key 'evaluate' in stages; did you mean 'eval'?", error.Message);
    }

    [Fact]
    public void MissingRequiredKeyIsReportedAtItsParent()
    {
        var error = Assert.Single(Errors("name: x\nmodel:\n  scratch: {}\n"));
        Assert.Equal("pipeline.yaml:3:3: $.model.source: missing required key 'source' (hf://org/name[@revision] (Hugging Face Hub), a local model directory (relative to the pipeline file), or 'scratch' (a small model FineTune generates).)", error.ToString());
    }

    [Fact]
    public void ExclusiveUpperBoundIsEnforcedAndNamed()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("    max_steps: 10", "    max_steps: 10\n    lora_dropout: 1")));
        Assert.Equal("1 is out of range: expected a number in [0, 1)", error.Message);
    }

    [Fact]
    public void FractionalValSizeAboveOneIsRejected()
    {
        var error = Assert.Single(Errors(TestPipelines.Full.Replace("val_size: 0.1", "val_size: 2.5")));
        Assert.Equal("$.stages.split.val_size", error.JsonPath);
        Assert.Equal("2.5 is neither a fraction in [0, 1) nor a whole sample count", error.Message);
        Assert.Equal((15, 15), (error.Line, error.Column));
    }

    [Fact]
    public void StageWithoutItsUpstreamIsRejected()
    {
        var yaml = TestPipelines.Full.Replace("  split:\n    val_size: 0.1\n", "");
        var errors = Errors(yaml);
        Assert.Equal(
        [
            "$.stages.train: stage train needs stage split: add a 'split:' block to stages",
            "$.stages.eval: stage eval needs stage split: add a 'split:' block to stages",
        ], errors.Select(e => $"{e.JsonPath}: {e.Message}"));
    }

    [Fact]
    public void YamlSyntaxErrorIsLocated()
    {
        var error = Assert.Single(Errors("name: x\nmodel:\n  source: [scratch\n"));
        Assert.Equal("$", error.JsonPath);
        Assert.StartsWith("YAML syntax: ", error.Message);
        Assert.Equal(4, error.Line);
    }

    [Fact]
    public void CommaSeparatedListsAreAcceptedLikeLlamaFactory()
    {
        using var dir = new TempDir();
        var p = PipelineLoader.Load(TestPipelines.Write(dir, TestPipelines.Full.Replace("    max_steps: 10", "    max_steps: 10\n    lora_target: q_proj, v_proj")));
        Assert.Equal(["q_proj", "v_proj"], p.Definition.Stages.Train!.LoraTarget);
    }

    [Fact]
    public void EmptyBlockMeansStagePresentWithDefaults()
    {
        using var dir = new TempDir();
        var p = PipelineLoader.Load(TestPipelines.Write(dir));
        Assert.Equal(Config.ExportDtype.Auto, p.Definition.Stages.Merge!.ExportDtype);
        Assert.Equal(7, p.Stages.Count);
        Assert.Equal(32, p.Definition.Model.Scratch!.HiddenSize);
        Assert.Equal(2, p.Definition.Model.Scratch!.NumHiddenLayers);
    }

    [Fact]
    public void ExamplePipelineIsValid()
    {
        var p = PipelineLoader.Load(Path.Combine(RepoRoot.Path, "pipelines", "identity"));
        Assert.Equal("identity", p.Definition.Name);
        Assert.Equal(7, p.Stages.Count);
        Assert.Equal(Config.ScratchArchitecture.Qwen3, p.Definition.Model.Scratch!.Architecture);
    }
}

public static class RepoRoot
{
    public static string Path { get; } = Find();

    private static string Find()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(System.IO.Path.Combine(d.FullName, "FineTune.sln")))
                return d.FullName;
        throw new InvalidOperationException("FineTune.sln not found above " + AppContext.BaseDirectory);
    }
}
