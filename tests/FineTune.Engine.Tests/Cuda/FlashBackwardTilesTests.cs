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

    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    [InlineData(256)]
    public void Windowed_and_soft_capped_layers_name_variant_kernels_the_flash_source_instantiates(int headDim)
    {
        // Gemma's sliding-window and soft-capped layers take the _var instantiations; plain layers keep the plain names.
        string source = KernelSources.Embedded().Source("flash_attention.cu");
        var t = FlashBackwardTiles.For(headDim, null);
        Assert.Equal($"flash_backward_dq_d{headDim}_w{t.DqWarps}_n{t.DqKeys}_var", t.DqKernel(headDim, variant: true));
        Assert.Equal($"flash_backward_dkv_d{headDim}_w{t.DkvWarps}_m{t.DkvQueries}_var", t.DkvKernel(headDim, variant: true));
        Assert.Contains($"FLASH_DQ({headDim}, {t.DqWarps}, {t.DqKeys})", source);
        Assert.Contains($"FLASH_DKV({headDim}, {t.DkvWarps}, {t.DkvQueries})", source);
        Assert.Contains("#define FLASH_DQ(D, W, BN) FLASH_DQ_KERNEL(D, W, BN, , false) FLASH_DQ_KERNEL(D, W, BN, _var, true)", source);
        Assert.Contains("#define FLASH_DKV(D, W, BM) FLASH_DKV_KERNEL(D, W, BM, , false) FLASH_DKV_KERNEL(D, W, BM, _var, true)", source);
    }

    [Fact]
    public void Head_dim_256_takes_tiles_of_32_two_column_blocks_for_dk_dv_and_fits_shared_memory()
    {
        // Not a head_dim 256 shape: the wide one where it fits a block (Hopper: 227 KB), the 4-warp one where not (A100: 163 KB).
        Assert.Equal(new FlashBackwardTiles(8, 32, 8, 32), FlashBackwardTiles.For(256, FlashBackwardTiles.Default, 227 * 1024));
        Assert.Equal(new FlashBackwardTiles(4, 32, 4, 32), FlashBackwardTiles.For(256, null, 163 * 1024));
        Assert.Equal(new FlashBackwardTiles(4, 32, 4, 32), FlashBackwardTiles.For(256, FlashBackwardTiles.HeadDim256, 227 * 1024));
        Assert.Equal(FlashBackwardTiles.Default, FlashBackwardTiles.For(128, null));
        Assert.Equal(new FlashBackwardTiles(4, 32, 4, 32), FlashBackwardTiles.For(64, new FlashBackwardTiles(4, 32, 4, 32)));
        Assert.Equal(2, FlashBackwardTiles.DkvColumnSplits(256));
        Assert.Equal(1, FlashBackwardTiles.DkvColumnSplits(128));
        Assert.Contains("#define FLASH_DKV_DA(D) ((D) > 128 ? 128 : (D))", KernelSources.Embedded().Source("flash_attention.cu"));
        var t = FlashBackwardTiles.HeadDim256;
        // dQ: 2 stages × (K, V [32][264] + 32 ids) + Q, dO [64][264] = 2 × (33,792 + 128) + 67,584.
        Assert.Equal(135_424, t.DqSharedBytes(256));
        // dK/dV: K, V [64][264] + 2 stages × (Q, dO [32][264] + 3 × 32 words) = 67,584 + 2 × (33,792 + 384).
        Assert.Equal(135_936, t.DkvSharedBytes(256));
        const int hopperBlockLimit = 227 * 1024;
        Assert.True(t.DkvSharedBytes(256) <= hopperBlockLimit && t.DqSharedBytes(256) <= hopperBlockLimit);
    }

    [Fact]
    public void Every_head_dim_256_tile_shape_is_instantiated_chosen_by_name_and_fits_a_block()
    {
        string source = KernelSources.Embedded().Source("flash_attention.cu");
        var eight = new FlashBackwardTiles(8, 32, 8, 32);
        Assert.Equal([FlashBackwardTiles.HeadDim256, eight], FlashBackwardTiles.HeadDim256Shapes);
        Assert.Same(eight, FlashBackwardTiles.For(256, eight));
        Assert.Equal("flash_backward_dq_d256_w8_n32_var", eight.DqKernel(256, variant: true));
        // dQ: 2 × (K, V [32][264] + 32 ids) + Q, dO [128][264]; dK/dV: K, V [128][264] + 2 × (Q, dO [32][264] + 96 words).
        Assert.Equal(67_840 + 135_168, eight.DqSharedBytes(256));
        Assert.Equal(135_168 + 68_352, eight.DkvSharedBytes(256));
        foreach (var t in FlashBackwardTiles.HeadDim256Shapes)
        {
            Assert.Contains($"FLASH_DQ(256, {t.DqWarps}, {t.DqKeys})", source);
            Assert.Contains($"FLASH_DKV(256, {t.DkvWarps}, {t.DkvQueries})", source);
            Assert.True(t.DqSharedBytes(256) <= 227 * 1024 && t.DkvSharedBytes(256) <= 227 * 1024);
        }
    }
}
