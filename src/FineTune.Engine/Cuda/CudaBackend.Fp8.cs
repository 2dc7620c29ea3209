namespace FineTune.Engine.Cuda;

// Launchers of Cuda/Kernels/fp8.cu, the FP8 products of frozen weights (fp8: true) on cuBLASLt, and SwiGLU and the
// RMSNorms with their output's cast fused in (swiglu.cu's and rmsnorm.cu's *_fp8_v8, fp8_scaling: delayed).
public sealed partial class CudaBackend
{
    /// <summary>FP8 tensor-core products are offered on Hopper (compute capability 9.x), the architecture they are checked on.</summary>
    public string? Fp8Refusal => _dev.Info.ComputeMajor == 9 ? null
        : $"fp8 needs a Hopper GPU (sm_90); {Name} is {_dev.Info.Name} ({_dev.Info.Architecture}). Remove fp8: true or train on an H100/H200";

    /// <summary>
    /// Forward FP8 products accumulate in the tensor cores' fast mode (cuBLASLt FAST_ACCUM), the input gradients
    /// (E5M2 output gradients) with f32 promotion, as Transformer Engine's recipes do. FINETUNE_FP8_FAST_ACCUM=0 turns
    /// the fast mode off everywhere.
    /// </summary>
    public bool Fp8FastAccumulation { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_FP8_FAST_ACCUM") != "0";

    static int FormatCode(Fp8Format f) => f == Fp8Format.E4M3 ? 0 : 1;

    public void QuantizeFp8(Tensor codes, Tensor scaleInverse, Tensor x, Fp8Format format)
    {
        Need(codes, DType.I32); Need(scaleInverse, DType.F32);
        if (codes.Length * 4 < x.Length) throw new ArgumentException($"FP8 codes {codes} cannot hold {x.Length} bytes");
        ulong amax = _dev.Allocate(4);
        try { Quantize(P(codes), P(scaleInverse), amax, x, format, null); }
        finally { _dev.Free(amax); }
    }

    // Current scaling: amax → scale → cast, all on the stream (amax is a 4-byte device word the caller owns); a delayed
    // site not yet advanced also records amax. Delayed scaling: the one-launch cast from the site's history amax.
    void Quantize(ulong codes, ulong scaleInverse, ulong amax, Tensor x, Fp8Format format, Fp8DelayedScale? delayed)
    {
        bool v8 = V8(8, x) && (codes & 7) == 0;
        long n = v8 ? x.Length / 8 : x.Length;
        if (delayed is { } d)
        {
            Need(d.State, DType.F32);
            if (d.State.Length < Fp8DelayedScale.Stride(1)) throw new ArgumentException($"FP8 delayed-scaling site {d.State} holds no history");
            if (d.Ready)
            {
                if (v8) LaunchFlat("fp8.cu", "fp8_quantize_delayed_v8", n, [codes, scaleInverse, P(x), n, P(d.State), FormatCode(format)]);
                else LaunchFlat("fp8.cu", "fp8_quantize_delayed", n, [codes, scaleInverse, P(x), Dt(x), n, P(d.State), FormatCode(format)]);
                return;
            }
        }
        ulong record = delayed is { } r ? P(r.State) + 4 : 0UL;
        _dev.Zero(amax, 4);
        if (v8)
        {
            LaunchFlat("fp8.cu", "fp8_amax_v8", n, [P(x), n, amax]);
            LaunchFlat("fp8.cu", "fp8_quantize_v8", n, [codes, scaleInverse, P(x), n, amax, FormatCode(format), record]);
            return;
        }
        LaunchFlat("fp8.cu", "fp8_amax", n, [P(x), Dt(x), n, amax]);
        LaunchFlat("fp8.cu", "fp8_quantize", n, [codes, scaleInverse, P(x), Dt(x), n, amax, FormatCode(format), record]);
    }

    public void Fp8AdvanceHistories(Tensor states, int sites, int history)
    {
        Need(states, DType.F32);
        if (history < 1 || states.Length < (long)sites * Fp8DelayedScale.Stride(history))
            throw new ArgumentException($"FP8 histories {states} cannot hold {sites} sites of {Fp8DelayedScale.Stride(history)} values");
        if (sites == 0) return;
        Launch("fp8.cu", "fp8_history_advance", (sites, 1, 1), 128, [P(states), sites, history]);
        if (_dev.Profiling) _dev.Mark("fp8 history advance");
    }

    public void Fp8MatMul(Tensor c, Tensor a, QuantizedWeight w, bool inputGradient, bool accumulate = false, Fp8DelayedScale? delayed = null)
    {
        if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
        if (Fp8Refusal is { } why) throw new NotSupportedException(why);
        // Forward y = x·Wᵀ reads W [N, K] along K; the input gradient dx = dy·W reads Wᵀ [K, N] along N.
        int k = inputGradient ? w.Rows : w.Cols, n = inputGradient ? w.Cols : w.Rows, m = a.Rows;
        if (a.Cols != k || c.Cols != n || c.Rows != m)
            throw new ArgumentException($"FP8 product shapes do not agree: c {c} = a {a}·W{(inputGradient ? "" : "ᵀ")} [{w.Rows}, {w.Cols}]");
        var weight = inputGradient ? w.Transposed ?? throw new ArgumentException($"FP8 weight [{w.Rows}, {w.Cols}] has no transposed codes for dx = dy·W") : w.Codes;
        Need(weight, DType.I32); Need(w.Absmax, DType.F32);
        if (m == 0) return;
        var format = inputGradient ? Fp8Format.E5M2 : Fp8Format.E4M3;
        // One block: a's codes, then (256-aligned) amax and a's scale inverse.
        long codeBytes = ((long)m * k + 255) / 256 * 256;
        ulong block = _dev.Allocate(codeBytes + 256);
        try
        {
            ulong amax = block + (ulong)codeBytes, scaleInv = amax + 16;
            Quantize(block, scaleInv, amax, a, format, delayed);
            GemmFromCodes(c, block, scaleInv, w, weight, inputGradient, accumulate);
        }
        finally { _dev.Free(block); }
    }

    public void Fp8MatMulCodes(Tensor c, Fp8Operand a, QuantizedWeight w, bool inputGradient, bool accumulate = false)
    {
        if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
        if (Fp8Refusal is { } why) throw new NotSupportedException(why);
        int k = inputGradient ? w.Rows : w.Cols, n = inputGradient ? w.Cols : w.Rows, m = c.Rows;
        if (c.Cols != n)
            throw new ArgumentException($"FP8 product shapes do not agree: c {c} = a [{m}, {k}]·W{(inputGradient ? "" : "ᵀ")} [{w.Rows}, {w.Cols}]");
        NeedOperand(a, (long)m * k);
        var weight = inputGradient ? w.Transposed ?? throw new ArgumentException($"FP8 weight [{w.Rows}, {w.Cols}] has no transposed codes for dx = dy·W") : w.Codes;
        Need(weight, DType.I32); Need(w.Absmax, DType.F32);
        if (m == 0) return;
        GemmFromCodes(c, P(a.Codes), P(a.ScaleInverse), w, weight, inputGradient, accumulate);
    }

    /// <summary>
    /// c (+)= a·Wᵀ (forward, a E4M3) or a·W (input gradient, a E5M2, <paramref name="weight"/> = Wᵀ's codes) from a's codes
    /// and scale inverse on the device: the one cuBLASLt call of <see cref="Fp8MatMul"/> and <see cref="Fp8MatMulCodes"/>,
    /// fast accumulation in the forward only.
    /// </summary>
    void GemmFromCodes(Tensor c, ulong codes, ulong scaleInverse, QuantizedWeight w, Tensor weight, bool inputGradient, bool accumulate)
    {
        int k = inputGradient ? w.Rows : w.Cols, n = inputGradient ? w.Cols : w.Rows;
        _dev.Blas.GemmFp8(c.Rows, n, k, codes, inputGradient ? GpuDType.E5M2 : GpuDType.E4M3, scaleInverse,
            P(weight), GpuDType.E4M3, P(w.Absmax), P(c), c.Cols, c.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32,
            1f, accumulate ? 1f : 0f, _dev.Stream, fastAccum: Fp8FastAccumulation && !inputGradient);
        if (_dev.Profiling) _dev.Mark(inputGradient ? "gemm fp8 (input gradient)" : "gemm fp8");
    }

    public void SwiGluFp8(Tensor h, Tensor gate, Tensor up, Fp8Operand hCodes, Fp8DelayedScale site)
    {
        SameLength(h, gate); SameLength(h, up);
        NeedFusedCast(hCodes, h, site);
        if (V8(8, h, gate, up) && (P(hCodes.Codes) & 7) == 0)
        {
            long n8 = h.Length / 8;
            LaunchFlat("swiglu.cu", "swiglu_forward_fp8_v8", n8, [P(h), P(hCodes.Codes), P(hCodes.ScaleInverse), P(site.State), P(gate), P(up), n8]);
            return;
        }
        // Other dtypes and alignments: the composition itself.
        SwiGlu(h, gate, up);
        Quantize(P(hCodes.Codes), P(hCodes.ScaleInverse), 0UL, h, Fp8Format.E4M3, site);
    }

    public void SwiGluBackwardFp8(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, Fp8Operand dgateCodes, Fp8DelayedScale dgateSite,
        Fp8Operand dupCodes, Fp8DelayedScale dupSite)
    {
        SameLength(dgate, dh); SameLength(dup, dh); SameLength(gate, dh); SameLength(up, dh);
        NeedFusedCast(dgateCodes, dgate, dgateSite);
        NeedFusedCast(dupCodes, dup, dupSite);
        if (V8(8, dgate, dup, dh, gate, up) && (P(dgateCodes.Codes) & 7) == 0 && (P(dupCodes.Codes) & 7) == 0)
        {
            long n8 = dh.Length / 8;
            LaunchFlat("swiglu.cu", "swiglu_backward_fp8_v8", n8, [P(dgate), P(dup), P(dh), P(gate), P(up), n8,
                P(dgateCodes.Codes), P(dgateCodes.ScaleInverse), P(dgateSite.State), P(dupCodes.Codes), P(dupCodes.ScaleInverse), P(dupSite.State)]);
            return;
        }
        SwiGluBackward(dgate, dup, dh, gate, up);
        Quantize(P(dgateCodes.Codes), P(dgateCodes.ScaleInverse), 0UL, dgate, Fp8Format.E5M2, dgateSite);
        Quantize(P(dupCodes.Codes), P(dupCodes.ScaleInverse), 0UL, dup, Fp8Format.E5M2, dupSite);
    }

    public void RmsNormFp8(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes, Fp8DelayedScale site)
    {
        int c = checked((int)weight.Length);
        int rows = checked((int)(x.Length / c));
        SameLength(y, x); Need(rstd, DType.F32);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        NeedFusedCast(yCodes, y, site);
        if (rows > 0 && V8(c, y, x, weight) && (P(yCodes.Codes) & 7) == 0)
        {
            Launch("rmsnorm.cu", "rmsnorm_forward_fp8_v8", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(y), P(rstd), P(yCodes.Codes), P(yCodes.ScaleInverse), P(site.State), P(x), P(weight), rows, c, eps, weightOffset]);
            return;
        }
        // Other dtypes and alignments: the composition itself.
        RmsNorm(y, rstd, x, weight, eps, weightOffset);
        Quantize(P(yCodes.Codes), P(yCodes.ScaleInverse), 0UL, y, Fp8Format.E4M3, site);
    }

