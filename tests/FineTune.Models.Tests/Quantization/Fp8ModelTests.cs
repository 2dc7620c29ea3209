using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Quantization;
using Xunit;

namespace FineTune.Models.Tests.Quantization;

/// <summary>
/// fp8: frozen decoder linears held as FP8 E4M3 with a per-tensor scale, their products FP8 (the CPU backend emulates the
/// casts bit for bit and multiplies the dequantized operands in f32).
/// </summary>
public sealed class Fp8ModelTests
{
    // Every linear's dimensions are multiples of 16 (q/o [32, 32], k/v [16, 32], gate/up [64, 32], down [32, 64]).
    private static TransformerSpec Spec() => TinyModels.Spec("qwen3", tied: false) with { HiddenSize = 32, IntermediateSize = 64 };

    [Fact]
    public void Each_frozen_linear_reads_back_as_its_E4M3_codes_times_one_scale()
    {
        var spec = Spec();
        using var model = CausalLM.Create(spec, new CpuBackend(2), new TrainingSetup { LoraRank = 4, Fp8 = true }, new RandomWeights(1, 0.3f));
        Assert.Equal(2 * 7, model.Fp8Linears);
        const string name = "model.layers.1.mlp.down_proj.weight";
        var source = new float[32 * 64];
        new RandomWeights(1, 0.3f).Read(name, [32, 64], source);
        var (codes, _, inverse) = Fp8.QuantizeWeight(source, 32, 64);
        Assert.Equal(codes.Select(c => Fp8.Decode(c, Fp8Format.E4M3) * inverse), model.ReadParameter(name));
        // W and Wᵀ as bytes plus one f32 scale each: 2 bytes per weight, as the bf16 base.
        Assert.Equal(2 * (2L * (32 * 32 + 16 * 32) * 2 + 3 * 32 * 64 * 2) + 2 * 7 * 4, model.Fp8WeightBytes);
    }

    [Fact]
    public void Loss_and_lora_gradients_stay_within_fp8_rounding_of_the_dense_model()
    {
        var spec = Spec();
        var setup = new TrainingSetup { LoraRank = 4 };
        using var fp8 = CausalLM.Create(spec, new CpuBackend(2), setup with { Fp8 = true }, new RandomWeights(1, 0.3f));
        using var dense = CausalLM.Create(spec, new CpuBackend(2), setup, new RandomWeights(1, 0.3f));
        TinyModels.RandomizeLoraB(fp8, 5);
        TinyModels.RandomizeLoraB(dense, 5);
        var batch = TinyModels.PackedBatch();
        fp8.ZeroGrad(); dense.ZeroGrad();
        var lf = fp8.ForwardBackward(batch);
        var ld = dense.ForwardBackward(batch);
        double lossError = Math.Abs(lf.SumLoss - ld.SumLoss) / ld.SumLoss;
        // The products differ (3 mantissa bits for x and W, 2 for dy: a few per cent per product on a model this small,
        // 2.1 % in the summed loss here) but stay close.
        Assert.InRange(lossError, 1e-4, 5e-2);
        var gf = fp8.TrainableParameters.SelectMany(p => TinyModels.Grad(fp8, p)).ToArray();
        var gd = dense.TrainableParameters.SelectMany(p => TinyModels.Grad(dense, p)).ToArray();
        double num = 0, den = 0;
        for (int i = 0; i < gf.Length; i++) { num += (gf[i] - gd[i]) * (double)(gf[i] - gd[i]); den += gd[i] * (double)gd[i]; }
        // LoRA gradients of this random 2-layer model move 21 % (15 % with E4M3 gradients: the forward's casts dominate);
        // bf16 alone moves them 4-11 % on the device checks' models. The training curve is the measure that matters
        // (tests/device/fp8_curve.sh); here the bound says the backward runs through the FP8 products and stays sane.
        Assert.InRange(Math.Sqrt(num / den), 1e-3, 0.3);
    }

    [Fact]
    public void The_linears_of_a_set_cast_their_shared_input_once()
    {
        var spec = Spec();
        var profiler = new ProfilingBackend(new CpuBackend(2));
        using var model = CausalLM.Create(spec, profiler, new TrainingSetup { LoraRank = 4, Fp8 = true, GradientCheckpointing = false }, new RandomWeights(1, 0.3f));
        TinyModels.RandomizeLoraB(model, 5);
        model.ZeroGrad();
        var loss = model.ForwardBackward(TinyModels.PackedBatch());
        var calls = profiler.Report().ToDictionary(r => r.Op, r => r.Calls);
        // Per layer: one shared cast for q, k, v and one for gate, up; o_proj and down_proj forward alone.
        Assert.Equal(2 * spec.NumLayers, calls["Fp8MatMulShared"]);
        Assert.True(calls["Fp8MatMul"] >= 2 * spec.NumLayers);
        Assert.True(double.IsFinite(loss.SumLoss));
    }

    [Fact]
    public void Linears_whose_dimensions_are_not_multiples_of_16_stay_in_the_compute_dtype()
    {
        // hidden 16, intermediate 24, kv dim 8: only q_proj and o_proj ([16, 16]) qualify, in each of 2 layers.
        using var model = TinyModels.Create(TinyModels.Spec("llama", tied: true), new TrainingSetup { LoraRank = 4, Fp8 = true });
        Assert.Equal(4, model.Fp8Linears);
    }

    [Fact]
    public void Fp8_together_with_quantization_bit_is_refused()
    {
        var e = Assert.Throws<NotSupportedException>(() =>
            TinyModels.Create(Spec(), new TrainingSetup { Fp8 = true, Quantization = new QuantizationSetup(4) }));
        Assert.Equal("fp8 and QLoRA (quantization_bit) both choose how the frozen base is held: use one of them", e.Message);
    }
}

/// <summary>finetune bench --fp8: the synthetic LoRA step with the frozen linears in FP8 (the CPU emulates the products).</summary>
public sealed class Fp8BenchmarkTests
{
    [Fact]
    public void Bench_steps_run_on_an_fp8_base_and_say_so()
    {
        using var cpu = new CpuBackend(threads: 1);
        var r = EngineBenchmark.TrainSteps(cpu, "tiny", batch: 2, seqLen: 32, loraRank: 4, checkpointing: true, steps: 2, warmup: 1, fp8: true);
        // Uniform random weights give near-uniform predictions in FP8 as in f32: loss ≈ ln 512 = 6.238.
        Assert.InRange(r.Loss, 6.1, 6.4);
        Assert.True(r.Fp8);
        Assert.Equal(2 * 7, r.Fp8Linears);
    }
}
