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
        var codes = new byte[a.Length];
        float aInv = Cast(FS(a), codes, inputGradient ? Fp8Format.E5M2 : Fp8Format.E4M3, delayed);
        ProductOfCodes(c, codes, aInv, a.Rows, a.Cols, w, inputGradient, accumulate);
    }

    public void Fp8MatMulCodes(Tensor c, Fp8Operand a, QuantizedWeight w, bool inputGradient, bool accumulate = false)
    {
        if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
        int m = c.Rows, k = inputGradient ? w.Rows : w.Cols;
        if (c.Cols != (inputGradient ? w.Cols : w.Rows))
            throw new ArgumentException($"FP8 product shapes do not agree: c {c} = a [{m}, {k}]·W{(inputGradient ? "" : "ᵀ")} [{w.Rows}, {w.Cols}]");
        CheckOperand(a, (long)m * k);
        ProductOfCodes(c, new ReadOnlySpan<byte>(Bytes(a.Codes), checked(m * k)), F(a.ScaleInverse)[0], m, k, w, inputGradient, accumulate);
    }

    /// <summary>c (+)= (codes·aInv)·W(ᵀ): the f32 product of the dequantized operands, what the tensor cores sum.</summary>
    private void ProductOfCodes(Tensor c, ReadOnlySpan<byte> codes, float aInv, int rows, int cols, QuantizedWeight w, bool inputGradient, bool accumulate)
    {
        using var scratch = new CpuBuffer(this, ((long)rows * cols + w.Length) * 4 + 4);
        var aq = new Tensor(scratch, 0, DType.F32, [rows, cols], "fp8.activation");
        var wq = new Tensor(scratch, (long)rows * cols, DType.F32, [w.Rows, w.Cols], "fp8.weight");
        var format = inputGradient ? Fp8Format.E5M2 : Fp8Format.E4M3;
        float* pa = F(aq);
        for (int i = 0; i < codes.Length; i++) pa[i] = Fp8.Decode(codes[i], format) * aInv;
        Dequantize(wq, w);
        MatMul(c, aq, false, wq, !inputGradient, 1f, accumulate);
    }

    // The fused casts are the composition itself here: the output as written, then the delayed cast of Fp8MatMul.
    public void SwiGluFp8(Tensor h, Tensor gate, Tensor up, Fp8Operand hCodes, Fp8DelayedScale site)
    {
        CheckFusedCast(hCodes, h, site);
        SwiGlu(h, gate, up);
        CastInto(hCodes, h, Fp8Format.E4M3, site);
    }

    public void SwiGluBackwardFp8(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, Fp8Operand dgateCodes, Fp8DelayedScale dgateSite,
        Fp8Operand dupCodes, Fp8DelayedScale dupSite)
    {
        CheckFusedCast(dgateCodes, dgate, dgateSite);
        CheckFusedCast(dupCodes, dup, dupSite);
        SwiGluBackward(dgate, dup, dh, gate, up);
        CastInto(dgateCodes, dgate, Fp8Format.E5M2, dgateSite);
        CastInto(dupCodes, dup, Fp8Format.E5M2, dupSite);
    }

    public void RmsNormFp8(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes, Fp8DelayedScale site)
    {
        CheckFusedCast(yCodes, y, site);
        RmsNorm(y, rstd, x, weight, eps, weightOffset);
        CastInto(yCodes, y, Fp8Format.E4M3, site);
    }

    public void ResidualRmsNormFp8(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes,
        Fp8DelayedScale site)
    {
        CheckFusedCast(yCodes, y, site);
        ResidualRmsNorm(resid, y, rstd, a, b, weight, eps, weightOffset);
        CastInto(yCodes, y, Fp8Format.E4M3, site);
    }

    private void CastInto(Fp8Operand into, Tensor x, Fp8Format format, Fp8DelayedScale site) =>
        F(into.ScaleInverse)[0] = Cast(FS(x), new Span<byte>(Bytes(into.Codes), checked((int)x.Length)), format, site);

    private static void CheckFusedCast(Fp8Operand codes, Tensor x, Fp8DelayedScale site)
    {
        // A site's first pass scales currently (its amax first, then the cast): that takes the unfused path.
        if (!site.Ready) throw new ArgumentException($"a cast fused into its producer needs a delayed-scaling site already advanced; {site.State} is not");
        CheckOperand(codes, x.Length);
    }

    private static void CheckOperand(Fp8Operand a, long values)
    {
        if (a.Codes.DType != DType.I32 || a.Codes.Length * 4 < values || a.ScaleInverse.DType != DType.F32 || a.ScaleInverse.Length < 1)
            throw new ArgumentException($"FP8 operand {a.Codes} (scale inverse {a.ScaleInverse}) cannot hold {values} codes");
    }

    public void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null)
    {
        if (cs.Count != ws.Count) throw new ArgumentException($"{cs.Count} outputs for {ws.Count} FP8 weights");
        // The cast of a is a function of a (and the site's scale, fixed through the pass) alone: each product casting it
        // again gives the same bits, and records the same amax.
        for (int i = 0; i < cs.Count; i++) Fp8MatMul(cs[i], a, ws[i], inputGradient: false, accumulate, delayed);
    }

    public void Fp8MatMulSharedCodes(IReadOnlyList<Tensor> cs, Fp8Operand a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false)
    {
        if (cs.Count != ws.Count) throw new ArgumentException($"{cs.Count} outputs for {ws.Count} FP8 weights");
        for (int i = 0; i < cs.Count; i++)
        {
            if (ws[i].Cols != ws[0].Cols || cs[i].Rows != cs[0].Rows)
                throw new ArgumentException($"FP8 products of one input: c {cs[i]} = a·Wᵀ [{ws[i].Rows}, {ws[i].Cols}] reads another input than c {cs[0]} = a·Wᵀ [{ws[0].Rows}, {ws[0].Cols}]");
            Fp8MatMulCodes(cs[i], a, ws[i], inputGradient: false, accumulate);
        }
    }

    /// <summary>The cast of a product's input: current scaling, or the delayed site's (recording the input's amax).</summary>
    private float Cast(ReadOnlySpan<float> values, Span<byte> codes, Fp8Format format, Fp8DelayedScale? delayed)
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
