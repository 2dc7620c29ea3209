namespace FineTune.Engine.Cpu;

// Quantized frozen weights (QLoRA) and the 8-bit optimizer states: the reference the CUDA kernels
// (Cuda/Kernels/quant.cu) are checked against bit for bit. Every step is one f32 operation rounded on its own, in
// the order bitsandbytes runs them, so the CUDA kernels can repeat it exactly (they use __fmul_rn/__fadd_rn).
public sealed unsafe partial class CpuBackend
{
    private byte* Bytes(Tensor t)
    {
        if (t.DType != DType.I32) throw new ArgumentException($"CPU backend: byte tensor '{t.Name}' is {t.DType}, expected I32-held bytes");
        return Ptr(t);
    }

    public void Dequantize(Tensor dst, QuantizedWeight w)
    {
        if (dst.Length != w.Length) throw new ArgumentException($"dequantize of {w.Rows}×{w.Cols} into {dst}");
        float* o = F(dst);
        if (w.Format == QuantFormat.Fp8E4M3) { DequantizeFp8(o, w); return; }
        byte* codes = Bytes(w.Codes);
        if (w.Format == QuantFormat.Int8)
        {
            float* scb = F(w.Absmax);
            int cols = w.Cols;
            ForRange(w.Rows, 16, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++)
                {
                    // bnb's MatMul8bitLt backward: CB.to(dtype) · (SCB · (1/127)).
                    float s = scb[r] * (1f / 127f);
                    sbyte* c = (sbyte*)codes + (long)r * cols;
                    float* row = o + (long)r * cols;
                    for (int j = 0; j < cols; j++) row[j] = c[j] * s;
                }
            });
            return;
        }
        var book = QuantCodebooks.For(w.Format).ToArray();
        float[] absmax = BlockAbsmax(w);
        long n = w.Length;
        int bs = w.BlockSize;
        int blocks = absmax.Length;
        fixed (float* lut = book)
        fixed (float* am = absmax)
        {
            float* pl = lut, pa = am;
            ForRange(blocks, 64, (b0, b1) =>
            {
                for (int b = b0; b < b1; b++)
                {
                    long start = (long)b * bs, end = Math.Min(n, start + bs);
                    float a = pa[b];
                    for (long i = start; i < end; i++)
                    {
                        byte packed = codes[i >> 1];
                        int code = (i & 1) == 0 ? packed >> 4 : packed & 0x0F;
                        o[i] = pl[code] * a;
                    }
                }
            });
        }
    }

    /// <summary>The f32 absmax per block: stored, or (double quantization) code[q]·absmax2[b/256] + offset.</summary>
    private float[] BlockAbsmax(QuantizedWeight w)
    {
        var result = new float[w.Blocks];
        if (w.Nested is not { } nested)
        {
            new ReadOnlySpan<float>(F(w.Absmax), result.Length).CopyTo(result);
            return result;
        }
        byte* q = Bytes(w.Absmax);
        float* code = F(nested.Code), absmax2 = F(nested.Absmax2);
        for (int b = 0; b < result.Length; b++)
        {
            float scaled = code[q[b]] * absmax2[b / nested.BlockSize];
            result[b] = scaled + nested.Offset;
        }
        return result;
    }

    public void AdamW8bit(Tensor param, Tensor grad, Tensor m8, Tensor v8, Tensor absmaxM, Tensor absmaxV, Tensor codeM, Tensor codeV,
        Tensor? computeCopy, Tensor? gradNormSquared, AdamWStep step)
    {
        SameLength(param, grad);
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"AdamW steps count from 1 (bias correction 1 − β^t), got {step.Step}");
        int n = checked((int)param.Length);
        int blocks = (n + Optimizer8bit.BlockSize - 1) / Optimizer8bit.BlockSize;
        if (absmaxM.Length != blocks || absmaxV.Length != blocks)
            throw new ArgumentException($"8-bit AdamW of {n} values needs {blocks} absmax per state");
        float* pp = F(param), pg = F(grad), am = F(absmaxM), av = F(absmaxV), cm = F(codeM), cv = F(codeV);
        byte* qm = Bytes(m8), qv = Bytes(v8);
        float* pc = computeCopy is null ? null : F(computeCopy);
        var c = Optimizer8bit.Constants(step, gradNormSquared is null ? 0f : F(gradNormSquared)[0]);
        ForRange(blocks, 16, (b0, b1) =>
        {
            Span<float> s1 = stackalloc float[Optimizer8bit.BlockSize];
            Span<float> s2 = stackalloc float[Optimizer8bit.BlockSize];
            for (int b = b0; b < b1; b++)
            {
                int start = b * Optimizer8bit.BlockSize;
                float max1 = float.MinValue, max2 = float.MinValue;
                for (int j = 0; j < Optimizer8bit.BlockSize; j++)
                {
                    int i = start + j;
                    // bnb's kernel loads past the end as g = 0, m code 128, v code 0, and they join the block max.
                    float g = i < n ? pg[i] : 0f;
                    byte c1 = i < n ? qm[i] : (byte)128, c2 = i < n ? qv[i] : (byte)0;
                    float m, v;
                    if (float.IsFinite(g))
                    {
                        g *= c.GradScale;
                        v = cv[c2] * av[b];
                        v = v * c.Beta2 + (c.OneMinusBeta2 * g) * g;
                        m = cm[c1] * am[b];
                        m = m * c.Beta1 + c.OneMinusBeta1 * g;
                    }
                    else { m = 0f; v = 0f; }
                    s1[j] = m; s2[j] = v;
                    max1 = MathF.Max(max1, MathF.Abs(m));
                    max2 = MathF.Max(max2, MathF.Abs(v));
                }
                am[b] = max1; av[b] = max2;
                int count = Math.Min(Optimizer8bit.BlockSize, n - start);
                for (int j = 0; j < count; j++)
                {
                    int i = start + j;
                    if (float.IsFinite(pg[i]))
                    {
                        float denom = MathF.Sqrt(s2[j]) + c.EpsTimesCorrection2;
                        float p = pp[i] + c.StepSize * (s1[j] / denom);
                        if (c.Decay != 1f) p *= c.Decay;
                        pp[i] = p;
                        if (pc != null) pc[i] = p;
                    }
                    qm[i] = Optimizer8bit.QuantizeSigned(cm, s1[j] / max1, s1[j]);
                    qv[i] = Optimizer8bit.Quantize(cv, s2[j] / max2, signed: false);
                }
            }
        });
    }
}
