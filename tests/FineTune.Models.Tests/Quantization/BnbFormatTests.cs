using System.Text;
using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Quantization;
using Xunit;

namespace FineTune.Models.Tests.Quantization;

/// <summary>bitsandbytes' 4-bit, 8-bit blockwise and LLM.int8 formats against values worked out by hand from bnb's tables.</summary>
public sealed class BnbFormatTests
{
    // absmax 2 → scaled [1, −1, 0.5, 0.25, 0, −0.5], the rest 0.
    private static float[] HandBlock()
    {
        var x = new float[64];
        float[] head = [2f, -2f, 1f, 0.5f, 0f, -1f];
        head.CopyTo(x, 0);
        return x;
    }

    [Fact]
    public void Nf4_block_codes_match_the_hand_computed_decision_tree()
    {
        // 1 → 15, −1 → 0, 0.5 → 12 (0.389 < x ≤ 0.502), 0.25 → 10 (0.204 < x ≤ 0.292), 0 → 7, −0.5 → 2; zeros → 7.
        var q = BnbFourBitTensor.Quantize(HandBlock(), [1, 64], QuantFormat.Nf4, doubleQuantization: false);
        Assert.Equal(new byte[] { 0xF0, 0xCA, 0x72 }, q.Codes[..3]);
        Assert.All(q.Codes[3..], b => Assert.Equal(0x77, b));
        Assert.Equal([2f], q.Absmax!);
        var x = q.Dequantize();
        Assert.Equal(new[] { 2f, -2f, 0.44070982933044434f * 2f, 0.24611230194568634f * 2f, 0f, -0.5250730514526367f * 2f }, x[..6]);
    }

    [Fact]
    public void Fp4_block_codes_match_the_hand_computed_decision_tree()
    {
        // 1 → 0b0011, −1 → 0b1011, 0.5 → 0b0101, 0.25 → 0b0111, 0 → 0, −0.5 → 0b1101.
        var q = BnbFourBitTensor.Quantize(HandBlock(), [1, 64], QuantFormat.Fp4, doubleQuantization: false);
        Assert.Equal(new byte[] { 0x3B, 0x57, 0x0D }, q.Codes[..3]);
        Assert.Equal(new[] { 2f, -2f, 1f, 0.5f, 0f, -1f }, q.Dequantize()[..6]);
    }

    [Fact]
    public void A_value_on_a_midpoint_takes_the_code_of_the_smaller_value()
    {
        float mid = 0.03979014977812767f; // between NF4 codes 7 (0) and 8 (0.0796)
        Assert.Equal(7, BnbFourBitTensor.Nf4Code(mid));
        Assert.Equal(8, BnbFourBitTensor.Nf4Code(MathF.BitIncrement(mid)));
        // FP4: 0.29166667 lies between 3/12 (0b0111) and 4/12 (0b0100).
        Assert.Equal(0b0111, BnbFourBitTensor.Fp4Code(0.29166667f));
        Assert.Equal(0b0100, BnbFourBitTensor.Fp4Code(MathF.BitIncrement(0.29166667f)));
    }

    [Fact]
    public void An_all_zero_block_gets_code_0_and_absmax_0_as_the_cuda_kernel_gives()
    {
        // 1/0 = ∞ and 0·∞ = NaN, which the NF4 tree sends to code 0 (−1): dequantized −1·0 = −0.
        var q = BnbFourBitTensor.Quantize(new float[64], [1, 64], QuantFormat.Nf4, doubleQuantization: false);
        Assert.All(q.Codes, b => Assert.Equal(0x00, b));
        Assert.Equal([0f], q.Absmax!);
        Assert.True(float.IsNegative(q.Dequantize()[0]));
    }

    [Fact]
    public void The_dynamic_map_has_bnbs_fixed_points()
    {
        var s = BnbDynamicMap.Signed;
        Assert.Equal(256, s.Length);
        Assert.Equal(0f, s[127]);
        Assert.Equal(1f, s[255]);
        // i = 6: linspace(0.1, 1, 65) ends 0.9859375, 1 → mean 0.99296875; i = 0: mean(0.1, 1) = 0.55 at 1e−6.
        Assert.Equal(-0.99296875f, s[0]);
        Assert.Equal((float)1e-6 * 0.55f, s[128]);
        var u = BnbDynamicMap.Unsigned;
        Assert.Equal(0f, u[0]);
        Assert.Equal(1f, u[255]);
        for (int i = 1; i < 256; i++) { Assert.True(s[i] > s[i - 1]); Assert.True(u[i] > u[i - 1]); }
    }

    [Fact]
    public void The_dynamic_map_takes_torch_linspaces_fused_multiply_add_values()
    {
        // torch.linspace(0.1, 1, 65) rounds start + step·i once (its CPU kernel is built with FMA contraction); the
        // twice-rounded formula gave 0xbf3d6667 here, and 42 signed entries that torch's create_dynamic_map does not
        // have (tests/device/bnb_reference.py on the H200, 2026-12-01).
        Assert.Equal(0xbf3d6666u, BitConverter.SingleToUInt32Bits(BnbDynamicMap.Signed[18]));
        Assert.Equal(0xbf363334u, BitConverter.SingleToUInt32Bits(BnbDynamicMap.Signed[20]));
    }

