namespace FineTune.Models.Tests.Formats;

/// <summary>FineTune's block formats against ggml's own quantizers (libggml-base.so from node-llama-cpp), byte for byte.</summary>
public sealed class GgmlQuantsTests
{
    public static readonly GgufTensorType[] Types =
    [
        GgufTensorType.F32, GgufTensorType.F16, GgufTensorType.BF16,
        GgufTensorType.Q4_0, GgufTensorType.Q5_0, GgufTensorType.Q5_1, GgufTensorType.Q8_0,
        GgufTensorType.Q2_K, GgufTensorType.Q3_K, GgufTensorType.Q4_K, GgufTensorType.Q5_K, GgufTensorType.Q6_K,
    ];

    /// <summary>Tensors that reach every branch of the quantizers: (name, rows, row length).</summary>
    public static readonly (string Name, int Rows, int RowLength)[] Tensors =
    [
        ("normal", 33, 256),
        ("normal", 17, 512),
        ("outliers", 31, 256),
        ("zeros", 2, 256),
        ("tiny", 9, 256),
        ("mixed-scales", 15, 512),
        ("positive", 7, 256),
        ("constant-runs", 5, 256),
        ("normal", 9, 32),
        ("normal", 1, 96),
    ];

    public static TheoryData<GgufTensorType, int> Cases()
    {
        var data = new TheoryData<GgufTensorType, int>();
        foreach (var t in Types)
            for (int i = 0; i < Tensors.Length; i++)
                if (Tensors[i].RowLength % GgmlQuants.BlockSize(t) == 0)
                    data.Add(t, i);
        return data;
    }

    /// <summary>Seeded values of each kind (Box–Muller normals from System.Random).</summary>
    public static float[] Values(int index)
    {
        var (name, rows, rowLength) = Tensors[index];
        var rng = new Random(1000 + index);
        float Normal() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var x = new float[rows * rowLength];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = name switch
            {
                "normal" => 0.02f * Normal(),
                // Mostly small weights with a few large ones, as in real attention and down projections.
                "outliers" => rng.Next(64) == 0 ? 3f * Normal() : 0.01f * Normal(),
                "zeros" => 0f,
                // Around and below f16's smallest normal and GROUP_MAX_EPS: scales round to zero or go subnormal.
                "tiny" => (i / 64 % 4) switch { 0 => 1e-9f, 1 => 1e-6f, 2 => 1e-16f, _ => 3e-5f } * Normal(),
                // Each 16-value group at its own magnitude, some groups zero.
                "mixed-scales" => (i / 16 % 5) switch { 0 => 0f, 1 => 1e-3f, 2 => 0.1f, 3 => 2f, _ => 1e-5f } * Normal(),
                "positive" => MathF.Abs(0.05f * Normal()) + 0.01f,
                // Runs of equal values (max == min in a sub-block) between normal ones.
                "constant-runs" => (i / 32 % 2) == 0 ? 0.25f : 0.05f * Normal(),
                _ => throw new ArgumentOutOfRangeException(nameof(index)),
            };
        }
        return x;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Quantized_bytes_equal_ggml_quantize_chunk(GgufTensorType type, int tensor)
    {
        var x = Values(tensor);
        int rowLength = Tensors[tensor].RowLength;
        var expected = GgmlNative.Quantize(type, x, rowLength);
        var actual = new byte[expected.Length];
        GgmlQuants.Quantize(type, x, rowLength, actual);
        int blockBytes = GgmlQuants.BlockBytes(type), blockSize = GgmlQuants.BlockSize(type);
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i])
                Assert.Fail($"{type} on {Tensors[tensor].Name} ({Tensors[tensor].Rows}×{rowLength}): byte {i % blockBytes} of block {i / blockBytes} " +
                            $"(values {i / blockBytes * blockSize}…) is {actual[i]:x2}, ggml wrote {expected[i]:x2}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Dequantized_values_equal_ggml_dequantize_row(GgufTensorType type, int tensor)
    {
        if (!GgmlQuants.IsQuantized(type))
            return; // the float types have no dequantize_row_*; their bytes are compared above
        var x = Values(tensor);
        var blocks = GgmlNative.Quantize(type, x, Tensors[tensor].RowLength);
        var expected = GgmlNative.Dequantize(type, blocks, x.Length);
        var actual = new float[x.Length];
        GgmlQuants.Dequantize(type, blocks, actual);
        Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), actual.Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void Row_parallel_quantization_gives_the_bytes_of_one_sequential_pass()
    {
        // 600 rows of 512 values: more than one task of 2^18 values, so Quantize splits the rows across threads.
        var rng = new Random(7);
        var x = new float[600 * 512];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() - 0.5);
        var parallel = new byte[GgmlQuants.RowBytes(GgufTensorType.Q4_K, 512) * 600];
        var sequential = new byte[parallel.Length];
        GgmlQuants.Quantize(GgufTensorType.Q4_K, x, 512, parallel);
        GgmlQuants.QuantizeBlocks(GgufTensorType.Q4_K, x, sequential);
        Assert.Equal(sequential, parallel);
    }

    [Fact]
    public void Enum_values_and_block_sizes_match_ggml()
    {
        // ggml_type_size / ggml_blck_size of the enum value: a wrong value would name another type.
        Assert.Equal(
            Types.Select(t => GgmlNative.BlockOf(t)),
            Types.Select(t => ((long)GgmlQuants.BlockBytes(t), (long)GgmlQuants.BlockSize(t))));
        Assert.Equal([4, 2, 2, 18, 22, 24, 34, 84, 110, 144, 176, 210], Types.Select(GgmlQuants.BlockBytes));
    }

    [Fact]
    public void A_row_that_is_not_whole_blocks_is_refused_with_the_block_size()
    {
        var e = Assert.Throws<ArgumentException>(() => GgmlQuants.RowBytes(GgufTensorType.Q4_K, 320));
        Assert.Equal("Q4_K stores blocks of 256 values; a row of 320 is not a multiple of 256", e.Message);
    }
}
