using FineTune.Engine;

namespace FineTune.Models.Quantization;

/// <summary>
/// The double quantization of a 4-bit tensor's absmax (bnb's compress_statistics, LLaMA-Factory's
/// double_quantization): q = blockwise 8-bit of (absmax − Offset) with <see cref="Code"/> in blocks of <see cref="BlockSize"/>.
/// </summary>
public sealed record NestedStatistics(byte[] Codes, float[] Absmax2, float[] Code, float Offset, int BlockSize = 256);

/// <summary>
/// A weight quantized as bitsandbytes' 4-bit NF4 or FP4 (functional.quantize_4bit): blocks of <see cref="BlockSize"/>
/// values, each scaled by 1/absmax and mapped to the nearest code by the kernels' decision trees (dQuantizeNF4 /
/// dQuantizeFP4, which compare with the midpoints between codes); two codes per byte, the first value in the high nibble.
/// </summary>
public sealed class BnbFourBitTensor
{
    public BnbFourBitTensor(QuantFormat format, int[] shape, byte[] codes, float[]? absmax, NestedStatistics? nested, int blockSize = 64)
    {
        if (format == QuantFormat.Int8) throw new ArgumentException("int8 is not a 4-bit format");
        if ((absmax is null) == (nested is null)) throw new ArgumentException("a 4-bit tensor has either an f32 absmax or nested statistics");
        Format = format; Shape = shape; Codes = codes; Absmax = absmax; Nested = nested; BlockSize = blockSize;
        Length = shape.Aggregate(1L, (a, b) => a * b);
        if (codes.Length != (Length + 1) / 2) throw new ArgumentException($"{codes.Length} code bytes for {Length} values");
    }

    public QuantFormat Format { get; }
    public int[] Shape { get; }
    public long Length { get; }
    public int BlockSize { get; }
    /// <summary>Packed codes, (Length + 1) / 2 bytes.</summary>
    public byte[] Codes { get; }
    /// <summary>F32 absmax per block (null when double-quantized).</summary>
    public float[]? Absmax { get; }
    public NestedStatistics? Nested { get; }
    public long Blocks => (Length + BlockSize - 1) / BlockSize;

    /// <summary>bnb's quantize_4bit(A, blocksize, compress_statistics, quant_type) on f32 values (bf16/fp16 widen exactly).</summary>
    public static BnbFourBitTensor Quantize(ReadOnlySpan<float> values, int[] shape, QuantFormat format, bool doubleQuantization, int blockSize = 64)
    {
        if (blockSize <= 0 || blockSize % 2 != 0) throw new ArgumentException($"the 4-bit block size must be even, got {blockSize}");
        int n = values.Length;
        int blocks = (n + blockSize - 1) / blockSize;
        var absmax = new float[blocks];
        var codes = new byte[(n + 1) / 2];
        unsafe
        {
            fixed (float* pv = values)
            {
                float* v = pv;
                // Blocks are independent: chunks of them on all cores give the same bytes (a 32B model has 500M blocks).
                const int blocksPerChunk = 4096;
                Parallel.For(0, (blocks + blocksPerChunk - 1) / blocksPerChunk, c =>
                {
                    int end = Math.Min(blocks, (c + 1) * blocksPerChunk);
                    for (int b = c * blocksPerChunk; b < end; b++) QuantizeBlock(new ReadOnlySpan<float>(v, n), b, blockSize, format, absmax, codes);
                });
            }
        }
        if (!doubleQuantization) return new BnbFourBitTensor(format, shape, codes, absmax, null, blockSize);
        return new BnbFourBitTensor(format, shape, codes, null, Compress(absmax), blockSize);
    }

    private static void QuantizeBlock(ReadOnlySpan<float> values, int b, int blockSize, QuantFormat format, float[] absmax, byte[] codes)
    {
        int start = b * blockSize, count = Math.Min(blockSize, values.Length - start);
        var block = values.Slice(start, count);
        // kQuantizeBlockwise: max from −FLT_MAX, then x·(1/absmax); an all-zero block gives 0·∞ = NaN, which both
        // decision trees send to code 0 (as the CUDA kernel does).
        float max = float.MinValue;
        foreach (float x in block) max = MathF.Max(max, MathF.Abs(x));
        absmax[b] = max;
        float inverse = 1f / max;
        for (int j = 0; j < count; j += 2)
        {
            byte hi = CodeOf(format, block[j] * inverse);
            // An odd tail is padded with 0 (the kernel loads past the end as 0).
            byte lo = CodeOf(format, j + 1 < count ? block[j + 1] * inverse : 0f * inverse);
            codes[(start + j) / 2] = (byte)((hi << 4) | lo);
        }
    }

