using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// Grouped LoRA (one stacked A per set of linears sharing an input) against the per-linear path on the same
/// weights, and the stacked A tensors against the adapters' own parameters.
/// </summary>
public sealed class GroupedLoraTests
{
    private sealed record Run(double Loss, float[] Logits, Dictionary<string, float[]> Grads);

    private static Run RunPath(CausalLM model, TokenBatch batch, bool perLinear)
    {
        model.PerLinearLora = perLinear;
        model.ZeroGrad();
        double loss = model.ForwardBackward(batch).SumLoss;
        var grads = model.TrainableParameters.ToDictionary(p => p.Name, p => TinyModels.Grad(model, p));
        return new Run(loss, model.ForwardLogits(batch), grads);
    }

    private static double RelativeDifference(float[] a, float[] b)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++)
        {
            num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
            den += (double)b[i] * b[i];
        }
        return Math.Sqrt(num / Math.Max(den, 1e-30));
    }

    [Theory]
    [InlineData("llama", false, false, false)]
    [InlineData("llama", false, true, true)]
    [InlineData("mistral", false, true, false)]
    [InlineData("qwen2", false, false, false)]
    [InlineData("qwen2", false, true, true)]
    [InlineData("qwen3", true, false, true)]
    [InlineData("qwen3", true, true, false)]
    public void GroupedPathGivesThePerLinearLossLogitsAndGradients(string architecture, bool tied, bool allTargets, bool checkpointing)
    {
        // The subset leaves k_proj un-adapted inside the q,k,v set but trains its weight fully (additional_target),
        // so the grouped backward also has a plain trainable linear among the adapted ones.
        var setup = allTargets
            ? new TrainingSetup { LoraRank = 3, LoraAlpha = 5, GradientCheckpointing = checkpointing }
            : new TrainingSetup { LoraRank = 3, LoraAlpha = 5, LoraTarget = ["q_proj", "v_proj", "up_proj"], AdditionalTarget = ["k_proj"], GradientCheckpointing = checkpointing };
        using var model = TinyModels.Create(TinyModels.Spec(architecture, tied), setup);
        TinyModels.RandomizeLoraB(model, 11);
        var batch = TinyModels.PackedBatch();

        var perLinear = RunPath(model, batch, perLinear: true);
        var grouped = RunPath(model, batch, perLinear: false);

        int loraTensors = model.TrainableParameters.Count(p => p.Role is ParameterRole.LoraA or ParameterRole.LoraB);
        Assert.Equal(2 * 2 * (allTargets ? 7 : 3), loraTensors);
        Assert.InRange(Math.Abs(grouped.Loss - perLinear.Loss) / Math.Abs(perLinear.Loss), 0, 1e-5);
        Assert.InRange(RelativeDifference(grouped.Logits, perLinear.Logits), 0, 1e-5);
        foreach (var p in model.TrainableParameters)
        {
            var reference = perLinear.Grads[p.Name];
            Assert.True(reference.Any(g => g != 0), $"{p.Name}: zero gradient proves nothing");
            double err = RelativeDifference(grouped.Grads[p.Name], reference);
            Assert.True(err <= 1e-5, $"{p.Name}: relative difference {err}");
        }
        if (!allTargets) Assert.Contains("base_model.model.model.layers.1.self_attn.k_proj.weight", grouped.Grads.Keys);
    }

    [Fact]
    public void RanksAndScalesPerModuleStackBlocksOfTheirOwnHeight()
    {
        // PEFT's rank_pattern / alpha_pattern (what an adapter_config.json may carry): k_proj rank 5, v_proj rank 1 and
        // alpha 4 in every layer, layer 1's q_proj rank 2; the rest rank 3, alpha 6.
        var setup = new TrainingSetup
        {
            LoraRank = 3, LoraAlpha = 6,
            LoraRankPattern = [new("k_proj", 5), new("v_proj", 1), new("model.layers.1.self_attn.q_proj", 2)],
            LoraAlphaPattern = [new("v_proj", 4.0)],
        };
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), setup);
        TinyModels.RandomizeLoraB(model, 5);
        var qkv = model.Layers[1].LoraGroups[0]!;
        Assert.Equal([2 + 5 + 1, 16], qkv.A.Shape.ToArray());
        Assert.Equal([0, 2, 7], Enumerable.Range(0, 3).Select(qkv.RowOffset));
        Assert.Equal([3, 5, 1], model.Layers[0].LoraGroups[0]!.Linears.Select(l => l.Lora!.Rank));
        Assert.Equal([6f / 3, 6f / 5, 4f / 1], model.Layers[0].LoraGroups[0]!.Linears.Select(l => l.Lora!.Scale));

        var batch = TinyModels.PackedBatch();
        var perLinear = RunPath(model, batch, perLinear: true);
        var grouped = RunPath(model, batch, perLinear: false);
        Assert.InRange(RelativeDifference(grouped.Logits, perLinear.Logits), 0, 1e-5);
        foreach (var p in model.TrainableParameters)
            Assert.True(RelativeDifference(grouped.Grads[p.Name], perLinear.Grads[p.Name]) <= 1e-5, p.Name);
    }

    [Fact]
    public void GroupsStackTheTargetedLinearsThatShareAnInput()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraTarget = ["q_proj", "v_proj", "o_proj", "up_proj"] };
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), setup);
        var groups = model.Layers[1].LoraGroups;
        Assert.Equal(["q_proj", "v_proj"], groups[0]!.Linears.Select(l => l.ShortName));
        Assert.Equal(["o_proj"], groups[1]!.Linears.Select(l => l.ShortName));
        Assert.Equal(["up_proj"], groups[2]!.Linears.Select(l => l.ShortName));
        Assert.Null(groups[3]);
        Assert.Equal([4, 16], groups[0]!.A.Shape.ToArray());
        Assert.Equal([4, 16], groups[0]!.AGrad!.Shape.ToArray());
        Assert.Equal(DType.F32, groups[0]!.AGrad!.DType);
        // Files and checkpoints still see one tensor per adapter, in model order.
        Assert.Equal(
            ["q_proj.lora_A", "q_proj.lora_B", "v_proj.lora_A", "v_proj.lora_B", "o_proj.lora_A", "o_proj.lora_B", "up_proj.lora_A", "up_proj.lora_B"],
            model.TrainableParameters.Where(p => p.Name.Contains(".layers.1.")).Select(p => string.Join('.', p.Name.Split('.')[^3..^1])));
    }

    [Fact]
    public void StackedAValueAndGradAreViewsOfTheAdaptersParameters()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraTarget = ["q_proj", "v_proj"] };
        using var model = TinyModels.Create(TinyModels.Spec("qwen2", false), setup);
        var b = model.Backend;
        var group = model.Layers[0].LoraGroups[0]!;
        int r = 2, c = 16;
        var qA = model.TrainableParameters.Single(p => p.HfName == "model.layers.0.self_attn.q_proj.lora_A.weight");
        var vA = model.TrainableParameters.Single(p => p.HfName == "model.layers.0.self_attn.v_proj.lora_A.weight");

        // Value: writing v's A through the model lands in rows [r, 2r) of the stacked tensor; q's rows keep q's A.
        float[] qBefore = model.ReadParameter(qA.HfName);
        float[] written = Enumerable.Range(0, r * c).Select(i => i * 0.25f - 3f).ToArray();
        model.WriteParameter(vA.HfName, written);
        var stacked = new float[2 * r * c];
        b.Download(group.A, stacked);
        Assert.Equal(qBefore, stacked[..(r * c)]);
        Assert.Equal(written, stacked[(r * c)..]);
        Assert.Same(qA.Value, qA.Master); // F32 compute: AdamW updates the view in place

        // Grad: the optimizer's grad tensor of q's A is rows [0, r) of the stacked grad.
        float[] grad = Enumerable.Range(0, r * c).Select(i => 1f + i).ToArray();
        b.Upload(qA.Grad, grad);
        var stackedGrad = new float[2 * r * c];
        b.Download(group.AGrad!, stackedGrad);
        Assert.Equal(grad, stackedGrad[..(r * c)]);
        Assert.All(stackedGrad[(r * c)..], g => Assert.Equal(0f, g));

        // And back: a backward that accumulates into the stacked grad is what the parameter's grad reads.
        model.ZeroGrad();
        model.ForwardBackward(TinyModels.PackedBatch());
        var fromGroup = new float[2 * r * c];
        b.Download(group.AGrad!, fromGroup);
        Assert.Equal(fromGroup[(r * c)..], TinyModels.Grad(model, vA));
        Assert.Equal(fromGroup[..(r * c)], TinyModels.Grad(model, qA));
    }

    [Fact]
    public void WithDropoutTrainingStaysPerLinearButEvaluationGroups()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraDropout = 0.25 };
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), setup);
        TinyModels.RandomizeLoraB(model, 4);
        var batch = TinyModels.PackedBatch();
        model.PerLinearLora = true;
        double perLinearEval = model.Forward(batch).SumLoss;
        model.ZeroGrad();
        model.RandomCounter = 9;
        double perLinearTrain = model.ForwardBackward(batch).SumLoss;
        var perLinearGrads = model.TrainableParameters.Select(p => TinyModels.Grad(model, p)).ToList();

        model.PerLinearLora = false;
        Assert.InRange(Math.Abs(model.Forward(batch).SumLoss - perLinearEval) / perLinearEval, 0, 1e-5);
        model.ZeroGrad();
        model.RandomCounter = 9;
        // Each linear draws its own dropout mask, so training keeps the per-linear path: bit-identical results.
        Assert.Equal(perLinearTrain, model.ForwardBackward(batch).SumLoss);
        Assert.Equal(perLinearGrads, model.TrainableParameters.Select(p => TinyModels.Grad(model, p)).ToList());
        Assert.NotEqual(perLinearEval, perLinearTrain);
    }
}