    [Fact]
    public void Int8_scale_is_the_reciprocal_of_the_absmax_times_127_as_torch_divides_a_scalar_by_a_tensor()
    {
        // 127.0 / row_stats is row_stats.reciprocal() · 127 in torch: for absmax 1.0166015625 the half-absmax value
        // lands just under 63.5 (→ 63), where an exact 127 / absmax gives 63.5 and rounds to 64.
        var q = Int8Rows.Quantize([1.0166015625f, 0.50830078125f], 1, 2);
        Assert.Equal(new sbyte[] { 127, 63 }, q.CB);
    }

    [Fact]
    public void Double_quantization_stores_absmax_minus_their_mean_in_8_bits()
    {
        // Three blocks with absmax 1, 2, 3: offset 2, centred [−1, 0, 1], absmax2 1 → codes [0, 127, 255];
        // dequantized code·1 + 2 = [2 − 0.99296875, 2, 3].
        var x = new float[192];
        x[0] = 1f; x[64] = -2f; x[128] = 3f;
        var q = BnbFourBitTensor.Quantize(x, [3, 64], QuantFormat.Nf4, doubleQuantization: true);
        var nested = q.Nested!;
        Assert.Equal(2f, nested.Offset);
        Assert.Equal([1f], nested.Absmax2);
        Assert.Equal(new byte[] { 0, 127, 255 }, nested.Codes);
        Assert.Equal(new[] { 2f - 0.99296875f, 2f, 3f }, q.BlockAbsmax());
        // Codes are unchanged by the nesting (they come from the exact absmax); the first value reads back as 1.00703125.
        Assert.Equal(0xF7, q.Codes[0]);
        Assert.Equal(2f - 0.99296875f, q.Dequantize()[0]);
    }

    [Fact]
    public void Int8_rows_store_round_half_even_of_127_over_the_row_absmax()
    {
        // Row 0: absmax 127 → scale 1 → [1, −2, 0 (0.5 to even), 127]; row 1: absmax 0.5 → scale 254 → [64 (63.5 to even), −127, 0, 0].
        var q = Int8Rows.Quantize([1f, -2f, 0.5f, 127f, 0.25f, -0.5f, 0f, 0f], 2, 4);
        Assert.Equal(new sbyte[] { 1, -2, 0, 127, 64, -127, 0, 0 }, q.CB);
        Assert.Equal(new[] { 127f, 0.5f }, q.SCB);
        var w = q.Dequantize();
        Assert.Equal(64 * (0.5f * (1f / 127f)), w[4]);
        Assert.Equal(127 * (127f * (1f / 127f)), w[3]);
    }

