namespace FineTune.Engine.Cpu;

// FP8 frozen weights, emulated exactly: the casts are Fp8's (the CUDA kernels' bits), the product is the f32 product of
// the dequantized operands, which is what the FP8 tensor cores compute up to the order of f32 summation.
public sealed unsafe partial class CpuBackend
{
    public void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format)
    {
        if (codes.Length * 4 < x.Length) throw new ArgumentException($"FP8 codes {codes} cannot hold {x.Length} bytes");
        var values = FS(x);
        var bytes = new Span<byte>(Bytes(codes), checked((int)x.Length));
        F(scaleInverse)[0] = Fp8.Quantize(values, bytes, format);
    }

    public void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false, Fp8DelayedScale? delayed = null)
    {
        if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
        int k = inputGradient ? w.Rows : w.Cols;
        if (a.Cols != k || c.Cols != (inputGradient ? w.Cols : w.Rows) || a.Rows != c.Rows)
            throw new ArgumentException($"FP8 product shapes do not agree: c {c} = a {a}·W{(inputGradient ? "" : "ᵀ")} [{w.Rows}, {w.Cols}]");
        using var scratch = new CpuBuffer(this, (a.Length + w.Length) * 4 + 4);
        var aq = new Tensor(scratch, 0, DType.F32, [a.Rows, a.Cols], "fp8.activation");
        var wq = new Tensor(scratch, a.Length, DType.F32, [w.Rows, w.Cols], "fp8.weight");
        var format = inputGradient ? Fp8Format.E5M2 : Fp8Format.E4M3;
        var codes = new byte[a.Length];
        float aInv = Cast(FS(a), codes, format, delayed);
        float* pa = F(aq);
        for (long i = 0; i < codes.Length; i++) pa[i] = Fp8.Decode(codes[i], format) * aInv;
        Dequantize(wq, w);
        MatMul(c, aq, false, wq, !inputGradient, 1f, accumulate);
    }

    public void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null)
    {
        if (cs.Count != ws.Count) throw new ArgumentException($"{cs.Count} outputs for {ws.Count} FP8 weights");
        // The cast of a is a function of a (and the site's scale, fixed through the pass) alone: each product casting it
        // again gives the same bits, and records the same amax.
        for (int i = 0; i < cs.Count; i++) Fp8MatMul(cs[i], a, ws[i], inputGradient: false, accumulate, delayed);
    }

    /// <summary>The cast of a product's input: current scaling, or the delayed site's (recording the input's amax).</summary>
    private float Cast(ReadOnlySpan<float> values, byte[] codes, Fp8Format format, Fp8DelayedScale? delayed)
    {
        if (delayed is not { } d) return Fp8.Quantize(values, codes, format);
        var site = new Span<float>(F(d.State), 2);
        float amax = Fp8.Amax(values);
        float inverse = Fp8.QuantizeWith(values, codes, format, d.Ready ? site[0] : amax);
        site[1] = MathF.Max(site[1], amax);
        return inverse;
    }

    public void Fp8AdvanceHistories(Tensor states, int sites, int history)
    {
        int stride = Fp8DelayedScale.Stride(history);
        if (states.DType != DType.F32 || states.Length < (long)sites * stride)
            throw new ArgumentException($"FP8 histories {states} cannot hold {sites} sites of {stride} values");
        float* p = F(states);
        for (int i = 0; i < sites; i++) Fp8DelayedScale.Advance(new Span<float>(p + (long)i * stride, stride), history);
    }

    private void DequantizeFp8(float* o, QuantizedWeight w)
    {
        byte* codes = Bytes(w.Codes);
        float inv = F(w.Absmax)[0];
        ForRange(w.Rows, 16, (r0, r1) =>
        {
            for (long i = (long)r0 * w.Cols; i < (long)r1 * w.Cols; i++) o[i] = Fp8.Decode(codes[i], Fp8Format.E4M3) * inv;
        });
    }
}
