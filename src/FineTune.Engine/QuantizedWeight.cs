namespace FineTune.Engine;

/// <summary>
/// How a frozen weight is stored: bitsandbytes' 4-bit NF4 / FP4 (blocks with an absmax), LLM.int8 rows, or FP8 E4M3
/// with one per-tensor scale (products on Hopper's FP8 tensor cores, <see cref="IBackend.Fp8MatMul"/>).
/// </summary>
public enum QuantFormat
{
    Nf4,
    Fp4,
    Int8,
    Fp8E4M3,
}

/// <summary>
/// The double-quantized absmax of a 4-bit weight (bitsandbytes' compress_statistics): the block absmax minus
/// <see cref="Offset"/> (their mean), blockwise 8-bit with blocks of <see cref="BlockSize"/> and the 256-entry
/// <see cref="Code"/> (bnb's signed dynamic map); absmax_b = Code[q_b]·Absmax2[b / BlockSize] + Offset, each
/// operation rounded to f32 on its own (bnb runs them as two tensor ops, never one fused multiply-add).
/// </summary>
/// <param name="Absmax2">F32 [ceil(blocks / BlockSize)], the absmax of each block of the centred absmax.</param>
/// <param name="Code">F32 [256].</param>
public sealed record NestedAbsmax(Tensor Absmax2, Tensor Code, float Offset, int BlockSize = 256);

/// <summary>
/// A frozen [Rows, Cols] weight held quantized on a backend. Byte data (packed codes, int8 values, 8-bit absmax codes)
/// sits in I32 tensors of ceil(bytes / 4) elements, read as bytes: the engine's element types stay F32/BF16/I32.
/// 4-bit: Codes holds Rows·Cols/2 bytes, element 2i in the high nibble of byte i and 2i+1 in the low one (bnb's order);
/// Absmax is F32 [blocks] of <see cref="BlockSize"/> elements, or, when <see cref="Nested"/>, I32-held u8 codes [blocks].
/// Int8: Codes holds Rows·Cols signed bytes, Absmax is F32 [Rows] (bnb's SCB), w = c·(SCB·(1/127)).
/// Fp8E4M3: Codes holds the Rows·Cols E4M3 codes of W row-major, <see cref="Transposed"/> those of Wᵀ (Cols·Rows, row-major:
/// cuBLASLt's FP8 products read both operands along the reduced dimension, so dx = dy·W needs Wᵀ stored), Absmax is F32 [1]
/// holding 1/s with s = 448/amax(|W|), w = decode(c)·(1/s).
/// </summary>
public sealed record QuantizedWeight(QuantFormat Format, int Rows, int Cols, Tensor Codes, Tensor Absmax, NestedAbsmax? Nested = null,
    int BlockSize = 64, Tensor? Transposed = null)
{
    public long Length => (long)Rows * Cols;
    public long Blocks => Format switch
    {
        QuantFormat.Int8 => Rows,
        QuantFormat.Fp8E4M3 => 1,
        _ => (Length + BlockSize - 1) / BlockSize,
    };

    /// <summary>Bytes the weight occupies on the device (codes, absmax and nested statistics; the shared code book not counted).</summary>
    public long DeviceBytes => Codes.Length * 4 + Absmax.Length * 4 + (Nested is { } n ? n.Absmax2.Length * 4 : 0) + (Transposed?.Length ?? 0) * 4;

    /// <summary>I32 elements that hold <paramref name="bytes"/> bytes.</summary>
    public static int WordsFor(long bytes) => checked((int)((bytes + 3) / 4));
}

/// <summary>The 4-bit code books of bitsandbytes (csrc/kernels.cu: nf4_dequantization_lut, fp4_dequantization_lut with the sign bit).</summary>
public static class QuantCodebooks
{
    /// <summary>NF4 (QLoRA): normal quantiles scaled to [−1, 1], code i → value.</summary>
    public static ReadOnlySpan<float> Nf4 =>
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>
    /// FP4 (e2m1, bias 3, max 12, divided by 12): bit 3 is the sign, bits 0–2 index
    /// {0, 0.0625, 8, 12, 4, 6, 2, 3}/12; code 8 is −0.
    /// </summary>
    public static ReadOnlySpan<float> Fp4 =>
    [
        0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
        -0.0f, -0.005208333333f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f,
    ];

    /// <summary>The code book of a 4-bit format.</summary>
    public static ReadOnlySpan<float> For(QuantFormat format) => format switch
    {
        QuantFormat.Nf4 => Nf4,
        QuantFormat.Fp4 => Fp4,
        _ => throw new ArgumentOutOfRangeException(nameof(format), format, "not a 4-bit format"),
    };
}
