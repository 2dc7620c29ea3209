namespace FineTune.Models.Tests;

/// <summary>The module names the training options are checked against, and the model they describe.</summary>
public sealed class TrainableModulesTests
{
    [Theory]
    [InlineData("qwen3", true)]
    [InlineData("qwen2", false)]
    [InlineData("llama", false)]
    public void Parameter_names_are_those_of_the_model(string architecture, bool tied)
    {
        var spec = TinyModels.Spec(architecture, tied);
        using var model = TinyModels.Create(spec, TrainingSetup.Inference);
        Assert.Equal(model.ParameterNames, TrainableModules.ParameterNames(spec));
    }

    [Fact]
    public void Check_names_each_unknown_value_with_its_option_and_index()
    {
        var spec = TinyModels.Spec("qwen3", tied: true);
        var problems = TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["q_proj", "qproj", "all"], AdditionalTarget = ["lm_head", "model.norm"] });
        Assert.Equal([("lora_target", 1, "qproj"), ("additional_target", 0, "lm_head")], problems.Select(p => (p.Option, p.Index, p.Value)));
        Assert.Equal("is not a linear module of this qwen3 model", problems[0].Problem);
        // Options of another finetuning type are not looked at.
        Assert.Empty(TrainableModules.Check(spec, new TrainingSetup { FinetuningType = FinetuningType.Full, LoraTarget = ["nothing"] }));
        // Every value the check accepts builds a model.
        using var model = TinyModels.Create(spec, new TrainingSetup
        {
            FinetuningType = FinetuningType.Freeze, FreezeTrainableModules = ["mlp", "q_norm"], FreezeExtraModules = ["embed_tokens", "layers.1.mlp.down_proj"],
        });
        Assert.Empty(TrainableModules.Check(spec, model.Setup));
    }
}
