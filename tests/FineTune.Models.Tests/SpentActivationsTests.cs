using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>
/// The attention backward's scratch (<see cref="LayerActivations.SpentAfterMlpBackward"/>: resMid … act of the layer's
/// set, where CUDA puts cuDNN's workspace) is spent: filled with NaN before every attention backward, the gradients stay
/// those of a run that leaves it alone, bit for bit, for every kind of layer storage, block and fine-tuning type.
/// </summary>
public sealed class SpentActivationsTests
{
    /// <summary>The CPU backend, overwriting the attention backward's scratch with NaN first.</summary>
    private sealed class PoisoningBackend(IBackend inner) : ForwardingBackend(inner)
    {
        public List<long> ScratchBytes { get; } = [];

        public override void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
            Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape shape, Tensor? scratch = null)
        {
            Assert.NotNull(scratch);
            ScratchBytes.Add(scratch.Length * scratch.DType.ByteSize());
            var nan = new float[scratch.Length];
            Array.Fill(nan, float.NaN);
            Inner.Upload(scratch, nan);
            base.AttentionBackward(dq, dk, dv, doutput, output, lse, q, k, v, segmentIds, shape, scratch);
        }
    }

    // Four layers; gemma's sandwich blocks with their windows and soft-caps (GemmaTests' spec).
    private static TransformerSpec Spec(string architecture) => architecture.StartsWith("gemma", StringComparison.Ordinal)
        ? GemmaTests.Spec(architecture) with { NumLayers = 4, SlidingLayers = [true, false, true, false] }
        : TinyModels.Spec(architecture, false) with { NumLayers = 4 };

    private static float[] Grads(string architecture, TrainingSetup setup, bool poison, out List<long> scratchBytes, Func<CausalLM, long?>? budget = null)
        => Grads(architecture, setup, poison, out scratchBytes, out _, budget);

    private static float[] Grads(string architecture, TrainingSetup setup, bool poison, out List<long> scratchBytes, out CheckpointingPlan plan,
        Func<CausalLM, long?>? budget = null)
    {
        var spec = Spec(architecture);
        var cpu = new FineTune.Engine.Cpu.CpuBackend(2);
        var poisoning = poison ? new PoisoningBackend(cpu) : null;
        IBackend backend = poisoning ?? (IBackend)cpu;
        long? max = null;
        if (budget is not null)
        {
            using var probe = CausalLM.Create(spec, new FineTune.Engine.Cpu.CpuBackend(2), setup, new RandomWeights(1, 0.3f));
            max = budget(probe);
        }
        using var model = CausalLM.Create(spec, backend, setup with { MaxMemoryBytes = max }, new RandomWeights(1, 0.3f));
        if (setup.FinetuningType == FinetuningType.Lora) TinyModels.RandomizeLoraB(model, 1);
        model.ForwardBackward(TinyModels.PackedBatch());
        scratchBytes = poisoning?.ScratchBytes ?? [];
        plan = model.CheckpointingPlan!;
        return model.TrainableParameters.SelectMany(p => TinyModels.Grad(model, p)).ToArray();
    }

    [Theory]
    [InlineData("llama", "lora", 0.0, "off")]
    [InlineData("llama", "lora", 0.2, "on")]
    [InlineData("qwen3", "lora", 0.1, "on")]
    [InlineData("qwen2", "full", 0.0, "on")]
    [InlineData("qwen2", "full", 0.0, "off")]
    [InlineData("gemma3_text", "lora", 0.0, "on")]
    [InlineData("gemma2", "full", 0.0, "off")]
    public void PoisoningTheScratchChangesNoGradientBit(string architecture, string type, double dropout, string checkpointing)
    {
        var setup = new TrainingSetup
        {
            FinetuningType = type == "full" ? FinetuningType.Full : FinetuningType.Lora, LoraRank = 4, LoraDropout = dropout,
            Checkpointing = checkpointing == "on" ? CheckpointingMode.On : CheckpointingMode.Off,
        };
        var clean = Grads(architecture, setup, poison: false, out _);
        var poisoned = Grads(architecture, setup, poison: true, out var bytes);
        Assert.Equal(4, bytes.Count);
        Assert.DoesNotContain(clean, float.IsNaN);
        Assert.Equal(clean, poisoned);
    }

    [Fact]
    public void SelectiveLayersSpendTheirOwnResMidGateAndUp()
    {
        // A budget that holds 1 recomputed, 2 selective and 1 full layer's worth (the planner may take another plan of the
        // same recompute count and bytes, with selective and full layers both).
        var setup = new TrainingSetup { LoraRank = 4, Checkpointing = CheckpointingMode.Auto };
        Func<CausalLM, long?> budget = model =>
        {
            var bytes = ModelActivations.Bytes(DType.F32, model.Spec, model.Layers, training: true, capacity: 14, chunkRows: 256);
            return CheckpointingPlanner.Build(CheckpointingMode.Auto, model.Spec.NumLayers, 0, 14, 1, 2, bytes, model.WeightBytes, 0, null).EstimatedPeakBytes;
        };
        var clean = Grads("qwen3", setup, poison: false, out _, budget);
        var poisoned = Grads("qwen3", setup, poison: true, out var bytes, out var plan, budget);
        Assert.Equal(clean, poisoned);
        Assert.Contains(LayerStorage.Selective, plan.Layers);
        Assert.Contains(LayerStorage.Full, plan.Layers);
        // Backward runs top down. A selective set's span lacks ln2 and act (theirs live in the shared scratch): it is the
        // planner's lower bound (resMid, gate, up; rstd2 and alignment add under 1 KiB); a full set's holds them too.
        long lower = ModelActivations.SpentAfterMlpBackwardBytes(DType.F32, Spec("qwen3"), 14);
        long full = lower + (14 * 16 + 14 * 24) * sizeof(float);
        Assert.Equal(4, bytes.Count);
        for (int i = 0; i < 4; i++)
            Assert.InRange(bytes[i], (plan.Layers[3 - i] == LayerStorage.Selective ? lower : full), (plan.Layers[3 - i] == LayerStorage.Selective ? lower : full) + 1024);
    }
}
