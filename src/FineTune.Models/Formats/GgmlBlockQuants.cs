using System.Runtime.CompilerServices;

namespace FineTune.Models;

// ggml's 32-value block formats, each as quantize_row_*_ref writes it. The f16 scale comes first; Q4_0 and Q5_0
// store value j of a block in the low nibble of byte j and value j + 16 in its high nibble.

/// <summary>
/// Q4_0: d (f16) then 16 bytes of 4-bit levels q ∈ 0 … 15, value = d·(q − 8). d = m / −8 where m is the value of
/// largest magnitude (with its sign), so m itself lands exactly on level 0.
/// </summary>
public readonly struct Q4_0 : IGgmlBlockFormat
{
    public const int BlockSize = 32;
    public const int BlockBytes = 2 + BlockSize / 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        float max = GgmlQuants.SignedMax(v, out _);
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        GgmlQuants.WriteFp16(y, d);
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            // C's (int8_t) cast truncates toward zero; x·id + 8.5 lies in [0.5, 16.5].
            int q0 = Math.Min(15, (int)(v[j] * id + 8.5f));
            int q1 = Math.Min(15, (int)(v[j + BlockSize / 2] * id + 8.5f));
            y[2 + j] = (byte)(q0 | q1 << 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y);
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            o[j] = ((y[2 + j] & 0x0F) - 8) * d;
            o[j + BlockSize / 2] = ((y[2 + j] >> 4) - 8) * d;
        }
    }
}

/// <summary>
/// Q5_0: d (f16), the fifth bits qh (u32, bit j for value j), then 16 bytes of low nibbles; q ∈ 0 … 31,
/// value = d·(q − 16), d = m / −16.
/// </summary>
public readonly struct Q5_0 : IGgmlBlockFormat
{
    public const int BlockSize = 32;
    public const int BlockBytes = 2 + 4 + BlockSize / 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        float max = GgmlQuants.SignedMax(v, out _);
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        GgmlQuants.WriteFp16(y, d);
        uint qh = 0;
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            int q0 = Math.Min(31, (int)(v[j] * id + 16.5f));
            int q1 = Math.Min(31, (int)(v[j + BlockSize / 2] * id + 16.5f));
            y[6 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + BlockSize / 2);
        }
        BitConverter.TryWriteBytes(y[2..], qh);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y);
        uint qh = BitConverter.ToUInt32(y[2..]);
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            o[j] = (((y[6 + j] & 0x0F) | h0) - 16) * d;
            o[j + BlockSize / 2] = (((y[6 + j] >> 4) | h1) - 16) * d;
        }
    }
}

/// <summary>
/// Q5_1: d and m (f16), qh (u32), 16 bytes of low nibbles; q ∈ 0 … 31, value = d·q + m with m = min and
/// d = (max − min)/31. llama.cpp's fallback for Q5_K when a row is not a multiple of 256.
/// </summary>
public readonly struct Q5_1 : IGgmlBlockFormat
{
    public const int BlockSize = 32;
    public const int BlockBytes = 2 + 2 + 4 + BlockSize / 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (var t in v)
        {
            if (t < min) min = t;
            if (t > max) max = t;
        }
        float d = (max - min) / 31;
        float id = d != 0 ? 1.0f / d : 0.0f;
        GgmlQuants.WriteFp16(y, d);
        GgmlQuants.WriteFp16(y[2..], min);
        uint qh = 0;
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            int q0 = (byte)(int)((v[j] - min) * id + 0.5f);
            int q1 = (byte)(int)((v[j + BlockSize / 2] - min) * id + 0.5f);
            y[8 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + BlockSize / 2);
        }
        BitConverter.TryWriteBytes(y[4..], qh);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y), m = GgmlQuants.ReadFp16(y[2..]);
        uint qh = BitConverter.ToUInt32(y[4..]);
        for (int j = 0; j < BlockSize / 2; ++j)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            o[j] = ((y[8 + j] & 0x0F) | h0) * d + m;
            o[j + BlockSize / 2] = ((y[8 + j] >> 4) | h1) * d + m;
        }
    }
}

/// <summary>
/// ggml's Q8_0: blocks of 32 values stored as d (f16) followed by 32 signed bytes q, value ≈ d·q, with
/// d = max|x| / 127 and q = round(x / d) (round half away from zero, as C's roundf).
/// </summary>
public readonly struct Q8_0 : IGgmlBlockFormat
{
    public const int BlockSize = 32;
    public const int BlockBytes = 2 + BlockSize;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        float amax = 0;
        foreach (var t in v)
            amax = Math.Max(amax, Math.Abs(t));
        float d = amax / 127f;
        float id = d != 0 ? 1f / d : 0f;
        GgmlQuants.WriteFp16(y, d);
        for (int i = 0; i < BlockSize; i++)
            y[2 + i] = (byte)(sbyte)MathF.Round(v[i] * id, MidpointRounding.AwayFromZero);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y);
        for (int i = 0; i < BlockSize; i++)
            o[i] = (sbyte)y[2 + i] * d;
    }
}
