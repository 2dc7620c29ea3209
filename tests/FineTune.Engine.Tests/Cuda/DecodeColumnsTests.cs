using FineTune.Engine.Cuda;
using Xunit;

namespace FineTune.Engine.Tests.Cuda;

// FINETUNE_DECODE_COLUMNS (CudaBackend.DecodeColumns, DecodeColumnsOf): its parsing, one C or per kernel, and the GEMV grid for C columns a warp against the
// kernels' strided assignment (decode.cu dec_columns, gemv.cu gemv_columns: warp g of G takes g, g + G, … below N, at
// most C of them).
public class DecodeColumnsTests
{
    [Theory]
    [InlineData(null, 1)]
    [InlineData("", 1)]
    [InlineData("two", 1)]
    [InlineData("0", 1)]
    [InlineData("-3", 1)]
    [InlineData("1", 1)]
    [InlineData("4", 4)]
    [InlineData("8", 8)]
    [InlineData("9", 8)]
    public void Parses_clamped_to_one_through_eight_default_one(string? text, int expected) =>
        Assert.Equal(expected, CudaBackend.ParseDecodeColumns(text));

    [Fact]
    public void Takes_per_kernel_values_beside_a_default()
    {
        var (all, byKernel) = CudaBackend.ParseDecodeColumnOverrides("3, gemv_norm_set=2,gemv_residual=1, gemv_bf16=12");
        Assert.Equal(3, all);
        Assert.Equal(new Dictionary<string, int> { ["gemv_norm_set"] = 2, ["gemv_residual"] = 1, ["gemv_bf16"] = 8 }, byKernel);
    }

    [Fact]
    public void Ignores_unknown_kernels_and_non_numbers_and_keeps_the_last_value()
    {
        var (all, byKernel) = CudaBackend.ParseDecodeColumnOverrides("flash=4,gemv_norm_swiglu=x,gemv_norm_swiglu=3,gemv_norm_swiglu=2,=5");
        Assert.Equal(1, all);
        Assert.Equal(new Dictionary<string, int> { ["gemv_norm_swiglu"] = 2 }, byKernel);
        Assert.Equal(2, CudaBackend.ParseDecodeColumns("gemv_bf16_set=4,2"));
        Assert.Empty(CudaBackend.ParseDecodeColumnOverrides(null).ByKernel);
    }

    [Theory]
    [InlineData(1, 8, 1)]
    [InlineData(200, 8, 3)]
    [InlineData(1000, 8, 8)]
    [InlineData(4096, 8, 4)]
    [InlineData(4096 + 1024 + 1024, 16, 3)]
    [InlineData(151936, 8, 2)]
    [InlineData(151936, 8, 8)]
    [InlineData(14336, 2, 5)]
    public void Every_column_is_taken_exactly_once_by_the_fewest_blocks(int columns, int warps, int perWarp)
    {
        int blocks = CudaBackend.GemvBlocks(columns, warps, perWarp);
        int g = blocks * warps;
        var taken = new int[columns];
        for (int warp = 0; warp < g; warp++)
            for (int i = 0; i < perWarp && warp + i * g < columns; i++) taken[warp + i * g]++;
        Assert.All(taken, t => Assert.Equal(1, t));
        Assert.True((long)(blocks - 1) * warps * perWarp < columns, "one block fewer would still cover every column");
    }

    [Fact]
    public void One_column_a_warp_is_the_grid_of_before() =>
        Assert.All(new[] { 1, 7, 8, 9, 200, 1000, 6144, 151936 }, n => Assert.Equal((n + 8 - 1) / 8, CudaBackend.GemvBlocks(n, 8, 1)));
}
