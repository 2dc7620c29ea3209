using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

public sealed class CausalLMBehaviourTests
{
    private static float[] AllGrads(CausalLM model) => model.TrainableParameters.SelectMany(p => TinyModels.Grad(model, p)).ToArray();

    [Fact]
    public void GradientCheckpointingGivesBitIdenticalGradients()
    {
        float[] Run(bool checkpointing)
        {
            using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), new TrainingSetup { LoraRank = 4, LoraDropout = 0.1, GradientCheckpointing = checkpointing });
            TinyModels.RandomizeLoraB(model, 1);
            model.ForwardBackward(TinyModels.PackedBatch());
            return AllGrads(model);
        }
        Assert.Equal(Run(false), Run(true));
    }

    [Theory]
    [InlineData(FinetuningType.Lora)]
    [InlineData(FinetuningType.Full)]
    public void ZeroGradIsOneMemsetThatZeroesEveryGradientAndNothingElse(FinetuningType type)
    {
        // The gradients are one run of the arena (the groups' stacked A grads and every other grad), masters and moments
        // elsewhere: after a step, ZeroGrad's single Zero leaves every gradient 0 and the values, masters and moments as
        // they were (the next step's loss and update are those of zeroing each gradient by itself).
        var profiler = new ProfilingBackend(new CpuBackend(2));
        using var model = CausalLM.Create(TinyModels.Spec("qwen3", true), profiler, new TrainingSetup { FinetuningType = type, LoraRank = 4 }, new RandomWeights(2, 0.3f));
        TinyModels.RandomizeLoraB(model, 1);
        model.ForwardBackward(TinyModels.PackedBatch(), 0.1f);
        foreach (var p in model.TrainableParameters) p.Step(new AdamWStep(1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, 1, 1f, 1f), model.GradNormSquared());
        Assert.Contains(AllGrads(model), g => g != 0);
        var values = model.TrainableParameters.SelectMany(p => model.ReadParameter(p.HfName)).ToArray();
        var moments = model.TrainableParameters.SelectMany(p => Read(model, p.Master).Concat(Read(model, p.M)).Concat(Read(model, p.V))).ToArray();
        profiler.Reset();
        model.ZeroGrad();
        Assert.Equal(1, profiler.Report().Single(r => r.Op == "Zero").Calls);
        Assert.All(AllGrads(model), g => Assert.Equal(0f, g));
        Assert.Equal(values, model.TrainableParameters.SelectMany(p => model.ReadParameter(p.HfName)).ToArray());
        Assert.Equal(moments, model.TrainableParameters.SelectMany(p => Read(model, p.Master).Concat(Read(model, p.M)).Concat(Read(model, p.V))).ToArray());

        static float[] Read(CausalLM model, Tensor t)
        {
            var a = new float[t.Length];
            model.Backend.Download(t, a);
            return a;
        }
    }

    [Fact]
    public void IdenticalRunsAreBitIdenticalAndThreadCountDoesNotMatter()
    {
        float[] Run(int threads)
        {
            var spec = TinyModels.Spec("qwen2", false);
            using var model = CausalLM.Create(spec, new CpuBackend(threads), new TrainingSetup { LoraRank = 4, LoraDropout = 0.2 }, new RandomWeights(3, 0.3f));
            for (int step = 1; step <= 3; step++)
            {
                model.ZeroGrad();
                model.ForwardBackward(TinyModels.PackedBatch(), 0.1f);
                var norm = model.GradNormSquared();
                foreach (var p in model.TrainableParameters) p.Step(new AdamWStep(1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f, step, 1f, 1f), norm);
            }
            return model.TrainableParameters.SelectMany(p => model.ReadParameter(p.HfName)).ToArray();
        }
        float[] a = Run(2);
        Assert.Equal(a, Run(2));
        Assert.Equal(a, Run(1));
        Assert.Equal(a, Run(3));
    }

    [Fact]
    public void PackedSequencesGiveTheSameLossAsEachSequenceAlone()
    {
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), TrainingSetup.Inference);
        double packed = model.Forward(TinyModels.PackedBatch()).SumLoss;
        double separate = 0;
        separate += model.Forward(new TokenBatch(1, 3, [5, 9, 2], [9, 2, -100], [0, 1, 2], [0, 0, 0])).SumLoss;
        separate += model.Forward(new TokenBatch(1, 4, [7, 7, 30, 1], [7, 30, 1, -100], [0, 1, 2, 3], [0, 0, 0, 0])).SumLoss;
        separate += model.Forward(new TokenBatch(1, 5, [4, 8, 15, 16, 23], [8, 15, 16, 23, -100], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0])).SumLoss;
        Assert.Equal(separate, packed, 4);
    }

    [Fact]
    public void LossOfUntrainedModelIsNearLogVocab()
    {
        using var model = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference, std: 0.002f);
        var r = model.Forward(TinyModels.PackedBatch());
        Assert.Equal(9, r.TokenCount);
        Assert.InRange(r.MeanLoss, Math.Log(32) - 0.01, Math.Log(32) + 0.01);
    }

    [Fact]
    public void LoraStartsAsTheBaseModelBecauseBIsZero()
    {
        using var lora = TinyModels.Create(TinyModels.Spec("qwen3", true), new TrainingSetup());
        using var base_ = TinyModels.Create(TinyModels.Spec("qwen3", true), TrainingSetup.Inference);
        Assert.Equal(base_.ForwardLogits(TinyModels.PackedBatch()), lora.ForwardLogits(TinyModels.PackedBatch()));
        var a = lora.TrainableParameters.First(p => p.Role == ParameterRole.LoraA);
        float[] values = lora.ReadParameter(a.HfName);
        float bound = 1f / MathF.Sqrt(16); // kaiming_uniform(a=√5) on fan_in 16
        Assert.All(values, x => Assert.InRange(x, -bound, bound));
        Assert.True(values.Max() > 0.8f * bound && values.Min() < -0.8f * bound);
    }

    [Fact]
    public void FreezeTrainsTheLastLayersModulesByLlamaFactoryRules()
    {
        var setup = new TrainingSetup { FinetuningType = FinetuningType.Freeze, FreezeTrainableLayers = 1, FreezeTrainableModules = ["mlp"], FreezeExtraModules = ["embed_tokens"] };
        using var model = TinyModels.Create(TinyModels.Spec("llama", false), setup);
        Assert.Equal(
            ["model.embed_tokens.weight", "model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"],
            model.TrainableParameters.Select(p => p.Name).ToArray());
        var first = new TrainingSetup { FinetuningType = FinetuningType.Freeze, FreezeTrainableLayers = -1 };
        using var model2 = TinyModels.Create(TinyModels.Spec("qwen3", true), first);
        Assert.All(model2.TrainableParameters, p => Assert.StartsWith("model.layers.0.", p.Name));
        Assert.Equal(11, model2.TrainableParameters.Count); // layer 0: 2 norms, 7 projections, q/k norms
    }

    [Fact]
    public void UnknownLoraTargetIsAnErrorNamingIt()
    {
        var e = Assert.Throws<ArgumentException>(() => TinyModels.Create(TinyModels.Spec("llama", false), new TrainingSetup { LoraTarget = ["qkv"] }));
        Assert.Contains("'qkv'", e.Message);
    }

    [Fact]
    public void SavedAdapterHasPeftNamesShapesAndConfigAndReloadsToTheSameLogits()
    {
        using var dir = new TempDir();
        string modelDir = Path.Combine(dir.Path, "base");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 3 }, modelDir);
        var setup = new TrainingSetup { LoraRank = 4, LoraAlpha = 8, LoraTarget = ["q_proj", "v_proj", "down_proj"] };
        using var model = CausalLM.Load(modelDir, new CpuBackend(2), setup);
        TinyModels.RandomizeLoraB(model, 9);
        var batch = new TokenBatch(1, 5, [10, 20, 30, 40, 50], [20, 30, 40, 50, -100], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]);
        float[] logits = model.ForwardLogits(batch);
        string adapterDir = Path.Combine(dir.Path, "adapter");
        model.SaveAdapter(adapterDir, "scratch/qwen3");

        using var reader = SafetensorsReader.Open(Path.Combine(adapterDir, "adapter_model.safetensors"));
        Assert.Equal(2 * 3 * 2, reader.Tensors.Count);
        Assert.Equal([4L, 32L], reader.Get("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight").Shape);
        Assert.Equal([32L, 4L], reader.Get("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").Shape);
        Assert.Equal([16L, 4L], reader.Get("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight").Shape);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!;
        Assert.Equal("LORA", (string?)config["peft_type"]);
        Assert.Equal(4, (int)config["r"]!);
        Assert.Equal(8.0, (double)config["lora_alpha"]!);
        Assert.Equal("CAUSAL_LM", (string?)config["task_type"]);
        Assert.Equal(["down_proj", "q_proj", "v_proj"], config["target_modules"]!.AsArray().Select(x => (string)x!).ToArray());

        using var reloaded = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference, adapterDir);
        Assert.Equal(logits, reloaded.ForwardLogits(batch));
    }

    [Fact]
    public void SavedAdapterNamesModulesToSaveByFullPathSoPeftWrapsOnlyWhatTrained()
    {
        using var dir = new TempDir();
        string modelDir = Path.Combine(dir.Path, "base");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 4 }, modelDir);
        var setup = new TrainingSetup { LoraRank = 2, LoraTarget = ["q_proj"], AdditionalTarget = ["norm"] };
        using var model = CausalLM.Load(modelDir, new CpuBackend(2), setup);
        TinyModels.RandomizeLoraB(model, 5);
        var norm = model.ReadParameter("model.norm.weight");
        for (int i = 0; i < norm.Length; i++) norm[i] = 1f + 0.01f * i;
        model.WriteParameter("model.norm.weight", norm);
        var batch = new TokenBatch(1, 4, [11, 22, 33, 44], [22, 33, 44, -100], [0, 1, 2, 3], [0, 0, 0, 0]);
        float[] logits = model.ForwardLogits(batch);
        string adapterDir = Path.Combine(dir.Path, "adapter");
        model.SaveAdapter(adapterDir);

        // "norm" alone would make PEFT (suffix match) also wrap q_norm, k_norm and every layernorm.
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapterDir, "adapter_config.json")))!;
        Assert.Equal(["model.norm"], config["modules_to_save"]!.AsArray().Select(x => (string)x!).ToArray());
        using (var reader = SafetensorsReader.Open(Path.Combine(adapterDir, "adapter_model.safetensors")))
            Assert.Equal(norm, reader.ReadAsFloat32("base_model.model.model.norm.weight"));
        using var reloaded = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference, adapterDir);
        Assert.Equal(logits, reloaded.ForwardLogits(batch));
    }

    [Fact]
    public void SavedModelFoldsLoraIntoWeightsWithSameLogits()
    {
        using var dir = new TempDir();
        string modelDir = Path.Combine(dir.Path, "base");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 48, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 8, Seed = 4 }, modelDir);
        using var model = CausalLM.Load(modelDir, new CpuBackend(2), new TrainingSetup { LoraRank = 2 });
        TinyModels.RandomizeLoraB(model, 2);
        var batch = new TokenBatch(1, 4, [1, 2, 3, 4], [2, 3, 4, -100], [0, 1, 2, 3], [0, 0, 0, 0]);
        float[] expected = model.ForwardLogits(batch);
        string merged = Path.Combine(dir.Path, "merged");
        model.SaveModel(merged);
        Assert.True(File.Exists(Path.Combine(merged, "tokenizer.json")));
        using var m2 = CausalLM.Load(merged, new CpuBackend(2), TrainingSetup.Inference);
        float[] actual = m2.ForwardLogits(batch);
        double maxDiff = expected.Zip(actual, (a, b) => Math.Abs(a - b)).Max();
        Assert.True(maxDiff < 1e-4, $"max |Δlogit| {maxDiff}");
    }
}
