using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Quantization;
using Xunit;

namespace FineTune.Models.Tests.Quantization;

/// <summary>A model whose frozen linears are held quantized computes exactly what the same model computes with the dequantized weights.</summary>
public sealed class QLoraModelTests
{
    /// <summary>The base weights as the quantized model sees them: decoder linears quantized then dequantized.</summary>
    private sealed class RoundTripped(IWeightSource inner, QuantizationSetup q) : IWeightSource
    {
        public bool Contains(string name) => inner.Contains(name);

        public void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
        {
            inner.Read(name, shape, destination);
            if (QuantizationSetup.IsQuantizedLinear(name)) q.RoundTrip(destination, shape[0], shape[1]).CopyTo(destination);
        }
    }

    [Theory]
    [InlineData(4, QuantFormat.Nf4, true)]
    [InlineData(4, QuantFormat.Fp4, false)]
    [InlineData(8, QuantFormat.Nf4, false)]
    public void Loss_and_lora_gradients_equal_the_dense_model_on_dequantized_weights(int bits, QuantFormat type, bool doubleQuant)
    {
        var spec = TinyModels.Spec("qwen3", tied: false);
        var q = new QuantizationSetup(bits, type, doubleQuant);
        var setup = new TrainingSetup { LoraRank = 4, GradientCheckpointing = true };
        using var quantized = CausalLM.Create(spec, new CpuBackend(2), setup with { Quantization = q }, new RandomWeights(1, 0.3f));
        using var dense = CausalLM.Create(spec, new CpuBackend(2), setup, new RoundTripped(new RandomWeights(1, 0.3f), q));
        TinyModels.RandomizeLoraB(quantized, 5);
        TinyModels.RandomizeLoraB(dense, 5);
        var batch = TinyModels.PackedBatch();
        quantized.ZeroGrad(); dense.ZeroGrad();
        var lq = quantized.ForwardBackward(batch);
        var ld = dense.ForwardBackward(batch);
        Assert.Equal(ld.SumLoss, lq.SumLoss);
        foreach (var (pq, pd) in quantized.TrainableParameters.Zip(dense.TrainableParameters))
            Assert.Equal(TinyModels.Grad(dense, pd), TinyModels.Grad(quantized, pq));
        // The held weights are the dequantized ones, and they take less room than f32 values would.
        const string name = "model.layers.1.mlp.down_proj.weight";
        Assert.Equal(dense.ReadParameter(name), quantized.ReadParameter(name));
        Assert.True(quantized.QuantizedWeightBytes > 0);
    }

    [Fact]
    public void Lora_targets_train_against_the_quantized_base_and_the_base_stays_frozen()
    {
        var spec = TinyModels.Spec("llama", tied: true);
        var setup = new TrainingSetup { LoraRank = 4, Quantization = new QuantizationSetup(4) };
        using var model = TinyModels.Create(spec, setup);
        // Only LoRA tensors train: no base linear has an F32 value to update.
        Assert.All(model.TrainableParameters, t => Assert.True(t.Role is ParameterRole.LoraA or ParameterRole.LoraB));
        Assert.Equal(14 * 2, model.TrainableParameters.Count);
    }
}

/// <summary>finetune bench --quantization-bit: the synthetic LoRA step on an NF4 base.</summary>
public sealed class QLoraBenchmarkTests
{
    [Fact]
    public void Bench_steps_run_on_a_4_bit_base_and_say_so()
    {
        using var cpu = new CpuBackend(threads: 1);
        var r = EngineBenchmark.TrainSteps(cpu, "tiny", batch: 2, seqLen: 32, loraRank: 4, checkpointing: true, steps: 2, warmup: 1, quantizationBit: 4);
        // NF4 of uniform random weights still gives near-uniform predictions: loss ≈ ln 512 = 6.238.
        Assert.InRange(r.Loss, 6.1, 6.4);
        Assert.Equal(4, r.QuantizationBit);
        Assert.Throws<ArgumentException>(() => EngineBenchmark.TrainSteps(cpu, "tiny", 1, 8, 4, false, 1, 0, quantizationBit: 3));
    }
}

/// <summary>A QLoRA adapter loaded for inference (eval, chat, serve) runs on the quantized base it trained against.</summary>
public sealed class QLoraAdapterLoadTests
{
    [Fact]
    public void Loading_a_qlora_adapter_holds_the_base_as_its_quantization_config_says()
    {
        using var dir = new TempDir();
        string modelDir = dir.File("model"), adapterDir = dir.File("adapter");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 64, IntermediateSize = 128, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, Seed = 5 }, modelDir);
        var q = new QuantizationSetup(4);
        var batch = TinyModels.PackedBatch();
        double trained;
        using (var model = CausalLM.Load(modelDir, new CpuBackend(2), new TrainingSetup { LoraRank = 4, Quantization = q }))
        {
            TinyModels.RandomizeLoraB(model, 3);
            trained = model.Forward(batch).SumLoss;
            model.SaveAdapter(adapterDir);
            QuantizedBaseFile.Write(adapterDir, q);
        }
        using var reloaded = CausalLM.Load(modelDir, new CpuBackend(2), TrainingSetup.Inference, adapterDir);
        Assert.Equal(q, reloaded.Quantization);
        Assert.Equal(trained, reloaded.Forward(batch).SumLoss);
    }
}
