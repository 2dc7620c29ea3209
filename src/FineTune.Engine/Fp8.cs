namespace FineTune.Engine;

/// <summary>
/// The two 8-bit float formats of Hopper's tensor cores (OCP FP8): E4M3 ("fn": bias 7, no infinities, 0x7F/0xFF NaN,
/// largest finite 448) for weights and activations, E5M2 (bias 15, largest finite 57344) for gradients.
/// </summary>
public enum Fp8Format
{
    E4M3,
    E5M2,
}

/// <summary>
/// Exact CPU emulation of the device's f32 → FP8 cast (PTX cvt.rn.satfinite.{e4m3,e5m2}x2.f32: round to nearest,
/// ties to even, finite values past the largest saturate to it, NaN stays NaN) and of per-tensor scaling as Transformer
/// Engine's "current scaling" does it: s = max / amax(|x|) (1 when amax is 0 or not finite), q = cast(x·s), and the
/// product reads x ≈ q·(1/s). Every step is one f32 operation, so the CUDA kernels (Cuda/Kernels/fp8.cu) repeat it bit
/// for bit and tests/device/FineTune.DeviceChecks compares them.
/// </summary>
public static class Fp8
{
    /// <summary>The largest finite value of a format: 448 (E4M3) or 57344 (E5M2).</summary>
    public static float Max(Fp8Format format) => format == Fp8Format.E4M3 ? 448f : 57344f;

    static int MantissaBits(Fp8Format f) => f == Fp8Format.E4M3 ? 3 : 2;
    static int MinNormalExponent(Fp8Format f) => f == Fp8Format.E4M3 ? -6 : -14;
    // The code of the largest finite magnitude: E4M3 S.1111.110, E5M2 S.11110.11.
    static int MaxFiniteCode(Fp8Format f) => f == Fp8Format.E4M3 ? 0x7E : 0x7B;