    [Theory]
    [InlineData(QuantFormat.Nf4, false)]
    [InlineData(QuantFormat.Nf4, true)]
    [InlineData(QuantFormat.Fp4, true)]
    [InlineData(QuantFormat.Int8, false)]
    public void The_cpu_backend_dequantizes_bit_for_bit_as_the_format(QuantFormat format, bool nested)
    {
        const int rows = 48, cols = 96;
        var values = new float[rows * cols];
        new RandomWeights(7, 0.05f).Read("w", [rows, cols], values);
        using var backend = new CpuBackend(2);
        float[] expected;
        var builder = new TensorArena.Builder();
        int hOut = builder.Add("out", DType.F32, rows, cols);
        BnbFourBitTensor? four = null;
        Int8Rows? int8 = null;
        int hCodes, hAbsmax, hAbsmax2 = -1, hCode = -1;
        if (format == QuantFormat.Int8)
        {
            int8 = Int8Rows.Quantize(values, rows, cols);
            expected = int8.Dequantize();
            hCodes = builder.Add("codes", DType.I32, QuantizedWeight.WordsFor(int8.CB.Length));
            hAbsmax = builder.Add("scb", DType.F32, rows);
        }
        else
        {
            four = BnbFourBitTensor.Quantize(values, [rows, cols], format, nested);
            expected = four.Dequantize();
            hCodes = builder.Add("codes", DType.I32, QuantizedWeight.WordsFor(four.Codes.Length));
            hAbsmax = nested ? builder.Add("qabsmax", DType.I32, QuantizedWeight.WordsFor(four.Blocks)) : builder.Add("absmax", DType.F32, (int)four.Blocks);
            if (nested)
            {
                hAbsmax2 = builder.Add("absmax2", DType.F32, four.Nested!.Absmax2.Length);
                hCode = builder.Add("code2", DType.F32, 256);
            }
        }
        using var arena = builder.Build(backend);
        QuantizedWeight w;
        if (int8 is not null)
        {
            backend.Upload(arena[hCodes], Words((byte[])(Array)int8.CB));
            backend.Upload(arena[hAbsmax], int8.SCB);
            w = new QuantizedWeight(format, rows, cols, arena[hCodes], arena[hAbsmax]);
        }
        else
        {
            backend.Upload(arena[hCodes], Words(four!.Codes));
            NestedAbsmax? na = null;
            if (nested)
            {
                backend.Upload(arena[hAbsmax], Words(four.Nested!.Codes));
                backend.Upload(arena[hAbsmax2], four.Nested.Absmax2);
                backend.Upload(arena[hCode], four.Nested.Code);
                na = new NestedAbsmax(arena[hAbsmax2], arena[hCode], four.Nested.Offset);
            }
            else backend.Upload(arena[hAbsmax], four.Absmax!);
            w = new QuantizedWeight(format, rows, cols, arena[hCodes], arena[hAbsmax], na);
        }
        backend.Dequantize(arena[hOut], w);
        var got = new float[rows * cols];
        backend.Download(arena[hOut], got);
        Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), got.Select(BitConverter.SingleToInt32Bits));
        // And the dequantized weight is near the original (NF4 of N(0, 0.05): mean |error| well under 0.01).
        Assert.True(values.Zip(got).Average(p => Math.Abs(p.First - p.Second)) < 0.01);
    }

    internal static int[] Words(byte[] bytes)
    {
        var padded = new byte[QuantizedWeight.WordsFor(bytes.Length) * 4];
        bytes.CopyTo(padded, 0);
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(padded).ToArray();
    }

    [Fact]
    public void A_pre_quantized_bnb_4bit_checkpoint_reads_as_its_codes_and_as_dequantized_values()
    {
        using var dir = new TempDir();
        var values = new float[64 * 8];
        new RandomWeights(3, 0.02f).Read("w", [8, 64], values);
        var q = BnbFourBitTensor.Quantize(values, [8, 64], QuantFormat.Nf4, doubleQuantization: true);
        string path = WritePrequantized(dir, "model.layers.0.mlp.down_proj.weight", q, null);
        using var reader = SafetensorsReader.Open(path);
        var source = new SafetensorsWeights(reader, dir.Path);
        var read = source.TryReadFourBit("model.layers.0.mlp.down_proj.weight", [8, 64])!;
        Assert.Equal(q.Codes, read.Codes);
        Assert.Equal(q.Nested!.Codes, read.Nested!.Codes);
        Assert.Equal(q.Nested.Offset, read.Nested.Offset);
        var dense = new float[values.Length];
        source.Read("model.layers.0.mlp.down_proj.weight", [8, 64], dense);
        Assert.Equal(q.Dequantize(), dense);
    }

    [Fact]
    public void A_pre_quantized_weight_of_another_shape_is_a_located_error()
    {
        using var dir = new TempDir();
        var q = BnbFourBitTensor.Quantize(new float[128], [2, 64], QuantFormat.Nf4, doubleQuantization: false);
        string path = WritePrequantized(dir, "w.weight", q, null);
        using var reader = SafetensorsReader.Open(path);
        var e = Assert.Throws<ModelFormatException>(() => new SafetensorsWeights(reader, dir.Path).TryReadFourBit("w.weight", [4, 32]));
        Assert.Equal($"{path}: tensor \"w.weight\" is quantized with shape [2, 64] but config.json implies [4, 32]; the weights and the config disagree.", e.Message);
    }

    /// <summary>The layout transformers + bitsandbytes save (Params4bit + QuantState.as_dict(packed=True)).</summary>
    internal static string WritePrequantized(TempDir dir, string name, BnbFourBitTensor q, string? jsonOverride)
    {
        var w = new SafetensorsWriter();
        string type = q.Format == QuantFormat.Nf4 ? "nf4" : "fp4";
        w.AddRaw(name, SafetensorsDType.U8, [q.Codes.Length, 1], q.Codes);
        w.Add(name + ".quant_map", QuantCodebooks.For(q.Format), [16]);
        string json;
        if (q.Nested is { } n)
        {
            w.AddRaw(name + ".absmax", SafetensorsDType.U8, [n.Codes.Length], n.Codes);
            w.Add(name + ".nested_absmax", n.Absmax2, [n.Absmax2.Length]);
            w.Add(name + ".nested_quant_map", n.Code, [256]);
            json = $"{{\"quant_type\": \"{type}\", \"blocksize\": {q.BlockSize}, \"dtype\": \"bfloat16\", \"shape\": [{string.Join(", ", q.Shape)}], " +
                   $"\"nested_blocksize\": {n.BlockSize}, \"nested_dtype\": \"float32\", \"nested_offset\": {((double)n.Offset).ToString("R", System.Globalization.CultureInfo.InvariantCulture)}}}";
        }
        else
        {
            w.Add(name + ".absmax", q.Absmax!, [q.Absmax!.Length]);
            json = $"{{\"quant_type\": \"{type}\", \"blocksize\": {q.BlockSize}, \"dtype\": \"bfloat16\", \"shape\": [{string.Join(", ", q.Shape)}]}}";
        }
        var bytes = Encoding.UTF8.GetBytes(jsonOverride ?? json);
        w.AddRaw($"{name}.quant_state.bitsandbytes__{type}", SafetensorsDType.U8, [bytes.Length], bytes);
        string path = dir.File("model.safetensors");
        w.Save(path);
        return path;
    }
}
