using FineTune.Engine;

namespace FineTune.Models.Tests;

/// <summary>gradient_checkpointing auto: the planner's choice for given sizes, and that every plan gives the same gradient bits.</summary>
public sealed class CheckpointingPlanTests
{
    private const long MiB = 1L << 20;

    // 10 layers; an arena of 1000 MiB fixed, 100 MiB per full layer, 70 per selective one (+30 of shared scratch);
    // 2000 MiB held; no workspace.
    private static readonly ActivationBytes Sizes = new(1000 * MiB, 100 * MiB, 70 * MiB, 30 * MiB);

    private static CheckpointingPlan Choose(long budgetMiB, int lowest = 0) =>
        CheckpointingPlanner.Choose(10, lowest, 4096, Sizes, 2000 * MiB, 0, budgetMiB * MiB);

    [Fact]
    public void AmpleBudgetKeepsEveryLayerFully()
    {
        var plan = Choose(4000);
        Assert.Equal(Enumerable.Repeat(LayerStorage.Full, 10), plan.Layers);
        Assert.Equal(4000 * MiB, plan.EstimatedPeakBytes);
        Assert.Equal("checkpointing auto: keeping 10/10 layers at 4096 tokens, est. peak 3.9 GiB of a 3.9 GiB budget", plan.Summary);
    }

    [Fact]
    public void SelectiveLayersComeBeforeAnyGemmIsRecomputed()
    {
        // 790 MiB for layers: 8 selective (560 + 30 scratch) and 2 full (200) — no layer's GEMMs run twice.
        var plan = Choose(3790);
        Assert.Equal([.. Enumerable.Repeat(LayerStorage.Selective, 8), LayerStorage.Full, LayerStorage.Full], plan.Layers);
        Assert.Equal(0, plan.RecomputedLayers);
        Assert.Equal(3790 * MiB, plan.EstimatedPeakBytes);
        Assert.Equal("checkpointing auto: keeping 10/10 layers (8 selective: norms and SwiGLU recomputed) at 4096 tokens, est. peak 3.7 GiB of a 3.7 GiB budget", plan.Summary);
    }

    [Fact]
    public void TightBudgetRecomputesTheBottomLayers()
    {
        // 400 MiB for layers: the shared set (100) + 3 full layers; the topmost recomputed layer is free, so 4 are kept.
        var plan = Choose(3400);
        Assert.Equal([.. Enumerable.Repeat(LayerStorage.Recompute, 7), LayerStorage.Full, LayerStorage.Full, LayerStorage.Full], plan.Layers);
        Assert.Equal(6, plan.RecomputedLayers);
        Assert.Equal(4, plan.KeptLayers);
        Assert.Equal(3400 * MiB, plan.EstimatedPeakBytes);
    }

    [Fact]
    public void LayersWithoutBackwardAreNeverKept()
    {
        // Layers 0–5 have no backward (frozen below a trainable layer 6): keeping them would buy nothing.
        var plan = Choose(3400, lowest: 6);
        Assert.Equal([.. Enumerable.Repeat(LayerStorage.Recompute, 7), LayerStorage.Full, LayerStorage.Full, LayerStorage.Full], plan.Layers);
        Assert.Equal(0, plan.RecomputedLayers);
        var ample = Choose(4000, lowest: 6);
        Assert.Equal(0, ample.RecomputedLayers);
        Assert.Equal((1000 + 100 + 3 * 100 + 2000) * MiB, ample.EstimatedPeakBytes);
    }

    [Fact]
    public void NoPlanFitsThenEveryLayerIsRecomputedAndTheSummarySaysSo()
    {
        var plan = Choose(3000);
        Assert.Equal(Enumerable.Repeat(LayerStorage.Recompute, 10), plan.Layers);
        Assert.False(plan.FitsBudget);
        Assert.Equal("checkpointing auto: keeping 1/10 layers at 4096 tokens, est. peak 3.0 GiB of a 2.9 GiB budget (over it: no plan fits, every layer is recomputed)", plan.Summary);
    }

    [Theory]
    [InlineData("40GiB", 40L << 30)]
    [InlineData("80GB", 80_000_000_000L)]
    [InlineData("1.5 TiB", 3L << 39)]
    [InlineData("512MiB", 512L << 20)]
    [InlineData("123", 123L)]
    public void MaxMemoryParsesUnits(string text, long bytes) => Assert.Equal(bytes, CheckpointingPlanner.ParseBytes(text));

    [Theory]
    [InlineData("40 gib")]
    [InlineData("GiB")]
    [InlineData("0")]
    public void MaxMemoryRejectsWhatIsNotASize(string text) => Assert.Null(CheckpointingPlanner.ParseBytes(text));

    [Fact]
    public void ArenaBytesOfASelectiveLayerLackExactlyLn1Ln2AndAct()
    {
        var spec = TinyModels.Spec("qwen3", true);
        using var model = TinyModels.Create(spec, new TrainingSetup { LoraRank = 4 });
        var bytes = ModelActivations.Bytes(DType.F32, spec, model.Layers, training: true, capacity: 64, chunkRows: 256);
        // 64 tokens: ln1 and ln2 [64, 16] and act [64, 24] in F32, each already on a 256-byte boundary.
        Assert.Equal(2 * 64 * 16 * 4 + 64 * 24 * 4, bytes.FullSet - bytes.SelectiveSet);
        Assert.Equal(2 * 64 * 16 * 4 + 64 * 24 * 4, bytes.SelectiveScratch);
    }

    private static float[] AllGrads(CausalLM model) => model.TrainableParameters.SelectMany(p => TinyModels.Grad(model, p)).ToArray();

