using FineTune.Engine.Cuda;

namespace FineTune.Engine.Tests.Cuda;

public sealed class FlashForwardTilesTests
{
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    [InlineData(256)]
    public void Every_shape_names_a_kernel_the_flash_source_instantiates_plain_and_variant(int headDim)
    {
        string source = KernelSources.Embedded().Source("flash_attention.cu");
        Assert.Contains("#define FLASH_FORWARD(D, W, S) FLASH_FORWARD_KERNEL(D, W, S, , false) FLASH_FORWARD_KERNEL(D, W, S, _var, true)", source);
        foreach (var t in FlashForwardTiles.Instantiated(headDim))
        {
            Assert.Contains($"FLASH_FORWARD({headDim}, {t.Warps}, {t.Stages})", source);
            Assert.Equal($"flash_forward_d{headDim}_w{t.Warps}_s{t.Stages}", t.Kernel(headDim, variant: false));
            Assert.Equal($"flash_forward_d{headDim}_w{t.Warps}_s{t.Stages}_var", t.Kernel(headDim, variant: true));
        }
    }

    [Fact]
    public void Defaults_and_choices_follow_the_head_size()
    {
        Assert.Equal(new FlashForwardTiles(4, 2), FlashForwardTiles.For(128, null));
        Assert.Equal(new FlashForwardTiles(4, 1), FlashForwardTiles.For(256, null));
        Assert.Equal(new FlashForwardTiles(8, 2), FlashForwardTiles.For(64, new FlashForwardTiles(8, 2)));
        // Not instantiated at head_dim 256: the default instead.
        Assert.Equal(FlashForwardTiles.HeadDim256, FlashForwardTiles.For(256, new FlashForwardTiles(8, 2)));
        Assert.Equal(new FlashForwardTiles(4, 1), FlashForwardTiles.Parse("w4s1"));
        Assert.Equal("w8s2", new FlashForwardTiles(8, 2).ToString());
        Assert.Null(FlashForwardTiles.Parse("4s1"));
        Assert.Null(FlashForwardTiles.Parse("wxs2"));
        Assert.Null(FlashForwardTiles.Parse(null));
        Assert.Equal(128, new FlashForwardTiles(8, 2).Rows);
    }

    [Fact]
    public void Shared_memory_counts_stages_of_padded_key_and_value_tiles_and_the_head_dim_256_query_tile()
    {
        // Two stages × (K, V [64][136] bf16 + 64 segment ids) = 2 × (34,816 + 256).
        Assert.Equal(70_144, new FlashForwardTiles(4, 2).SharedBytes(128));
        Assert.Equal(35_072, new FlashForwardTiles(4, 1).SharedBytes(128));
        // head_dim 256: K, V [64][264] + 64 ids + the block's Q [64][264] = 67,584 + 256 + 33,792.
        Assert.Equal(101_632, FlashForwardTiles.HeadDim256.SharedBytes(256));
        Assert.Equal(2 * (67_584 + 256) + 33_792, new FlashForwardTiles(4, 2).SharedBytes(256));
        const int hopperBlockLimit = 227 * 1024;
        foreach (int d in new[] { 64, 128, 256 })
            Assert.All(FlashForwardTiles.Instantiated(d), t => Assert.True(t.SharedBytes(d) <= hopperBlockLimit));
    }
}
