namespace FineTune.Models.Quantization;

/// <summary>
/// bitsandbytes' blockwise 8-bit quantization with a 256-entry code (functional.quantize_blockwise, the CUDA kernel
/// kQuantizeBlockwise&lt;General8bit&gt;): per block absmax = max |x|, codes = dQuantize(code, x·(1/absmax)).
/// </summary>
public static class BnbBlockwise
{
    /// <summary>Codes and the f32 absmax of each block of <paramref name="blockSize"/> values.</summary>
    public static byte[] Quantize(ReadOnlySpan<float> values, ReadOnlySpan<float> code, int blockSize, out float[] absmax)
    {
        if (code.Length != 256) throw new ArgumentException($"the code has {code.Length} entries, expected 256");
        int blocks = (values.Length + blockSize - 1) / blockSize;
        absmax = new float[blocks];
        var q = new byte[values.Length];
        for (int b = 0; b < blocks; b++)
        {
            var block = values.Slice(b * blockSize, Math.Min(blockSize, values.Length - b * blockSize));
            float max = float.MinValue;
            foreach (float x in block) max = MathF.Max(max, MathF.Abs(x));
            absmax[b] = max;
            float inverse = 1f / max;
            for (int j = 0; j < block.Length; j++) q[b * blockSize + j] = Code(code, block[j] * inverse);
        }
        return q;
    }

    /// <summary>x = code[q]·absmax[block] in f32.</summary>
    public static float[] Dequantize(ReadOnlySpan<byte> q, ReadOnlySpan<float> absmax, ReadOnlySpan<float> code, int blockSize)
    {
        var x = new float[q.Length];
        for (int i = 0; i < q.Length; i++) x[i] = code[q[i]] * absmax[i / blockSize];
        return x;
    }

    /// <summary>
    /// bnb's dQuantize&lt;0&gt;: a 7-step binary search from code[127], then the nearer of the final pivot and the last
    /// neighbour passed, by comparing with their midpoint (a value on the midpoint takes the lower code).
    /// </summary>
    public static byte Code(ReadOnlySpan<float> code, float x)
    {
        int pivot = 127, upperPivot = 255, lowerPivot = 0;
        float lower = -1f, upper = 1f;
        float val = code[pivot];
        for (int i = 64; i > 0; i >>= 1)
        {
            if (x > val) { lowerPivot = pivot; lower = val; pivot += i; }
            else { upperPivot = pivot; upper = val; pivot -= i; }
            val = code[pivot];
        }
        if (upperPivot == 255) upper = code[upperPivot];
        if (lowerPivot == 0) lower = code[lowerPivot];
        if (x > val) return (byte)(x > (upper + val) * 0.5f ? upperPivot : pivot);
        return (byte)(x < (lower + val) * 0.5f ? lowerPivot : pivot);
    }
}
