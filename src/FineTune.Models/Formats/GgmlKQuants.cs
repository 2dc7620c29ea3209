using System.Runtime.CompilerServices;

namespace FineTune.Models;

// ggml's K-quants: super-blocks of 256 values split into 16 or 8 sub-blocks whose scales (and mins) are themselves
// quantized against one f16 super-scale. Each follows quantize_row_*_ref: fit every sub-block, quantize the
// sub-block scales, then re-quantize the values against the scales as stored (so the levels match what a reader
// reconstructs). A sub-block whose stored scale is 0 keeps the levels of its first fit.

/// <summary>
/// Q2_K (84 bytes / 256 values): 16 sub-blocks of 16, value = d·sc·q − dmin·m with q ∈ 0 … 3 and 4-bit sc, m.
/// Layout: scales[16] (sc | m &lt;&lt; 4), qs[64] (four 2-bit levels per byte), d, dmin (f16).
/// </summary>
public readonly struct Q2_K : IGgmlBlockFormat
{
    public const int BlockSize = GgmlQuants.QK_K;
    public const int BlockBytes = 16 + 64 + 2 + 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[BlockSize];
        Span<byte> laux = stackalloc byte[16];
        Span<float> weights = stackalloc float[16];
        Span<float> mins = stackalloc float[16];
        Span<float> scales = stackalloc float[16];
        const float q4scale = 15f;
        var ys = y[..16];
        var qs = y.Slice(16, 64);
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 16; ++j)
        {
            var sub = v.Slice(16 * j, 16);
            for (int l = 0; l < 16; ++l) weights[l] = MathF.Abs(sub[l]);
            scales[j] = GgmlQuants.MakeQkx2Quants(16, 3, sub, weights, L.Slice(16 * j, 16), out mins[j], laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        if (maxScale > 0)
        {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < 16; ++j)
                ys[j] = (byte)GgmlQuants.NearestInt(iscale * scales[j]);
            GgmlQuants.WriteFp16(y[80..], maxScale / q4scale);
        }
        else
        {
            ys.Clear();
            GgmlQuants.WriteFp16(y[80..], 0f);
        }
        if (maxMin > 0)
        {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < 16; ++j)
                ys[j] |= (byte)(GgmlQuants.NearestInt(iscale * mins[j]) << 4);
            GgmlQuants.WriteFp16(y[82..], maxMin / q4scale);
        }
        else
        {
            GgmlQuants.WriteFp16(y[82..], 0f);
        }
        float dAll = GgmlQuants.ReadFp16(y[80..]), dminAll = GgmlQuants.ReadFp16(y[82..]);
        for (int j = 0; j < 16; ++j)
        {
            float d = dAll * (ys[j] & 0xF);
            if (d == 0) continue;
            float dm = dminAll * (ys[j] >> 4);
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, GgmlQuants.NearestInt((v[16 * j + ii] + dm) / d)));
        }
        for (int j = 0; j < BlockSize; j += 128)
            for (int l = 0; l < 32; ++l)
                qs[j / 4 + l] = (byte)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y[80..]), min = GgmlQuants.ReadFp16(y[82..]);
        int k = 0, sc = 0;
        for (int n = 0; n < BlockSize; n += 128)
        {
            var q = y.Slice(16 + n / 4, 32);
            for (int shift = 0; shift < 8; shift += 2)
                for (int half = 0; half < 2; half++)
                {
                    byte s = y[sc++];
                    float dl = d * (s & 0xF), ml = min * (s >> 4);
                    for (int l = 0; l < 16; ++l)
                        o[k++] = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
                }
        }
    }
}