    /// <summary>One ForwardBackward on a 5-layer tiny model; the gradients and the plan it ran.</summary>
    private static (float[] Grads, CheckpointingPlan Plan) Run(string architecture, double dropout, CheckpointingMode mode, Func<CausalLM, long?>? budget = null)
    {
        var spec = TinyModels.Spec(architecture, false) with { NumLayers = 5 };
        var setup = new TrainingSetup { LoraRank = 4, LoraDropout = dropout, NeftuneNoiseAlpha = 5, Checkpointing = mode };
        using var probe = TinyModels.Create(spec, setup);
        using var model = TinyModels.Create(spec, setup with { MaxMemoryBytes = budget?.Invoke(probe) });
        TinyModels.RandomizeLoraB(model, 1);
        model.ForwardBackward(TinyModels.PackedBatch());
        return (AllGrads(model), model.CheckpointingPlan!);
    }

    /// <summary>The budget that holds exactly the plan of <paramref name="recompute"/> recomputed and <paramref name="selective"/> selective bottom layers.</summary>
    private static Func<CausalLM, long?> BudgetFor(int recompute, int selective) => model =>
    {
        var bytes = ModelActivations.Bytes(DType.F32, model.Spec, model.Layers, training: true, capacity: 14, chunkRows: 256);
        return CheckpointingPlanner.Build(CheckpointingMode.Auto, model.Spec.NumLayers, 0, 14, recompute, selective, bytes, model.WeightBytes, 0, null).EstimatedPeakBytes;
    };

    [Theory]
    [InlineData(new[] { "all" }, 0.0)]
    [InlineData(new[] { "all" }, 0.1)]
    [InlineData(new[] { "q_proj", "v_proj" }, 0.0)]
    public void A_recompute_runs_no_frozen_down_product_and_the_gradients_stay_those_of_no_checkpointing(string[] target, double dropout)
    {
        // 5 layers, checkpointing on: layers 0–3 run their forward again before their backward. down_proj's frozen
        // product runs once forward and once for the input gradient per layer, recomputed or not (the recompute's
        // output is the stored checkpoint); with LoRA on down the recompute still computes its xa.
        var spec = TinyModels.Spec("llama", false) with { NumLayers = 5 };
        float[] Grads(CheckpointingMode mode, out int downProducts)
        {
            var counting = new ProductCountingBackend(new FineTune.Engine.Cpu.CpuBackend(2), "mlp.down_proj.weight");
            using var model = CausalLM.Create(spec, counting, new TrainingSetup { LoraRank = 4, LoraDropout = dropout, LoraTarget = target, Checkpointing = mode },
                new RandomWeights(1, 0.3f));
            TinyModels.RandomizeLoraB(model, 1);
            model.ForwardBackward(TinyModels.PackedBatch());
            downProducts = counting.Products;
            return AllGrads(model);
        }
        var off = Grads(CheckpointingMode.Off, out int offProducts);
        var on = Grads(CheckpointingMode.On, out int onProducts);
        Assert.Equal(2 * 5, offProducts);
        Assert.Equal(2 * 5, onProducts);
        Assert.Equal(off, on);
    }

    [Theory]
    [InlineData("qwen3", 0.0)]
    [InlineData("qwen3", 0.1)]
    [InlineData("qwen2", 0.0)]
    [InlineData("llama", 0.2)]
    public void EveryPlanGivesTheGradientsOfNoCheckpointingBitForBit(string architecture, double dropout)
    {
        var (off, offPlan) = Run(architecture, dropout, CheckpointingMode.Off);
        Assert.Equal(Enumerable.Repeat(LayerStorage.Full, 5), offPlan.Layers);
        var (on, onPlan) = Run(architecture, dropout, CheckpointingMode.On);
        Assert.Equal(4, onPlan.RecomputedLayers);
        Assert.Equal(off, on);
        // On the CPU without max_memory auto keeps everything.
        var (auto, autoPlan) = Run(architecture, dropout, CheckpointingMode.Auto);
        Assert.Equal(Enumerable.Repeat(LayerStorage.Full, 5), autoPlan.Layers);
        Assert.Equal(off, auto);
        // Budgets that force a mix of recomputed, selective and full layers, and all selective.
        var (mixed, mixedPlan) = Run(architecture, dropout, CheckpointingMode.Auto, BudgetFor(3, 1));
        Assert.Equal([LayerStorage.Recompute, LayerStorage.Recompute, LayerStorage.Recompute, LayerStorage.Selective, LayerStorage.Full], mixedPlan.Layers);
        Assert.Equal(2, mixedPlan.RecomputedLayers);
        Assert.Equal(off, mixed);
        var (selective, selectivePlan) = Run(architecture, dropout, CheckpointingMode.Auto, BudgetFor(0, 5));
        Assert.Equal(Enumerable.Repeat(LayerStorage.Selective, 5), selectivePlan.Layers);
        Assert.Equal(off, selective);
    }

    [Fact]
    public void AutoTellsItsPlanOnce()
    {
        var spec = TinyModels.Spec("qwen3", true);
        using var model = TinyModels.Create(spec, new TrainingSetup { LoraRank = 4, Checkpointing = CheckpointingMode.Auto });
        var told = new List<string>();
        model.CheckpointingNotice = told.Add;
        model.ForwardBackward(TinyModels.PackedBatch());
        model.ForwardBackward(TinyModels.PackedBatch());
        Assert.Equal(["checkpointing auto: keeping 2/2 layers at 14 tokens, est. peak " + told[0].Split("est. peak ")[1]], told);
        Assert.StartsWith("checkpointing auto: keeping 2/2 layers at 14 tokens, est. peak 0.", told[0]);
    }
}
