using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

/// <summary>decode_layer's FIFO depth: pieces of 4 KiB a warp in the shared memory an SM's block has left.</summary>
public sealed class PersistentLayerDepthTests
{
    // An H100/H200 block: 232,448 B opt-in, decode_layer's 41,168 B static (the attention's tiles, ptxas).
    [Theory]
    [InlineData(12288, 8, 0, 5)]  // Qwen3-1.7B: I = 6144 as the input row → 5 pieces a warp (160 KiB)
    [InlineData(28672, 8, 0, 4)]  // Llama-3-8B: I = 14336
    [InlineData(12288, 16, 0, 2)]
    [InlineData(12288, 8, 3, 3)]  // asked for fewer than fit
    [InlineData(12288, 8, 8, 5)]  // asked for more than fit: what fits
    [InlineData(12288, 4, 0, 8)]  // at most DL_MAX_P
    [InlineData(131072, 16, 0, 0)] // not even two pieces a warp: the three operations run instead
    public void Depth_is_what_fits_at_most_what_was_asked(int inputBytes, int warps, int wanted, int depth) =>
        Assert.Equal(depth, CudaBackend.PersistentLayerDepth(232448, 41168, inputBytes, warps, wanted));

    [Fact]
    public void The_chosen_depth_always_fits_the_block()
    {
        for (int input = 0; input <= 65536; input += 4096)
            foreach (int warps in new[] { 4, 8, 16 })
            {
                int d = CudaBackend.PersistentLayerDepth(232448, 41168, input, warps, 0);
                Assert.True(d == 0 || 41168 + input + (long)warps * d * 4096 <= 232448);
                Assert.True(d == 0 || d >= 2);
            }
    }
}
