namespace FineTune.Engine.Cuda;

public sealed partial class CudaBackend
{
    /// <summary>
    /// C = alpha·op(A)·op(B) (+ C) through cuBLASLt. A and B must share a dtype for cuBLASLt; when one is F32 and
    /// the other BF16 (an F32 master against BF16 activations), the F32 one is rounded to BF16 in a scratch block.
    /// F32·F32 runs in exact fp32 (no TF32), so the F32 path matches the CPU backend to ~1e-6.
    /// </summary>
    public void MatMul(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha = 1f, bool accumulate = false) =>
        MatMulCore(c, a, transA, b, transB, alpha, accumulate, null);

    /// <summary>C = alpha·op(A)·op(B) + bias[n], the bias added in cuBLASLt's epilogue where C and the bias are one dtype.</summary>
    public void MatMulBias(Tensor c, Tensor a, bool transA, Tensor b, bool transB, Tensor bias, float alpha = 1f)
    {
        if (bias.Length != c.Cols) throw new ArgumentException($"bias {bias} does not match C {c}'s {c.Cols} columns");
        if (bias.DType != c.DType) { MatMul(c, a, transA, b, transB, alpha); AddBias(c, bias); return; }
        MatMulCore(c, a, transA, b, transB, alpha, false, bias);
    }

    void MatMulCore(Tensor c, Tensor a, bool transA, Tensor b, bool transB, float alpha, bool accumulate, Tensor? bias)
    {
        int m = c.Rows, n = c.Cols;
        int k = transA ? a.Rows : a.Cols;
        int am = transA ? a.Cols : a.Rows;
        int bk = transB ? b.Cols : b.Rows, bn = transB ? b.Rows : b.Cols;
        if (am != m || bk != k || bn != n)
            throw new ArgumentException($"matmul shapes do not agree: C {c} = op(A {a}, T={transA})·op(B {b}, T={transB})");
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            if (!accumulate) Zero(c);
            if (bias is not null) AddBias(c, bias);
            return;
        }
        Dt(c);
        if (bias is null && Gemv(c, a, transA, b, transB, m, n, k, alpha, accumulate)) return;