    public void ResidualRmsNormFp8(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset, Fp8Operand yCodes,
        Fp8DelayedScale site)
    {
        int c = checked((int)weight.Length);
        int rows = checked((int)(a.Length / c));
        SameLength(resid, a); SameLength(b, a); SameLength(y, a); Need(rstd, DType.F32);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        NeedFusedCast(yCodes, y, site);
        if (rows > 0 && V8(c, resid, y, a, b, weight) && (P(yCodes.Codes) & 7) == 0)
        {
            Launch("rmsnorm.cu", "residual_rmsnorm_forward_fp8_v8", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(resid), P(y), P(rstd), P(yCodes.Codes), P(yCodes.ScaleInverse), P(site.State), P(a), P(b), P(weight), rows, c, eps, weightOffset]);
            return;
        }
        ResidualRmsNorm(resid, y, rstd, a, b, weight, eps, weightOffset);
        Quantize(P(yCodes.Codes), P(yCodes.ScaleInverse), 0UL, y, Fp8Format.E4M3, site);
    }

    static void NeedOperand(Fp8Operand a, long values)
    {
        Need(a.Codes, DType.I32); Need(a.ScaleInverse, DType.F32);
        if (a.Codes.Length * 4 < values || a.ScaleInverse.Length < 1)
            throw new ArgumentException($"FP8 operand {a.Codes} (scale inverse {a.ScaleInverse}) cannot hold {values} codes");
    }

    static void NeedFusedCast(Fp8Operand codes, Tensor x, Fp8DelayedScale site)
    {
        // A site's first pass scales currently (its amax, then the cast: two passes), which only the unfused path does.
        if (!site.Ready) throw new ArgumentException($"a cast fused into its producer needs a delayed-scaling site already advanced; {site.State} is not");
        Need(site.State, DType.F32);
        if (site.State.Length < Fp8DelayedScale.Stride(1)) throw new ArgumentException($"FP8 delayed-scaling site {site.State} holds no history");
        NeedOperand(codes, x.Length);
    }

    public void Fp8MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false, Fp8DelayedScale? delayed = null)
    {
        if (cs.Count != ws.Count) throw new ArgumentException($"{cs.Count} outputs for {ws.Count} FP8 weights");
        if (Fp8Refusal is { } why) throw new NotSupportedException(why);
        int m = a.Rows, k = a.Cols;
        for (int i = 0; i < ws.Count; i++)
        {
            var w = ws[i];
            if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
            if (w.Cols != k || cs[i].Cols != w.Rows || cs[i].Rows != m)
                throw new ArgumentException($"FP8 product shapes do not agree: c {cs[i]} = a {a}·Wᵀ [{w.Rows}, {w.Cols}]");
            Need(w.Codes, DType.I32); Need(w.Absmax, DType.F32);
        }
        if (m == 0 || ws.Count == 0) return;
        long codeBytes = ((long)m * k + 255) / 256 * 256;
        ulong block = _dev.Allocate(codeBytes + 256);
        try
        {
            ulong amax = block + (ulong)codeBytes, scaleInv = amax + 16;
            Quantize(block, scaleInv, amax, a, Fp8Format.E4M3, delayed);
            for (int i = 0; i < ws.Count; i++) GemmFromCodes(cs[i], block, scaleInv, ws[i], ws[i].Codes, inputGradient: false, accumulate);
        }
        finally { _dev.Free(block); }
    }

    public void Fp8MatMulSharedCodes(IReadOnlyList<Tensor> cs, Fp8Operand a, IReadOnlyList<QuantizedWeight> ws, bool accumulate = false)
    {
        if (cs.Count != ws.Count) throw new ArgumentException($"{cs.Count} outputs for {ws.Count} FP8 weights");
        if (Fp8Refusal is { } why) throw new NotSupportedException(why);
        if (ws.Count == 0) return;
        int m = cs[0].Rows, k = ws[0].Cols;
        for (int i = 0; i < ws.Count; i++)
        {
            var w = ws[i];
            if (w.Format != QuantFormat.Fp8E4M3) throw new ArgumentException($"FP8 product with a {w.Format} weight");
            if (w.Cols != k || cs[i].Cols != w.Rows || cs[i].Rows != m)
                throw new ArgumentException($"FP8 product shapes do not agree: c {cs[i]} = a [{m}, {k}]·Wᵀ [{w.Rows}, {w.Cols}]");
            Need(w.Codes, DType.I32); Need(w.Absmax, DType.F32);
        }
        NeedOperand(a, (long)m * k);
        if (m == 0) return;
        // Fp8MatMulShared's products on codes cast already: the same calls.
        for (int i = 0; i < ws.Count; i++) GemmFromCodes(cs[i], P(a.Codes), P(a.ScaleInverse), ws[i], ws[i].Codes, inputGradient: false, accumulate);
    }
}
