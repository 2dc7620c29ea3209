namespace FineTune.Engine.Cuda;

// Launchers of Cuda/Kernels/fp8.cu and the FP8 products of frozen weights (fp8: true) on cuBLASLt.
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
            _dev.Blas.GemmFp8(m, n, k, block, format == Fp8Format.E4M3 ? GpuDType.E4M3 : GpuDType.E5M2, scaleInv,
                P(weight), GpuDType.E4M3, P(w.Absmax), P(c), c.Cols, c.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32,
                1f, accumulate ? 1f : 0f, _dev.Stream, fastAccum: Fp8FastAccumulation && !inputGradient);
            if (_dev.Profiling) _dev.Mark(inputGradient ? "gemm fp8 (input gradient)" : "gemm fp8");
        }
        finally { _dev.Free(block); }
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
            for (int i = 0; i < ws.Count; i++)
            {
                var c = cs[i];
                _dev.Blas.GemmFp8(m, ws[i].Rows, k, block, GpuDType.E4M3, scaleInv, P(ws[i].Codes), GpuDType.E4M3, P(ws[i].Absmax),
                    P(c), c.Cols, c.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32, 1f, accumulate ? 1f : 0f, _dev.Stream,
                    fastAccum: Fp8FastAccumulation);
                if (_dev.Profiling) _dev.Mark("gemm fp8");
            }
        }
        finally { _dev.Free(block); }
    }
}