/// <summary>
/// Q3_K (110 bytes / 256 values): 16 sub-blocks of 16, value = d·(sc − 32)·(q − 4) with q ∈ 0 … 7 and 6-bit sc.
/// Layout: hmask[32] (the third bit), qs[64] (the low two bits), scales[12] (6-bit scales, low nibbles then the
/// high two bits), d (f16).
/// </summary>
public readonly struct Q3_K : IGgmlBlockFormat
{
    public const int BlockSize = GgmlQuants.QK_K;
    public const int BlockBytes = 32 + 64 + 12 + 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[BlockSize];
        Span<float> scales = stackalloc float[16];
        var hmask = y[..32];
        var qs = y.Slice(32, 64);
        var ys = y.Slice(96, 12);
        float maxScale = 0, amax = 0;
        for (int j = 0; j < 16; ++j)
        {
            scales[j] = GgmlQuants.MakeQ3Quants(16, 4, v.Slice(16 * j, 16), L.Slice(16 * j, 16));
            float scale = MathF.Abs(scales[j]);
            if (scale > amax) { amax = scale; maxScale = scales[j]; }
        }
        ys.Clear();
        if (maxScale != 0)
        {
            float iscale = -32f / maxScale;
            for (int j = 0; j < 16; ++j)
            {
                // C stores nearest_int into an int8_t before clamping.
                sbyte l = (sbyte)GgmlQuants.NearestInt(iscale * scales[j]);
                l = (sbyte)(Math.Max((sbyte)-32, Math.Min((sbyte)31, l)) + 32);
                if (j < 8) ys[j] = (byte)(l & 0xF);
                else ys[j - 8] |= (byte)((l & 0xF) << 4);
                l >>= 4;
                ys[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
            }
            GgmlQuants.WriteFp16(y[108..], 1 / iscale);
        }
        else
        {
            GgmlQuants.WriteFp16(y[108..], 0f);
        }
        float dAll = GgmlQuants.ReadFp16(y[108..]);
        for (int j = 0; j < 16; ++j)
        {
            int sc = j < 8 ? ys[j] & 0xF : ys[j - 8] >> 4;
            sc = (sbyte)((sc | (((ys[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
            float d = dAll * sc;
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (sbyte)(Math.Max(-4, Math.Min(3, GgmlQuants.NearestInt(v[16 * j + ii] / d))) + 4);
        }
        hmask.Clear();
        // The third bit of values 0–31 goes to bit 0 of hmask[0..31], of values 32–63 to bit 1, and so on.
        int m = 0;
        byte hm = 1;
        for (int j = 0; j < BlockSize; ++j)
        {
            if (L[j] > 3)
            {
                hmask[m] |= hm;
                L[j] -= 4;
            }
            if (++m == BlockSize / 8)
            {
                m = 0;
                hm <<= 1;
            }
        }
        // Every level is now 0 … 3.
        var levels = System.Runtime.InteropServices.MemoryMarshal.Cast<sbyte, byte>(L);
        for (int j = 0; j < BlockSize; j += 128)
            for (int l = 0; l < 32; ++l)
                qs[j / 4 + l] = (byte)(levels[j + l] | (levels[j + l + 32] << 2) | (levels[j + l + 64] << 4) | (levels[j + l + 96] << 6));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        Span<int> scales = stackalloc int[16];
        var ys = y.Slice(96, 12);
        float dAll = GgmlQuants.ReadFp16(y[108..]);
        for (int j = 0; j < 16; ++j)
        {
            int low = j < 8 ? ys[j] & 0xF : ys[j - 8] >> 4;
            scales[j] = (low | (((ys[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        }
        int k = 0, sc = 0;
        byte m = 1;
        for (int n = 0; n < BlockSize; n += 128)
        {
            var q = y.Slice(32 + n / 4, 32);
            for (int shift = 0; shift < 8; shift += 2, m <<= 1)
                for (int half = 0; half < 2; half++)
                {
                    float dl = dAll * scales[sc++];
                    for (int l = 0; l < 16; ++l)
                    {
                        int i = l + 16 * half;
                        o[k++] = dl * (((q[i] >> shift) & 3) - ((y[i] & m) != 0 ? 0 : 4));
                    }
                }
        }
    }
}

/// <summary>
/// Q4_K and Q5_K share their scales: 8 sub-blocks of 32 with 6-bit scale sc and min m, value = d·sc·q − dmin·m.
/// The 12 scale bytes hold sc and m of sub-blocks 0–3 in the low 6 bits of bytes 0–3 and 4–7, and those of
/// sub-blocks 4–7 as nibbles in bytes 8–11 with their top two bits in the spare bits of bytes 0–7.
/// </summary>
internal static class KQuantScales
{
    /// <summary>Fits the 8 sub-blocks (make_qkx2_quants with weights √(mean x²) + |x|) and packs d, dmin and the scales.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FitAndPack(ReadOnlySpan<float> v, Span<byte> y, int nmax, float rmin, float rdelta, int nstep, Span<byte> L)
    {
        Span<byte> laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[8];
        Span<float> scales = stackalloc float[8];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < 8; ++j)
        {
            var sub = v.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int l = 0; l < 32; ++l) sumX2 += sub[l] * sub[l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; ++l) weights[l] = avX + MathF.Abs(sub[l]);
            scales[j] = GgmlQuants.MakeQkx2Quants(32, nmax, sub, weights, L.Slice(32 * j, 32), out mins[j], laux, rmin, rdelta, nstep, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }
        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        var ys = y.Slice(4, 12);
        for (int j = 0; j < 8; ++j)
        {
            // C assigns nearest_int to a uint8_t before MIN(63, ·).
            byte ls = Math.Min((byte)63, (byte)GgmlQuants.NearestInt(invScale * scales[j]));
            byte lm = Math.Min((byte)63, (byte)GgmlQuants.NearestInt(invMin * mins[j]));
            if (j < 4)
            {
                ys[j] = ls;
                ys[j + 4] = lm;
            }
            else
            {
                ys[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                ys[j - 4] |= (byte)((ls >> 4) << 6);
                ys[j - 0] |= (byte)((lm >> 4) << 6);
            }
        }
        GgmlQuants.WriteFp16(y, maxScale / 63f);
        GgmlQuants.WriteFp16(y[2..], maxMin / 63f);
    }

    /// <summary>Re-quantizes each sub-block against its stored scale and min: q = nearest((x + dmin·m) / (d·sc)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Requantize(ReadOnlySpan<float> v, ReadOnlySpan<byte> y, int nmax, Span<byte> L)
    {
        float dAll = GgmlQuants.ReadFp16(y), dminAll = GgmlQuants.ReadFp16(y[2..]);
        var ys = y.Slice(4, 12);
        for (int j = 0; j < 8; ++j)
        {
            GgmlQuants.ScaleMinK4(j, ys, out byte sc, out byte m);
            float d = dAll * sc;
            if (d == 0) continue;
            float dm = dminAll * m;
            for (int ii = 0; ii < 32; ++ii)
                L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, GgmlQuants.NearestInt((v[32 * j + ii] + dm) / d)));
        }
    }
}

/// <summary>
/// Q4_K (144 bytes / 256 values): d, dmin (f16), scales[12], qs[128]; each 64 values share 32 bytes, the first 32
/// values in the low nibbles and the next 32 in the high nibbles. q ∈ 0 … 15.
/// </summary>
public readonly struct Q4_K : IGgmlBlockFormat
{
    public const int BlockSize = GgmlQuants.QK_K;
    public const int BlockBytes = 2 + 2 + 12 + 128;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[BlockSize];
        KQuantScales.FitAndPack(v, y, 15, -1f, 0.1f, 20, L);
        KQuantScales.Requantize(v, y, 15, L);
        var q = y[16..];
        for (int j = 0; j < BlockSize; j += 64)
            for (int l = 0; l < 32; ++l)
                q[j / 2 + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y), min = GgmlQuants.ReadFp16(y[2..]);
        var ys = y.Slice(4, 12);
        for (int j = 0, s = 0; j < BlockSize; j += 64, s += 2)
        {
            var q = y.Slice(16 + j / 2, 32);
            GgmlQuants.ScaleMinK4(s, ys, out byte sc1, out byte m1);
            GgmlQuants.ScaleMinK4(s + 1, ys, out byte sc2, out byte m2);
            float d1 = d * sc1, mm1 = min * m1, d2 = d * sc2, mm2 = min * m2;
            for (int l = 0; l < 32; ++l) o[j + l] = d1 * (q[l] & 0xF) - mm1;
            for (int l = 0; l < 32; ++l) o[j + 32 + l] = d2 * (q[l] >> 4) - mm2;
        }
    }
}

/// <summary>
/// Q5_K (176 bytes / 256 values): d, dmin (f16), scales[12], qh[32] (fifth bits: bit 2k for value l of the k-th
/// group of 64, bit 2k+1 for value l + 32), qs[128] (low nibbles as Q4_K). q ∈ 0 … 31.
/// </summary>
public readonly struct Q5_K : IGgmlBlockFormat
{
    public const int BlockSize = GgmlQuants.QK_K;
    public const int BlockBytes = 2 + 2 + 12 + 32 + 128;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[BlockSize];
        KQuantScales.FitAndPack(v, y, 31, -0.5f, 0.1f, 15, L);
        KQuantScales.Requantize(v, y, 31, L);
        var qh = y.Slice(16, 32);
        var ql = y[48..];
        qh.Clear();
        byte m1 = 1, m2 = 2;
        for (int n = 0; n < BlockSize; n += 64)
        {
            for (int j = 0; j < 32; ++j)
            {
                int l1 = L[n + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                int l2 = L[n + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[n / 2 + j] = (byte)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y), min = GgmlQuants.ReadFp16(y[2..]);
        var ys = y.Slice(4, 12);
        var qh = y.Slice(16, 32);
        byte u1 = 1, u2 = 2;
        for (int j = 0, s = 0; j < BlockSize; j += 64, s += 2, u1 <<= 2, u2 <<= 2)
        {
            var ql = y.Slice(48 + j / 2, 32);
            GgmlQuants.ScaleMinK4(s, ys, out byte sc1, out byte m1);
            GgmlQuants.ScaleMinK4(s + 1, ys, out byte sc2, out byte m2);
            float d1 = d * sc1, mm1 = min * m1, d2 = d * sc2, mm2 = min * m2;
            for (int l = 0; l < 32; ++l) o[j + l] = d1 * ((ql[l] & 0xF) + ((qh[l] & u1) != 0 ? 16 : 0)) - mm1;
            for (int l = 0; l < 32; ++l) o[j + 32 + l] = d2 * ((ql[l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - mm2;
        }
    }
}

/// <summary>
/// Q6_K (210 bytes / 256 values): 16 sub-blocks of 16, value = d·sc·(q − 32) with q ∈ 0 … 63 and int8 sc.
/// Layout: ql[128] (low nibbles), qh[64] (high two bits), scales[16] (int8), d (f16).
/// </summary>
public readonly struct Q6_K : IGgmlBlockFormat
{
    public const int BlockSize = GgmlQuants.QK_K;
    public const int BlockBytes = 128 + 64 + 16 + 2;
    static int IGgmlBlockFormat.Values => BlockSize;
    static int IGgmlBlockFormat.Bytes => BlockBytes;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[BlockSize];
        Span<float> scales = stackalloc float[16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < 16; ++ib)
        {
            float scale = GgmlQuants.MakeQxQuants(16, 32, v.Slice(16 * ib, 16), L.Slice(16 * ib, 16));
            scales[ib] = scale;
            float absScale = MathF.Abs(scale);
            if (absScale > maxAbsScale) { maxAbsScale = absScale; maxScale = scale; }
        }
        if (maxAbsScale < GgmlQuants.GroupMaxEps)
        {
            y.Clear();
            return;
        }
        var ys = y.Slice(192, 16);
        float iscale = -128f / maxScale;
        GgmlQuants.WriteFp16(y[208..], 1 / iscale);
        for (int ib = 0; ib < 16; ++ib)
            ys[ib] = (byte)(sbyte)Math.Min(127, GgmlQuants.NearestInt(iscale * scales[ib]));
        float dAll = GgmlQuants.ReadFp16(y[208..]);
        for (int j = 0; j < 16; ++j)
        {
            float d = dAll * (sbyte)ys[j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (sbyte)(Math.Max(-32, Math.Min(31, GgmlQuants.NearestInt(v[16 * j + ii] / d))) + 32);
        }
        var ql = y[..128];
        var qh = y.Slice(128, 64);
        for (int j = 0; j < BlockSize; j += 128)
            for (int l = 0; l < 32; ++l)
            {
                int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[j / 2 + l] = (byte)(q1 | (q3 << 4));
                ql[j / 2 + l + 32] = (byte)(q2 | (q4 << 4));
                qh[j / 4 + l] = (byte)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o)
    {
        float d = GgmlQuants.ReadFp16(y[208..]);
        for (int n = 0; n < BlockSize; n += 128)
        {
            var ql = y.Slice(n / 2, 64);
            var qh = y.Slice(128 + n / 4, 32);
            var sc = y.Slice(192 + n / 16, 8);
            for (int l = 0; l < 32; ++l)
            {
                int s = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                o[n + l] = d * (sbyte)sc[s] * q1;
                o[n + l + 32] = d * (sbyte)sc[s + 2] * q2;
                o[n + l + 64] = d * (sbyte)sc[s + 4] * q3;
                o[n + l + 96] = d * (sbyte)sc[s + 6] * q4;
            }
        }
    }
}