    /// <summary>f32 → FP8 code, rounded to nearest even, saturating (±∞ → ±max), NaN → a NaN code.</summary>
    public static byte Encode(float value, Fp8Format format)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        int sign = (int)(bits >> 24) & 0x80;
        if (float.IsNaN(value)) return (byte)(sign | 0x7F);
        uint magnitude = bits & 0x7FFFFFFF;
        int m = MantissaBits(format), emin = MinNormalExponent(format), maxCode = MaxFiniteCode(format);
        int exponent = (int)(magnitude >> 23) - 127;
        int code;
        if (exponent < emin)
        {
            // Sub-normal range of the target: multiples of 2^(emin − m); a·2^(m − emin) is exact (a power-of-two scale of
            // an f32 far from overflow) and rounding it to an integer gives the code, 2^m being the smallest normal's code.
            float scaled = BitConverter.UInt32BitsToSingle(magnitude) * MathF.ScaleB(1f, m - emin);
            code = (int)MathF.Round(scaled, MidpointRounding.ToEven);
        }
        else
        {
            int drop = 23 - m;
            uint mantissa = magnitude & 0x7FFFFF;
            uint kept = mantissa >> drop, rest = mantissa & ((1u << drop) - 1), half = 1u << (drop - 1);
            code = ((exponent - emin + 1) << m) + (int)kept;
            // A carry out of the mantissa moves into the exponent field, which is the next binade's code.
            if (rest > half || (rest == half && (kept & 1) != 0)) code++;
        }
        return (byte)(sign | Math.Min(code, maxCode));
    }

    /// <summary>FP8 code → its exact f32 value.</summary>
    public static float Decode(byte code, Fp8Format format)
    {
        int m = MantissaBits(format), emin = MinNormalExponent(format);
        int e = (code & 0x7F) >> m, mant = code & ((1 << m) - 1);
        bool negative = (code & 0x80) != 0;
        float v;
        if (format == Fp8Format.E4M3 && e == 15 && mant == 7) v = float.NaN;
        else if (format == Fp8Format.E5M2 && e == 31) v = mant == 0 ? float.PositiveInfinity : float.NaN;
        else if (e == 0) v = MathF.ScaleB(mant, emin - m);
        else v = MathF.ScaleB((1 << m) + mant, e - 1 + emin - m);
        return negative ? -v : v;
    }

    /// <summary>The quantization scale of a tensor whose largest magnitude is <paramref name="amax"/>: max/amax, or 1.</summary>
    public static float Scale(float amax, Fp8Format format) => amax > 0f && float.IsFinite(amax) ? Max(format) / amax : 1f;

    /// <summary>The largest |x| (NaN ignored as the device's fmaxf ignores it).</summary>
    public static float Amax(ReadOnlySpan<float> values)
    {
        float a = 0f;
        foreach (float v in values)
        {
            float x = MathF.Abs(v);
            if (x > a) a = x;
        }
        return a;
    }

    /// <summary>
    /// Per-tensor quantization: codes[i] = cast(values[i]·s) with s = <see cref="Scale"/>(amax); returns 1/s, the
    /// factor that turns codes back into values (cuBLASLt's A/B scale).
    /// </summary>
    public static float Quantize(ReadOnlySpan<float> values, Span<byte> codes, Fp8Format format) =>
        QuantizeWith(values, codes, format, Amax(values));

    /// <summary>
    /// codes[i] = cast(values[i]·s) with s = <see cref="Scale"/>(<paramref name="amax"/>), an amax measured elsewhere
    /// (delayed scaling: the site's history, <see cref="Fp8DelayedScale"/>); values past it saturate. Returns 1/s.
    /// </summary>
    public static float QuantizeWith(ReadOnlySpan<float> values, Span<byte> codes, Fp8Format format, float amax)
    {
        if (codes.Length != values.Length) throw new ArgumentException($"{codes.Length} codes for {values.Length} values");
        float s = Scale(amax, format);
        for (int i = 0; i < values.Length; i++) codes[i] = Encode(values[i] * s, format);
        return 1f / s;
    }

    /// <summary><see cref="Quantize"/> over blocks on the thread pool (a 7B model's weights are 7.6 G values): the same codes.</summary>
    static unsafe float QuantizeParallel(ReadOnlySpan<float> values, byte[] codes, Fp8Format format)
    {
        const int block = 1 << 20;
        long n = values.Length;
        int blocks = (int)((n + block - 1) / block);
        fixed (float* p = values)
        {
            nint at = (nint)p;
            var maxima = new float[blocks];
            Parallel.For(0, blocks, b =>
            {
                long start = (long)b * block;
                maxima[b] = Amax(new ReadOnlySpan<float>((float*)at + start, (int)Math.Min(block, n - start)));
            });
            float amax = 0f;
            foreach (float m in maxima) if (m > amax) amax = m;
            float s = Scale(amax, format);
            Parallel.For(0, blocks, b =>
            {
                long start = (long)b * block, end = Math.Min(n, start + block);
                var v = (float*)at;
                for (long i = start; i < end; i++) codes[i] = Encode(v[i] * s, format);
            });
            return 1f / s;
        }
    }

    /// <summary>
    /// A frozen weight W [rows, cols] as <see cref="QuantFormat.Fp8E4M3"/> holds it: its E4M3 codes row-major, the same
    /// codes of Wᵀ [cols, rows] row-major (for dx = dy·W), and the scale inverse (one per tensor).
    /// </summary>
    public static (byte[] Codes, byte[] Transposed, float ScaleInverse) QuantizeWeight(ReadOnlySpan<float> values, int rows, int cols)
    {
        if (values.Length != (long)rows * cols) throw new ArgumentException($"{values.Length} values for a [{rows}, {cols}] weight");
        var codes = new byte[values.Length];
        float inverse = QuantizeParallel(values, codes, Fp8Format.E4M3);
        var transposed = new byte[codes.Length];
        var c = codes;
        Parallel.For(0, rows, r =>
        {
            for (int j = 0; j < cols; j++) transposed[(long)j * rows + r] = c[(long)r * cols + j];
        });
        return (codes, transposed, inverse);
    }
}
