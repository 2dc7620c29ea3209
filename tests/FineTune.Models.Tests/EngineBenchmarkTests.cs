using FineTune.Engine.Cpu;
using FineTune.Models;

namespace FineTune.Models.Tests;

public sealed class EngineBenchmarkTests
{
    [Fact]
    public void Model_flops_per_token_follow_the_lora_convention()
    {
        // The figure for qwen2.5-7b at 2048: ~29.5 GFLOP per token (frozen linears + head 4N, attention 3×2·T·d·H·L).
        double f = EngineBenchmark.ModelFlopsPerToken(EngineBenchmark.ShapeOf("qwen2.5-7b"), 2048);
        Assert.InRange(f / 1e9, 29.4, 29.6);
        // By hand for the tiny shape: linears 2·(64·64·2 + 64·32·2 + 3·64·128) = 2·(8192 + 4096 + 24576) = 73,728;
        // head 512·64 = 32,768; attention 2·256·16·4·2 = 65,536.
        double tiny = EngineBenchmark.ModelFlopsPerToken(EngineBenchmark.ShapeOf("tiny"), 256);
        Assert.Equal(4 * 73_728 + 4 * 32_768 + 3 * 65_536, tiny);
    }

    [Fact]
    public void Train_steps_on_the_cpu_report_a_random_model_loss_and_counts()
    {
        using var cpu = new CpuBackend(threads: 1);
        var r = EngineBenchmark.TrainSteps(cpu, "tiny", batch: 2, seqLen: 32, loraRank: 4, checkpointing: true, steps: 2, warmup: 1);
        // Uniform random weights of std 0.02 give near-uniform predictions: mean loss ≈ ln(vocab 512) = 6.238.
        Assert.InRange(r.Loss, 6.1, 6.4);
        Assert.Equal(2, r.Steps);
        Assert.True(r.TokensPerSecond > 0);
        // LoRA r=4 on q,k,v,o,gate,up,down of 2 layers: Σ 4·(in + out) = 4·((64+64)+(64+32)·2+(64+64)+(64+128)·2+(128+64)) per layer.
        Assert.Equal(2L * 4 * (128 + 96 * 2 + 128 + 192 * 2 + 192), r.TrainableParameters);
        Assert.Null(r.PeakDeviceGib);
        Assert.Throws<ArgumentException>(() => EngineBenchmark.TrainSteps(cpu, "qwen9", 1, 8, 4, false, 1));
    }
}
