namespace FineTune.Engine.Cuda;

/// <summary>bfloat16 ↔ float on the host: the upper 16 bits of an IEEE float, rounded to nearest even (as torch).</summary>
public static class Bf16
{
    public static ushort FromFloat(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7FFFFFFF) > 0x7F800000) return (ushort)((u >> 16) | 0x40); // NaN stays a quiet NaN
        u += 0x7FFF + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    public static float ToFloat(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    public static void FromFloat(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = FromFloat(src[i]);
    }

    /// <summary>Converts in 1 Mi-element chunks over all cores (a 7B model's weights are billions of values).</summary>
    public static unsafe void FromFloatParallel(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        const int Chunk = 1 << 20;
        if (src.Length <= Chunk) { FromFloat(src, dst); return; }
        int chunks = (src.Length + Chunk - 1) / Chunk;
        fixed (float* ps = src)
        fixed (ushort* pd = dst)
        {
            float* s = ps; ushort* d = pd; int n = src.Length;
            Parallel.For(0, chunks, c =>
            {
                int start = c * Chunk, len = Math.Min(Chunk, n - start);
                FromFloat(new ReadOnlySpan<float>(s + start, len), new Span<ushort>(d + start, len));
            });
        }
    }

    public static void ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = ToFloat(src[i]);
    }
}
