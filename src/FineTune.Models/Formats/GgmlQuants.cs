using System.Runtime.CompilerServices;

namespace FineTune.Models;

/// <summary>
/// One of ggml's block formats: a block of <see cref="Values"/> floats ↔ <see cref="Bytes"/> bytes. Each format holds
/// only its block code; the loop over a row's blocks is <see cref="GgmlQuants"/>' (one loop for every type).
/// </summary>
public interface IGgmlBlockFormat
{
    static abstract int Values { get; }
    static abstract int Bytes { get; }
    static abstract void QuantizeBlock(ReadOnlySpan<float> v, Span<byte> y);
    static abstract void DequantizeBlock(ReadOnlySpan<byte> y, Span<float> o);
}

/// <summary>
/// ggml's block formats: the sizes of each type and one entry point that quantizes or dequantizes whole rows.
/// Every quantizer is the reference one (ggml's <c>quantize_row_*_ref</c>, what <c>llama-quantize</c> writes without
/// an importance matrix), reproduced bit for bit: the same float operations in the same order, f16 scales rounded to
/// nearest even, and ggml's <c>nearest_int</c>. Rows are independent, so a tensor is quantized row-parallel and the
/// bytes do not depend on the thread count.
/// </summary>
public static class GgmlQuants
{
    /// <summary>Values per block: 1 for the float types, 32 for Q4_0/Q5_0/Q5_1/Q8_0, 256 (QK_K) for the K-quants.</summary>
    public static int BlockSize(GgufTensorType type) => type switch
    {
        GgufTensorType.F32 or GgufTensorType.F16 or GgufTensorType.BF16 => 1,
        GgufTensorType.Q4_0 or GgufTensorType.Q5_0 or GgufTensorType.Q5_1 or GgufTensorType.Q8_0 => 32,
        GgufTensorType.Q2_K or GgufTensorType.Q3_K or GgufTensorType.Q4_K or GgufTensorType.Q5_K or GgufTensorType.Q6_K => QK_K,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>Bytes per block (ggml's type_size).</summary>
    public static int BlockBytes(GgufTensorType type) => type switch
    {
        GgufTensorType.F32 => 4,
        GgufTensorType.F16 or GgufTensorType.BF16 => 2,
        GgufTensorType.Q4_0 => Q4_0.BlockBytes,
        GgufTensorType.Q5_0 => Q5_0.BlockBytes,
        GgufTensorType.Q5_1 => Q5_1.BlockBytes,
        GgufTensorType.Q8_0 => Q8_0.BlockBytes,
        GgufTensorType.Q2_K => Q2_K.BlockBytes,
        GgufTensorType.Q3_K => Q3_K.BlockBytes,
        GgufTensorType.Q4_K => Q4_K.BlockBytes,
        GgufTensorType.Q5_K => Q5_K.BlockBytes,
        GgufTensorType.Q6_K => Q6_K.BlockBytes,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, null),
    };

    /// <summary>The K-quants' super-block: 256 values.</summary>
    public const int QK_K = 256;

    /// <summary>True for the block-quantized types (ggml_is_quantized).</summary>
    public static bool IsQuantized(GgufTensorType type) => BlockSize(type) > 1;

    /// <summary>Bytes of one row of <paramref name="rowLength"/> values; the row must hold whole blocks.</summary>
    public static long RowBytes(GgufTensorType type, long rowLength)
    {
        int block = BlockSize(type);
        if (rowLength % block != 0)
            throw new ArgumentException($"{type} stores blocks of {block} values; a row of {rowLength} is not a multiple of {block}");
        return rowLength / block * BlockBytes(type);
    }

    /// <summary>
    /// Quantizes <paramref name="x"/> (rows of <paramref name="rowLength"/> values) into <paramref name="destination"/>,
    /// as ggml_quantize_chunk(type, x, dst, 0, rows, rowLength, imatrix: NULL) does. Large tensors run row-parallel.
    /// </summary>
    public static unsafe void Quantize(GgufTensorType type, ReadOnlySpan<float> x, long rowLength, Span<byte> destination)
    {
        if (rowLength <= 0 || x.Length % rowLength != 0)
            throw new ArgumentException($"{x.Length} values do not split into rows of {rowLength}", nameof(x));
        long rows = x.Length / rowLength, rowBytes = RowBytes(type, rowLength);
        if (destination.Length != rows * rowBytes)
            throw new ArgumentException($"{type}: {rows} rows of {rowLength} take {rows * rowBytes} bytes, the destination holds {destination.Length}", nameof(destination));
        const long ValuesPerTask = 1 << 18;
        long rowsPerTask = Math.Max(1, ValuesPerTask / rowLength);
        long tasks = (rows + rowsPerTask - 1) / rowsPerTask;
        if (tasks <= 1)
        {
            QuantizeBlocks(type, x, destination);
            return;
        }
        fixed (float* xp = x)
        fixed (byte* dp = destination)
        {
            nint src = (nint)xp, dst = (nint)dp;
            Parallel.For(0L, tasks, t =>
            {
                long first = t * rowsPerTask, count = Math.Min(rowsPerTask, rows - first);
                var xs = new ReadOnlySpan<float>((float*)src + first * rowLength, checked((int)(count * rowLength)));
                var ds = new Span<byte>((byte*)dst + first * rowBytes, checked((int)(count * rowBytes)));
                QuantizeBlocks(type, xs, ds);
            });
        }
    }

    /// <summary>Quantizes whole blocks, one after another (a row of ggml's <c>quantize_row_*_ref</c>).</summary>
    public static void QuantizeBlocks(GgufTensorType type, ReadOnlySpan<float> x, Span<byte> destination)
    {
        switch (type)
        {
            case GgufTensorType.F32: FloatConversions.Encode(x, SafetensorsDType.F32, destination); break;
            case GgufTensorType.F16: FloatConversions.Encode(x, SafetensorsDType.F16, destination); break;
            case GgufTensorType.BF16: FloatConversions.Encode(x, SafetensorsDType.BF16, destination); break;
            case GgufTensorType.Q4_0: QuantizeEach<Q4_0>(x, destination); break;
            case GgufTensorType.Q5_0: QuantizeEach<Q5_0>(x, destination); break;
            case GgufTensorType.Q5_1: QuantizeEach<Q5_1>(x, destination); break;
            case GgufTensorType.Q8_0: QuantizeEach<Q8_0>(x, destination); break;
            case GgufTensorType.Q2_K: QuantizeEach<Q2_K>(x, destination); break;
            case GgufTensorType.Q3_K: QuantizeEach<Q3_K>(x, destination); break;
            case GgufTensorType.Q4_K: QuantizeEach<Q4_K>(x, destination); break;
            case GgufTensorType.Q5_K: QuantizeEach<Q5_K>(x, destination); break;
            case GgufTensorType.Q6_K: QuantizeEach<Q6_K>(x, destination); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }

    /// <summary>Decodes blocks of <paramref name="type"/> into floats (ggml's <c>dequantize_row_*</c>).</summary>
    public static void Dequantize(GgufTensorType type, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (type)
        {
            case GgufTensorType.F32: FloatConversions.Decode(source, SafetensorsDType.F32, destination); break;
            case GgufTensorType.F16: FloatConversions.Decode(source, SafetensorsDType.F16, destination); break;
            case GgufTensorType.BF16: FloatConversions.Decode(source, SafetensorsDType.BF16, destination); break;
            case GgufTensorType.Q4_0: DequantizeEach<Q4_0>(source, destination); break;
            case GgufTensorType.Q5_0: DequantizeEach<Q5_0>(source, destination); break;
            case GgufTensorType.Q5_1: DequantizeEach<Q5_1>(source, destination); break;
            case GgufTensorType.Q8_0: DequantizeEach<Q8_0>(source, destination); break;
            case GgufTensorType.Q2_K: DequantizeEach<Q2_K>(source, destination); break;
            case GgufTensorType.Q3_K: DequantizeEach<Q3_K>(source, destination); break;
            case GgufTensorType.Q4_K: DequantizeEach<Q4_K>(source, destination); break;
            case GgufTensorType.Q5_K: DequantizeEach<Q5_K>(source, destination); break;
            case GgufTensorType.Q6_K: DequantizeEach<Q6_K>(source, destination); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, null);
        }
    }

    /// <summary>The row loop every block format shares: block b of <paramref name="x"/> into block b of <paramref name="destination"/>.</summary>
    private static void QuantizeEach<TFormat>(ReadOnlySpan<float> x, Span<byte> destination) where TFormat : IGgmlBlockFormat
    {
        int values = TFormat.Values, bytes = TFormat.Bytes;
        if (x.Length % values != 0)
            throw new ArgumentException($"{typeof(TFormat).Name} quantizes whole blocks of {values} values; got {x.Length}");
        for (int b = 0; b < x.Length / values; b++)
            TFormat.QuantizeBlock(x.Slice(b * values, values), destination.Slice(b * bytes, bytes));
    }

    private static void DequantizeEach<TFormat>(ReadOnlySpan<byte> source, Span<float> destination) where TFormat : IGgmlBlockFormat
    {
        int values = TFormat.Values, bytes = TFormat.Bytes;
        for (int b = 0; b < destination.Length / values; b++)
            TFormat.DequantizeBlock(source.Slice(b * bytes, bytes), destination.Slice(b * values, values));
    }

    /// <summary>
    /// ggml's nearest_int: adding 1.5·2²³ puts the rounded integer in the low mantissa bits (round half to even,
    /// valid for |x| ≤ 2²²).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int NearestInt(float x)
    {
        float v = x + 12582912f;
        return (BitConverter.SingleToInt32Bits(v) & 0x007fffff) - 0x00400000;
    }

    /// <summary>GGML_FP32_TO_FP16: round to nearest even; NaN becomes the quiet NaN 0x7E00 with its sign.</summary>
    internal static ushort ToFp16(float f)
    {
        if (float.IsNaN(f))
            return (ushort)(((BitConverter.SingleToUInt32Bits(f) >> 16) & 0x8000) | 0x7E00);
        return BitConverter.HalfToUInt16Bits((Half)f);
    }

    internal static float FromFp16(ushort h) => (float)BitConverter.UInt16BitsToHalf(h);

    internal static void WriteFp16(Span<byte> destination, float value)
    {
        ushort h = ToFp16(value);
        destination[0] = (byte)h;
        destination[1] = (byte)(h >> 8);
    }

    internal static float ReadFp16(ReadOnlySpan<byte> source) => FromFp16((ushort)(source[0] | source[1] << 8));

    /// <summary>The value of largest magnitude with its sign (the first of equal magnitudes); <paramref name="amax"/> its magnitude.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float SignedMax(ReadOnlySpan<float> x, out float amax)
    {
        float max = 0;
        amax = 0;
        foreach (var t in x)
        {
            float ax = MathF.Abs(t);
            if (ax > amax) { amax = ax; max = t; }
        }
        return max;
    }

    /// <summary>Values below this are treated as an all-zero group (GROUP_MAX_EPS).</summary>
    internal const float GroupMaxEps = 1e-15f;

    /// <summary>
    /// make_qx_quants: a symmetric scale for n values with levels −nmax … nmax−1 (stored + nmax). rmse_type 1 weights
    /// the error by x² and tries 18 scales around nmax/max, keeping the one that maximises (Σw·x·l)²/Σw·l², i.e.
    /// the least weighted squared error. Returns the scale.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float MakeQxQuants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L)
    {
        float max = SignedMax(x[..n], out float amax);
        if (amax < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)(l + nmax);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; ++step)
        {
            if (step == 0)
                continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; ++i)
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i]))));
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    /// <summary>
    /// make_q3_quants with rmse: levels −nmax … nmax−1 from nmax/max, then up to 5 passes of coordinate descent that
    /// move one level at a time while (Σw·x·l)²/Σw·l² grows (w = x²). L holds the levels + nmax; returns the scale.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float MakeQ3Quants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L)
    {
        float max = SignedMax(x[..n], out float amax);
        if (amax < GroupMaxEps)
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(iscale * x[i])));
            L[i] = (sbyte)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int attempt = 0; attempt < 5; ++attempt)
        {
            int changed = 0;
            for (int i = 0; i < n; ++i)
            {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0)
                {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int newL = Math.Max(-nmax, Math.Min(nmax - 1, NearestInt(x[i] * sl2 / slx)));
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (sbyte)newL;
                            sumlx = slx;
                            suml2 = sl2;
                            ++changed;
                        }
                    }
                }
            }
            if (changed == 0)
                break;
        }
        for (int i = 0; i < n; ++i)
            L[i] += (sbyte)nmax;
        return suml2 > 0f ? sumlx / suml2 : 0f;
    }

    /// <summary>
    /// make_qkx2_quants: an affine fit x ≈ scale·l + min (min ≤ 0, levels 0 … nmax). Starts from (max − min)/nmax, then
    /// for nstep+1 trial scales (rmin + rdelta·k + nmax)/(max − min) solves the weighted least-squares scale and min of
    /// those levels and keeps the fit with the least weighted error (|·| when useMad, else squared). Returns the
    /// scale; <paramref name="theMin"/> receives −min.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float MakeQkx2Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L,
        out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; ++i)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            L[..n].Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; ++i)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        for (int step = 0; step <= nstep; ++step)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; ++i)
            {
                int l = Math.Max(0, Math.Min(nmax, NearestInt(iscale * (x[i] - min))));
                Laux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; ++i)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    Laux[..n].CopyTo(L);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes of Q4_K/Q5_K.</summary>
    internal static void ScaleMinK4(int j, ReadOnlySpan<byte> q, out byte d, out byte m)
    {
        if (j < 4)
        {
            d = (byte)(q[j] & 63);
            m = (byte)(q[j + 4] & 63);
        }
        else
        {
            d = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
        }
    }
}
