namespace FineTune.Models.Tests;

/// <summary>Whole-model gradients against central finite differences of the summed loss, per flavour.</summary>
public sealed class ModelGradientTests
{
    /// <summary>
    /// Compares analytic gradients of up to <paramref name="perParameter"/> coordinates of every trainable
    /// parameter with (L(θ+h) − L(θ−h))/2h, as one vector: ‖g − ĝ‖/‖ĝ‖.
    /// </summary>
    internal static double CheckGradients(CausalLM model, TokenBatch batch, int perParameter = 3, float h = 1e-2f, bool stochastic = false)
    {
        model.ZeroGrad();
        long counter = model.RandomCounter;
        model.ForwardBackward(batch);
        double Loss() => stochastic ? model.TrainingLoss(batch, counter) : model.Forward(batch).SumLoss;
        return ParameterGradientCheck.RelativeError(model, Loss, perParameter, h, seed: 7);
    }

    [Theory]
    [InlineData("llama", false, null)]
    [InlineData("llama", true, null)]
    [InlineData("mistral", false, null)]
    [InlineData("qwen2", false, null)]
    [InlineData("qwen3", true, 8)]
    [InlineData("qwen3", false, null)]
    public void LoraGradientsMatchFiniteDifferencesOnPackedBatch(string architecture, bool tied, int? headDim)
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4 };
        using var model = TinyModels.Create(TinyModels.Spec(architecture, tied, headDim), setup);
        TinyModels.RandomizeLoraB(model, 3);
        Assert.Equal(2 * 7 * 2, model.TrainableParameters.Count);
        double err = CheckGradients(model, TinyModels.PackedBatch());
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Phi3FusedLoraGradientsMatchFiniteDifferences(bool tied, bool perLinear)
    {
        // One lora_A and one lora_B per fused module (qkv_proj, gate_up_proj) as PEFT has them; both LoRA paths.
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4 };
        using var model = TinyModels.Create(TinyModels.Spec("phi3", tied), setup);
        model.PerLinearLora = perLinear;
        TinyModels.RandomizeLoraB(model, 3);
        Assert.Equal(2 * 4 * 2, model.TrainableParameters.Count);
        double err = CheckGradients(model, TinyModels.PackedBatch());
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void Phi3FusedLoraWithDropoutGradientsMatchFiniteDifferencesOfTheSameDraw()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraDropout = 0.3 };
        using var model = TinyModels.Create(TinyModels.Spec("phi3", false), setup);
        TinyModels.RandomizeLoraB(model, 4);
        model.RandomCounter = 5;
        double err = CheckGradients(model, TinyModels.PackedBatch(), stochastic: true, h: 3e-3f);
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void Phi3FullFinetuningGradientsMatchFiniteDifferencesOnFusedWeights()
    {
        using var model = TinyModels.Create(TinyModels.Spec("phi3", false), new TrainingSetup { FinetuningType = FinetuningType.Full });
        Assert.Contains(model.TrainableParameters, p => p.HfName == "model.layers.0.self_attn.qkv_proj.weight");
        double err = CheckGradients(model, TinyModels.PackedBatch(), perParameter: 2);
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Theory]
    [InlineData("qwen2", false)]
    [InlineData("qwen3", true)]
    public void FullFinetuningGradientsMatchFiniteDifferencesForEveryParameterKind(string architecture, bool tied)
    {
        var setup = new TrainingSetup { FinetuningType = FinetuningType.Full };
        using var model = TinyModels.Create(TinyModels.Spec(architecture, tied), setup);
        double err = CheckGradients(model, TinyModels.PackedBatch(), perParameter: 2);
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void RsLoraWithAdditionalTargetGradientsMatchFiniteDifferences()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 3, UseRslora = true, LoraTarget = ["q_proj", "down_proj"], AdditionalTarget = ["norm"] };
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), setup);
        TinyModels.RandomizeLoraB(model, 5);
        Assert.Contains(model.TrainableParameters, p => p.Name == "base_model.model.model.norm.weight");
        double err = CheckGradients(model, TinyModels.PackedBatch());
        Assert.True(err < 1e-3, $"relative error {err}");
    }

    [Fact]
    public void LoraDropoutAndNeftuneGradientsMatchFiniteDifferencesOfTheSameDraw()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraDropout = 0.3, NeftuneNoiseAlpha = 5, GradientCheckpointing = true };
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), setup);
        TinyModels.RandomizeLoraB(model, 6);
        model.RandomCounter = 17;
        double err = CheckGradients(model, TinyModels.PackedBatch(), stochastic: true, h: 3e-3f); // sharper curvature with dropout scaling: a smaller step
        Assert.True(err < 1e-3, $"relative error {err}");
        Assert.NotEqual(model.TrainingLoss(TinyModels.PackedBatch(), 17), model.Forward(TinyModels.PackedBatch()).SumLoss);
    }
}
