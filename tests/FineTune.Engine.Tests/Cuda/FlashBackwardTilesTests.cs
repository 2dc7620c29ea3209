using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class FlashBackwardTilesTests
{
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void The_default_tiles_name_kernels_the_flash_source_instantiates(int headDim)
    {
        var t = FlashBackwardTiles.Default;
        string source = KernelSources.Embedded().Source("flash_attention.cu");
        Assert.Equal($"flash_backward_dq_d{headDim}_w4_n64", t.DqKernel(headDim));
        Assert.Equal($"flash_backward_dkv_d{headDim}_w4_m64", t.DkvKernel(headDim));
        Assert.Contains($"FLASH_DQ({headDim}, {t.DqWarps}, {t.DqKeys})", source);
        Assert.Contains($"FLASH_DKV({headDim}, {t.DkvWarps}, {t.DkvQueries})", source);
    }

    [Fact]
    public void Shared_memory_counts_two_stages_of_streamed_tiles_with_padded_rows()
    {
        var t = FlashBackwardTiles.Default;
        // dQ: 2 stages × (K and V [64][136] bf16 + 64 segment ids) = 2 × (34,816 + 256).
        Assert.Equal(70_144, t.DqSharedBytes(128));
        // dK/dV: K, V [64][136] bf16 + 2 stages × (Q, dO [64][136] bf16 + 3 × 64 words) = 34,816 + 2 × (34,816 + 768).
        Assert.Equal(105_984, t.DkvSharedBytes(128));
    }
}
