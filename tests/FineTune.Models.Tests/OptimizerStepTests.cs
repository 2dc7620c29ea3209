using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// <see cref="CausalLM.OptimizerStep"/> and <see cref="CausalLM.GradNormSquared"/> run the whole model's optimizer as
/// one list operation each (one launch on CUDA) and give the bits of stepping each parameter by itself.
/// </summary>
public sealed class OptimizerStepTests
{
    // Full fine-tuning with adamw_8bit on a vocabulary large enough that the embedding (300·16 values) gets 8-bit
    // moments and every other tensor keeps F32 ones: both paths in one model.
    private static CausalLM Model(IBackend backend) =>
        CausalLM.Create(TinyModels.Spec("qwen3", true) with { VocabSize = 300 }, backend,
            new TrainingSetup { FinetuningType = FinetuningType.Full, EightBitOptimizerStates = true }, new RandomWeights(4, 0.3f));

    // As the recipe: no decay on norms and biases, and a larger rate for some (LoRA+ gives B one).
    private static AdamWStep Hyper(TrainableParameter p, int step) =>
        new(p.Role == ParameterRole.Norm ? 3e-2f : 1e-2f, 0.9f, 0.999f, 1e-8f, p.WeightDecay ? 0.01f : 0f, step, 1f, 1f);

    private static float[] Train(bool wholeModel)
    {
        using var model = Model(new CpuBackend(2));
        Assert.Contains(model.TrainableParameters, p => p.EightBit is not null);
        Assert.Contains(model.TrainableParameters, p => p.EightBit is null);
        for (int step = 1; step <= 3; step++)
        {
            model.ZeroGrad();
            model.ForwardBackward(TinyModels.PackedBatch(), 0.1f);
            var norm = model.GradNormSquared();
            if (wholeModel) model.OptimizerStep(p => Hyper(p, step), norm);
            else foreach (var p in model.TrainableParameters) p.Step(Hyper(p, step), norm);
        }
        return [.. model.TrainableParameters.SelectMany(p => model.ReadParameter(p.HfName))];
    }

    [Fact]
    public void The_whole_model_step_gives_the_bits_of_stepping_each_parameter()
    {
        var each = Train(wholeModel: false);
        Assert.Equal(each, Train(wholeModel: true));
    }

    [Fact]
    public void The_norm_and_the_F32_updates_are_one_operation_each()
    {
        var profiler = new ProfilingBackend(new CpuBackend(2));
        using var model = Model(profiler);
        model.ForwardBackward(TinyModels.PackedBatch(), 0.1f);
        profiler.Reset();
        model.OptimizerStep(p => Hyper(p, 1), model.GradNormSquared());
        var calls = profiler.Report().ToDictionary(r => r.Op, r => r.Calls);
        Assert.Equal(1, calls["SumOfSquaresMany"]);
        Assert.Equal(1, calls["AdamWMany"]);
        Assert.False(calls.ContainsKey("AdamW"));
        Assert.False(calls.ContainsKey("SumOfSquares"));
    }
}