        ulong pa = P(a), pb = P(b);
        ulong scratchA = 0, scratchB = 0;
        var abType = a.DType;
        try
        {
            if (a.DType != b.DType || (a.DType == DType.F32 && c.DType == DType.BF16))
            {
                abType = DType.BF16;
                if (a.DType != DType.BF16) pa = scratchA = CastToBf16(a);
                if (b.DType != DType.BF16) pb = scratchB = CastToBf16(b);
            }
            _dev.Blas.Gemm(transA, transB, m, n, k, pa, a.Cols, pb, b.Cols, P(c), c.Cols,
                abType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32, c.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32,
                alpha, accumulate ? 1f : 0f, _dev.Stream, bias: bias is null ? 0 : P(bias), epilogue: bias is null ? GemmEpilogue.None : GemmEpilogue.Bias);
            // Rank-sized: r (or g·r for a grouped LoRA product, up to 3r) is one of the three dimensions. "expand": r is the
            // reduction (s·xa·Bᵀ, dxa·A: they write a [tokens, features] output); "reduce": r is an output dimension and the
            // long reduction is over tokens or features (x·Aᵀ, dB, dxa, dA: they read one).
            if (_dev.Profiling) _dev.Mark(k <= 64 ? "gemm (lora, rank-sized: expand)" : Math.Min(m, n) <= 64 ? "gemm (lora, rank-sized: reduce)" : "gemm");
        }
        finally
        {
            // Stream order makes immediate reuse safe: later work on the block runs after this product.
            if (scratchA != 0) _dev.Free(scratchA);
            if (scratchB != 0) _dev.Free(scratchB);
        }
    }

    ulong CastToBf16(Tensor t)
    {
        ulong p = _dev.Allocate(t.Length * 2);
        LaunchFlat("elementwise.cu", "ft_copy", t.Length, [p, 1, P(t), Dt(t), t.Length]);
        return p;
    }

    /// <summary>y = x·Wᵀ + bias with the bias added in cuBLASLt's epilogue (no second pass over y).</summary>
    public void LinearWithBias(Tensor y, Tensor x, Tensor weight, Tensor bias)
    {
        if (x.DType != weight.DType || bias.DType != y.DType || x.DType == DType.F32 && y.DType == DType.BF16)
        {
            MatMul(y, x, false, weight, true);
            AddBias(y, bias);
            return;
        }
        int m = y.Rows, n = y.Cols, k = x.Cols;
        if (x.Rows != m || weight.Rows != n || weight.Cols != k || bias.Length != n)
            throw new ArgumentException($"linear shapes do not agree: y {y} = x {x}·W {weight}ᵀ + b {bias}");
        var t = x.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32;
        _dev.Blas.Gemm(false, true, m, n, k, P(x), x.Cols, P(weight), weight.Cols, P(y), y.Cols, t,
            y.DType == DType.BF16 ? GpuDType.BF16 : GpuDType.F32, 1f, 0f, _dev.Stream, bias: P(bias), epilogue: GemmEpilogue.Bias);
    }

    const int GemvMaxRows = 8, GemvWarps = 8; // GEMV_MAX_M, GEMV_WARPS in gemv.cu

    /// <summary>
    /// The most shared memory a GEMV block takes to hold its input rows (gemv.cu's staged, decode.cu's gemv_residual):
    /// M·K bf16 up to this is copied once a block and read from there, faster than from global memory on every decode
    /// shape measured (docs/serving.md); larger inputs are read from global memory (gemv_bf16) or take the unfused
    /// composition (gemv_residual). 96 KiB: two blocks still fit a multiprocessor's 228 KiB.
    /// </summary>
    public const int GemvMaxSharedBytes = 96 * 1024;

    /// <summary>
    /// Whether GEMVs stage their input in shared memory (FINETUNE_GEMV_STAGE=0: off, for A/B runs; then gemv_bf16 reads
    /// A from global memory and the decode step's matmul + residual takes the composition, gemv_bf16 + add).
    /// </summary>
    public bool UseGemvStaging { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_GEMV_STAGE") != "0";

    /// <summary>Shared memory for a GEMV's staged input of <paramref name="m"/> × <paramref name="k"/> bf16; 0 when it is read from global memory.</summary>
    int GemvSharedBytes(int m, int k) => UseGemvStaging && (long)m * k * 2 is var bytes && bytes <= GemvMaxSharedBytes ? (int)bytes : 0;

    /// <summary>
    /// Products of at most <see cref="GemvRows"/> rows against a bf16 weight (y = x·Wᵀ of a decode step) on gemv.cu's
    /// warp-per-column kernel instead of cuBLASLt; off with FINETUNE_GEMV=0 (or false here).
    /// </summary>
    public bool UseGemv { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_GEMV") != "0";

    /// <summary>
    /// The most rows a product may have to take the GEMV (FINETUNE_GEMV_ROWS, 1 … 8): on the H200 the Qwen3-1.7B decode
    /// step was fastest with 2 (GEMV at 1 and 2 rows, cuBLASLt from 4; docs/cuda.md).
    /// </summary>
    public int GemvRows { get; set; } = int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_GEMV_ROWS"), out int r) ? Math.Clamp(r, 1, GemvMaxRows) : 2;

    bool GemvFits(Tensor c, Tensor a, bool transA, Tensor b, bool transB, int m, int n, int k) =>
        UseGemv && m <= GemvRows && !transA && transB && a.DType == DType.BF16 && b.DType == DType.BF16 && (k & 7) == 0
        && a.Cols == k && b.Cols == k && c.Cols == n && (P(a) & 15) == 0 && (P(b) & 15) == 0;

    bool Gemv(Tensor c, Tensor a, bool transA, Tensor b, bool transB, int m, int n, int k, float alpha, bool accumulate)
    {
        if (!GemvFits(c, a, transA, b, transB, m, n, k)) return false;
        int columns = DecodeColumnsOf("gemv_bf16"), shared = GemvSharedBytes(m, k);
        LaunchDependent("gemv.cu", "gemv_bf16", (GemvBlocks(n, GemvWarps, columns), 1, 1), GemvWarps * 32,
            [P(c), Dt(c), P(a), P(b), m, n, k, alpha, accumulate ? 1 : 0, PrefetchFlag, columns, shared > 0 ? 1 : 0], shared);
        return true;
    }

    /// <summary>A decode step's q/k/v (or gate/up) products in one GEMV launch when each would take the GEMV alone.</summary>
    public void MatMulShared(IReadOnlyList<Tensor> cs, Tensor a, IReadOnlyList<Tensor> bs)
    {
        if (cs.Count != bs.Count) throw new ArgumentException($"{cs.Count} outputs for {bs.Count} weights");
        bool fused = cs.Count is >= 1 and <= 3;
        for (int j = 0; j < cs.Count && fused; j++)
        {
            var (c, b) = (cs[j], bs[j]);
            fused = c.Rows == a.Rows && b.Cols == a.Cols && c.Cols == b.Rows && c.Rows > 0 && GemvFits(c, a, false, b, true, c.Rows, c.Cols, a.Cols);
        }
        if (!fused)
        {
            for (int j = 0; j < cs.Count; j++) MatMul(cs[j], a, false, bs[j], true);
            return;
        }
        var args = new KernelArg[19];
        args[0] = P(a); args[1] = a.Rows; args[2] = a.Cols; args[3] = cs.Count;
        int total = 0;
        for (int j = 0; j < 3; j++)
        {
            bool used = j < cs.Count;
            args[4 + 4 * j] = used ? P(cs[j]) : 0UL;
            args[5 + 4 * j] = used ? Dt(cs[j]) : 0;
            args[6 + 4 * j] = used ? P(bs[j]) : 0UL;
            args[7 + 4 * j] = used ? cs[j].Cols : 0;
            if (used) total += cs[j].Cols;
        }
        args[16] = PrefetchFlag;
        int columns = DecodeColumnsOf("gemv_bf16_set"), shared = GemvSharedBytes(a.Rows, a.Cols);
        args[17] = columns;
        args[18] = shared > 0 ? 1 : 0;
        LaunchDependent("gemv.cu", "gemv_bf16_set", (GemvBlocks(total, GemvWarps, columns), 1, 1), GemvWarps * 32, args, shared);
    }
}