    /// <summary>
    /// offset = mean(absmax) (f32 of the exact mean; torch's reduction may round its last bit differently), then
    /// quantize_blockwise(absmax − offset, blocksize=256) with the signed dynamic map.
    /// </summary>
    public static NestedStatistics Compress(ReadOnlySpan<float> absmax)
    {
        double sum = 0;
        foreach (float a in absmax) sum += a;
        float offset = (float)(sum / absmax.Length);
        var centred = new float[absmax.Length];
        for (int i = 0; i < centred.Length; i++) centred[i] = absmax[i] - offset;
        var code = BnbDynamicMap.Signed.ToArray();
        var q = BnbBlockwise.Quantize(centred, code, 256, out var absmax2);
        return new NestedStatistics(q, absmax2, code, offset);
    }

    /// <summary>The f32 absmax of every block: stored, or code[q]·absmax2[b/256] then + offset (two f32 roundings, as bnb).</summary>
    public float[] BlockAbsmax()
    {
        if (Absmax is not null) return Absmax;
        var n = Nested!;
        var result = new float[Blocks];
        for (int b = 0; b < result.Length; b++)
        {
            float scaled = n.Code[n.Codes[b]] * n.Absmax2[b / n.BlockSize];
            result[b] = scaled + n.Offset;
        }
        return result;
    }

    /// <summary>bnb's dequantize_4bit in f32: code[nibble]·absmax[block].</summary>
    public float[] Dequantize()
    {
        var absmax = BlockAbsmax();
        var book = QuantCodebooks.For(Format);
        var x = new float[Length];
        for (long i = 0; i < Length; i++)
        {
            byte packed = Codes[i >> 1];
            int code = (i & 1) == 0 ? packed >> 4 : packed & 0x0F;
            x[i] = book[code] * absmax[i / BlockSize];
        }
        return x;
    }

    /// <summary>The code of one scaled value (bnb's decision trees).</summary>
    public static byte CodeOf(QuantFormat format, float x) => format switch
    {
        QuantFormat.Nf4 => Nf4Code(x),
        QuantFormat.Fp4 => Fp4Code(x),
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "not a 4-bit format"),
    };

    /// <summary>dQuantizeNF4: thresholds are the midpoints between neighbouring NF4 codes; x on a threshold takes the lower code.</summary>
    public static byte Nf4Code(float x)
    {
        if (x > 0.03979014977812767f)
        {
            if (x > 0.3893125355243683f)
            {
                if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? (byte)0b1111 : (byte)0b1110;
                return x > 0.5016634166240692f ? (byte)0b1101 : (byte)0b1100;
            }
            if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? (byte)0b1011 : (byte)0b1010;
            return x > 0.1202552504837513f ? (byte)0b1001 : (byte)0b1000;
        }
        if (x > -0.33967943489551544f)
        {
            if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? (byte)0b0111 : (byte)0b0110;
            return x > -0.23460740596055984f ? (byte)0b0101 : (byte)0b0100;
        }
        if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? (byte)0b0011 : (byte)0b0010;
        return x > -0.8480964004993439f ? (byte)0b0001 : (byte)0b0000;
    }

    /// <summary>dQuantizeFP4: sign bit from x &lt; 0, then a tree on |x| over the midpoints of {0, 0.0625, 2, 3, 4, 6, 8, 12}/12.</summary>
    public static byte Fp4Code(float x)
    {
        int sign = x < 0 ? 0b1000 : 0;
        x = MathF.Abs(x);
        int code;
        if (x > 0.29166667f)
            code = x > 0.583333f ? (x > 0.8333333f ? 0b0011 : 0b0010) : (x > 0.4166667f ? 0b0101 : 0b0100);
        else
            code = x > 0.0859375f ? (x > 0.20833333f ? 0b0111 : 0b0110) : (x > 0.00260417f ? 0b0001 : 0b0000);
        return (byte)(code + sign);
    }
}
