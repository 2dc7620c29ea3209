namespace FineTune.Engine.Cuda;

// Mixture of experts on the device (Kernels/experts.cu): every operation is one or a few launches whatever the number
// of experts, and nothing waits for the host (the grouped products find each tile's expert from the offsets on the device).
public sealed partial class CudaBackend
{
    const int GroupedTile = 64;
    const int SortThreads = 1024; // moe_count / moe_place block: at most 32 warps (moe_place's warp_totals[32])
    const int PlaceRun = 4;       // PLACE_RUN in experts.cu: consecutive choices per moe_place thread
    const int GroupedMmaTile = 128; // GM_ROWS = GM_COLS in experts.cu

    /// <summary>
    /// BF16 operands take the tensor-core kernels (<see cref="GroupedGemm"/>: grouped_gemm_mma / grouped_gemm_tc and
    /// grouped_gemm_weight_grad_mma / grouped_gemm_weight_grad_tc); F32 ones, or
    /// FINETUNE_MOE_SIMPLE_GEMM=1, the fp32 tile kernels (the DeviceChecks' F32 rows test those, the BF16 rows the others).
    /// </summary>
    readonly bool _simpleGroupedGemm = Environment.GetEnvironmentVariable("FINETUNE_MOE_SIMPLE_GEMM") == "1";

    /// <summary>
    /// The BF16 grouped product's kernel: by default the pipelined 128×128 grouped_gemm_mma_k64s3 where its
    /// preconditions hold (<see cref="GroupedMmaFits"/>); FINETUNE_GROUPED_GEMM=old | k64s3 | k32s3 | k32s4 picks one
    /// for A/B runs (old: the 64×64 grouped_gemm_tc, also the fallback when the preconditions fail). Every choice but
    /// old also takes grouped_gemm_weight_grad_mma for the weight gradient (old: grouped_gemm_weight_grad_tc).
    /// </summary>
    public GroupedGemmKernel GroupedGemm { get; set; } = GroupedGemmFromEnvironment(Environment.GetEnvironmentVariable("FINETUNE_GROUPED_GEMM"));

    static GroupedGemmKernel GroupedGemmFromEnvironment(string? value) => value switch
    {
        null or "" or "k64s3" => GroupedGemmKernel.Tile128K64Stages3,
        "k32s3" => GroupedGemmKernel.Tile128K32Stages3,
        "k32s4" => GroupedGemmKernel.Tile128K32Stages4,
        "old" => GroupedGemmKernel.Tile64,
        _ => throw new ArgumentException($"FINETUNE_GROUPED_GEMM={value}: expected old, k64s3, k32s3 or k32s4 (or unset for k64s3)"),
    };

    /// <summary>The grouped_gemm_mma instantiation of a kernel choice: its name, k-step and shared-memory stages.</summary>
    static (string Name, int KStep, int Stages) GroupedMmaVariant(GroupedGemmKernel kernel) => kernel switch
    {
        GroupedGemmKernel.Tile128K64Stages3 => ("grouped_gemm_mma_k64s3", 64, 3),
        GroupedGemmKernel.Tile128K32Stages3 => ("grouped_gemm_mma_k32s3", 32, 3),
        GroupedGemmKernel.Tile128K32Stages4 => ("grouped_gemm_mma_k32s4", 32, 4),
        _ => throw new ArgumentOutOfRangeException(nameof(kernel), kernel, "not a grouped_gemm_mma variant"),
    };

    /// <summary>
    /// grouped_gemm_mma copies 16-byte chunks (8 bf16) with cp.async and stores column pairs: every row of a, w and c
    /// must start 16-byte aligned and end on a whole chunk.
    /// </summary>
    bool GroupedMmaFits(Tensor c, Tensor a, Tensor w, int outCols, int inCols) =>
        GroupedGemm != GroupedGemmKernel.Tile64 && inCols % 8 == 0 && outCols % 8 == 0 && (c.DType is DType.BF16 or DType.F32)
        && (P(a) & 15) == 0 && (P(w) & 15) == 0 && (P(c) & 15) == 0;

    readonly HashSet<nint> _carveoutSet = []; // kernels whose shared-memory carveout preference is already set

    // grouped_gemm_mma: grid (column tiles, row tiles), each expert's rows cut into 128-row tiles: at most
    // ceil(rows/128) + E of them; tiles past the last exit at once. Shared memory: STAGES × (A + B) tiles of
    // 128 × (BK + 8) bf16 (61,440 to 110,592 bytes, above the 48 KiB default), two blocks per multiprocessor.
    void LaunchGroupedMma(Tensor c, Tensor a, Tensor w, Tensor offsets, int e, int outCols, int inCols, bool transW, bool accumulate)
    {
        var (name, kStep, stages) = GroupedMmaVariant(GroupedGemm);
        int sharedBytes = stages * 2 * GroupedMmaTile * (kStep + 8) * 2;
        var fn = _dev.Function("experts.cu", name);
        if (_carveoutSet.Add(fn)) _dev.PreferMaxSharedMemory(fn); // CudaDevice.Launch raises the 48 KiB limit itself
        _dev.Launch(fn, ((outCols + GroupedMmaTile - 1) / GroupedMmaTile, (a.Rows + GroupedMmaTile - 1) / GroupedMmaTile + e, 1), (256, 1, 1),
            sharedBytes, [P(c), Dt(c), P(a), P(w), P(offsets), e, outCols, inCols, transW ? 1 : 0, accumulate ? 1 : 0], name);
        if (_dev.Profiling) _dev.Mark(name);
    }

    /// <summary>Tokens (warps) per block of the router kernels: each warp keeps its token's E probabilities in shared memory.</summary>
    static int RouterWarps(int experts) => Math.Clamp(48 * 1024 / (experts * 4), 1, 8);

    public void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize)
    {
        Need(probs, DType.F32); Need(topIdx, DType.I32); Need(topWeight, DType.F32);
        int n = logits.Rows, e = logits.Cols, k = topIdx.Cols;
        if (probs.Rows != n || probs.Cols != e || topIdx.Rows != n || topWeight.Rows != n || topWeight.Cols != k || k > e)
            throw new ArgumentException($"router: probs {probs}, topIdx {topIdx}, topWeight {topWeight} do not match logits {logits}");
        if (n == 0) return;
        int warps = RouterWarps(e);
        Launch("experts.cu", "moe_route", ((n + warps - 1) / warps, 1, 1), warps * 32,
            [P(logits), Dt(logits), P(probs), P(topIdx), P(topWeight), n, e, k, normalize ? 1 : 0], warps * e * 4);
    }

    public void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize,
        Tensor? auxGrad, Tensor? tokenMask, float auxScale)
    {
        Need(dTopWeight, DType.F32); Need(probs, DType.F32); Need(topIdx, DType.I32); Need(topWeight, DType.F32);
        if (auxGrad is not null) Need(auxGrad, DType.F32);
        if (tokenMask is not null) Need(tokenMask, DType.F32);
        int n = probs.Rows, e = probs.Cols, k = topIdx.Cols;
        if (dlogits.Rows != n || dlogits.Cols != e || dTopWeight.Length != (long)n * k) throw new ArgumentException($"router backward: {dlogits}, {dTopWeight} do not match {probs}");
        if (n == 0) return;
        int warps = RouterWarps(e);
        Launch("experts.cu", "moe_route_backward", ((n + warps - 1) / warps, 1, 1), warps * 32,
        [
            P(dlogits), Dt(dlogits), P(dTopWeight), P(probs), P(topIdx), P(topWeight),
            auxGrad is null ? 0UL : P(auxGrad), tokenMask is null ? 0UL : P(tokenMask), auxScale, n, e, k, normalize ? 1 : 0,
        ], warps * e * 4);
    }

    public void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask)
    {
        Need(counts, DType.F32); Need(probSums, DType.F32); Need(probs, DType.F32); Need(topIdx, DType.I32); Need(tokenMask, DType.F32);
        int n = probs.Rows, e = probs.Cols, k = topIdx.Cols;
        if (counts.Length != e || probSums.Length != e || tokenMask.Length != n) throw new ArgumentException($"router statistics: {counts}, {probSums}, {tokenMask} do not match {probs}");
        Launch("experts.cu", "moe_router_stats", ((e + Threads - 1) / Threads, 1, 1), Threads, [P(counts), P(probSums), P(probs), P(topIdx), P(tokenMask), n, e, k]);
    }

    public void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf)
    {
        Need(topIdx, DType.I32); Need(offsets, DType.I32); Need(sortedToken, DType.I32); Need(rowOf, DType.I32);
        int choices = checked((int)topIdx.Length), k = topIdx.Cols, e = checked((int)offsets.Length) - 1;
        if (sortedToken.Length != choices || rowOf.Length != choices || e < 1) throw new ArgumentException($"expert sort: {topIdx}, {offsets}, {sortedToken}, {rowOf} do not agree");
        // One block per expert, each reading every choice: 1024 threads (moe_place: 4 choices each) take a sixteenth of
        // 256 threads' passes over them, each pass with its __syncthreads.
        int threads = Math.Clamp((choices + 31) / 32 * 32, 32, SortThreads);
        Launch("experts.cu", "moe_count", (e, 1, 1), threads, [P(topIdx), P(offsets), choices]);
        Launch("experts.cu", "moe_scan", (1, 1, 1), 32, [P(offsets), e]);
        Launch("experts.cu", "moe_place", (e, 1, 1), Math.Clamp((choices + PlaceRun * 32 - 1) / (PlaceRun * 32) * 32, 32, SortThreads),
            [P(topIdx), P(offsets), P(sortedToken), P(rowOf), choices, k]);
    }

    public void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false)
    {
        Need(offsets, DType.I32);
        if (w.Rank != 3) throw new ArgumentException($"grouped product: {w} must be [experts, rows, cols]");
        int e = w.Dim(0), outCols = transW ? w.Dim(1) : w.Dim(2), inCols = transW ? w.Dim(2) : w.Dim(1);
        if (a.Cols != inCols || c.Cols != outCols || a.Rows != c.Rows || offsets.Length != e + 1)
            throw new ArgumentException($"grouped product {c} = {a}·{w} by {offsets}: shapes do not agree");
        int rows = a.Rows;
        if (rows == 0) return;
        if (!_simpleGroupedGemm && a.DType == DType.BF16 && w.DType == DType.BF16 && GroupedMmaFits(c, a, w, outCols, inCols))
        {
            LaunchGroupedMma(c, a, w, offsets, e, outCols, inCols, transW, accumulate);
            return;
        }
        // Each expert's rows cut into 64-row tiles: at most ceil(rows/64) + E tiles; tiles past the last exit at once.
        int tiles = (rows + GroupedTile - 1) / GroupedTile + e;
        if (!_simpleGroupedGemm && a.DType == DType.BF16 && w.DType == DType.BF16)
        {
            Launch("experts.cu", "grouped_gemm_tc", ((outCols + GroupedTile - 1) / GroupedTile, tiles, 1), 128,
                [P(c), Dt(c), P(a), P(w), P(offsets), e, outCols, inCols, transW ? 1 : 0, accumulate ? 1 : 0]);
            return;
        }
        Launch("experts.cu", "grouped_gemm", ((outCols + GroupedTile - 1) / GroupedTile, tiles, 1), Threads,
            [P(c), Dt(c), P(a), Dt(a), P(w), Dt(w), P(offsets), e, outCols, inCols, transW ? 1 : 0, accumulate ? 1 : 0]);
    }

    public void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets)
    {
        Need(dw, DType.F32); Need(offsets, DType.I32);
        if (dw.Rank != 3) throw new ArgumentException($"grouped weight gradient: {dw} must be [experts, rows, cols]");
        int e = dw.Dim(0), n = dw.Dim(1), k = dw.Dim(2);
        if (dc.Cols != n || a.Cols != k || a.Rows != dc.Rows || offsets.Length != e + 1)
            throw new ArgumentException($"grouped weight gradient {dw} += {dc}ᵀ·{a} by {offsets}: shapes do not agree");
        if (!_simpleGroupedGemm && dc.DType == DType.BF16 && a.DType == DType.BF16 && GroupedGemm != GroupedGemmKernel.Tile64
            && n % 8 == 0 && k % 8 == 0 && (P(dw) & 15) == 0 && (P(dc) & 15) == 0 && (P(a) & 15) == 0)
        {
            // grouped_gemm_weight_grad_mma: 128 (n) × 128 (k) tiles of one expert, 3 stages of 32 rows p; preconditions as
            // grouped_gemm_mma's. FINETUNE_GROUPED_GEMM=old keeps grouped_gemm_weight_grad_tc.
            const int sharedBytes = 3 * 2 * 32 * 136 * 2; // 52,224
            var fn = _dev.Function("experts.cu", "grouped_gemm_weight_grad_mma");
            if (_carveoutSet.Add(fn)) _dev.PreferMaxSharedMemory(fn);
            _dev.Launch(fn, ((k + GroupedMmaTile - 1) / GroupedMmaTile, (n + GroupedMmaTile - 1) / GroupedMmaTile, e), (256, 1, 1), sharedBytes,
                [P(dw), P(dc), P(a), P(offsets), n, k], "grouped_gemm_weight_grad_mma");
            if (_dev.Profiling) _dev.Mark("grouped_gemm_weight_grad_mma");
            return;
        }
        if (!_simpleGroupedGemm && dc.DType == DType.BF16 && a.DType == DType.BF16)
        {
            Launch("experts.cu", "grouped_gemm_weight_grad_tc", ((k + GroupedTile - 1) / GroupedTile, (n + GroupedTile - 1) / GroupedTile, e), 128,
                [P(dw), P(dc), P(a), P(offsets), n, k]);
            return;
        }
        Launch("experts.cu", "grouped_gemm_weight_grad", ((k + GroupedTile - 1) / GroupedTile, (n + GroupedTile - 1) / GroupedTile, e), Threads,
            [P(dw), P(dc), Dt(dc), P(a), Dt(a), P(offsets), n, k]);
    }

    public void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf)
    {
        Need(topWeight, DType.F32); Need(rowOf, DType.I32);
        int n = y.Rows, cols = y.Cols, k = topWeight.Cols;
        if (rows.Cols != cols || topWeight.Rows != n || rowOf.Length != (long)n * k) throw new ArgumentException($"combine {y} from {rows} by {topWeight}: shapes do not agree");
        if (n == 0) return;
        if (V8(cols, y, rows))
            Launch("experts.cu", "moe_combine_v8", (WarpBlocks(n), 1, 1), Threads, [P(y), P(rows), P(topWeight), P(rowOf), n, cols / 8, k]);
        else LaunchFlat("experts.cu", "moe_combine", (long)n * cols, [P(y), Dt(y), P(rows), Dt(rows), P(topWeight), P(rowOf), n, cols, k]);
    }

    public void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf)
    {
        Need(dTopWeight, DType.F32); Need(topWeight, DType.F32); Need(rowOf, DType.I32);
        int n = dy.Rows, cols = dy.Cols, k = topWeight.Cols;
        if (rows.Cols != cols || drows.Cols != cols || topWeight.Rows != n || dTopWeight.Length != topWeight.Length || rowOf.Length != (long)n * k)
            throw new ArgumentException($"combine backward {drows}, {dTopWeight} from {dy}: shapes do not agree");
        if (n == 0) return;
        if (V8(cols, drows, dy, rows))
        {
            Launch("experts.cu", "moe_combine_backward_v8", (WarpBlocks(n * k), 1, 1), Threads,
                [P(drows), P(dTopWeight), P(dy), P(rows), P(topWeight), P(rowOf), n * k, cols / 8, k]);
            return;
        }
        LaunchFlat("experts.cu", "moe_combine_backward_rows", (long)n * k * cols, [P(drows), Dt(drows), P(dy), Dt(dy), P(topWeight), P(rowOf), n, cols, k]);
        Launch("experts.cu", "moe_combine_backward_weights", (n * k, 1, 1), Threads, [P(dTopWeight), P(dy), Dt(dy), P(rows), Dt(rows), P(rowOf), cols, k]);
    }

    public void MoeCombineDownBackward(Tensor dact, Tensor dTopWeight, Tensor h, Tensor act, Tensor topWeight, Tensor rowOf)
    {
        Need(dTopWeight, DType.F32); Need(topWeight, DType.F32); Need(rowOf, DType.I32);
        int choices = checked((int)rowOf.Length), inter = h.Cols;
        if (act.Cols != inter || dact.Cols != inter || h.Rows != choices || act.Rows != choices || dact.Rows != choices
            || topWeight.Length != choices || dTopWeight.Length != choices)
            throw new ArgumentException($"combine backward through down {dact}, {dTopWeight} from {h}, {act}: shapes do not agree");
        if (choices == 0) return;
        if (V8(inter, dact, h, act))
            Launch("experts.cu", "moe_combine_down_backward_v8", (WarpBlocks(choices), 1, 1), Threads,
                [P(dact), P(dTopWeight), P(h), P(act), P(topWeight), P(rowOf), choices, inter / 8]);
        else
            Launch("experts.cu", "moe_combine_down_backward", (choices, 1, 1), Threads,
                [P(dact), Dt(dact), P(dTopWeight), P(h), Dt(h), P(act), Dt(act), P(topWeight), P(rowOf), inter]);
    }

    public void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf)
    {
        Need(rowOf, DType.I32);
        int n = dx.Rows, cols = dx.Cols, k = (int)(rowOf.Length / Math.Max(1, n));
        if (drows.Cols != cols || rowOf.Length != (long)n * k) throw new ArgumentException($"gather backward {dx} from {drows}: shapes do not agree");
        if (n == 0) return;
        if (V8(cols, dx, drows))
            Launch("experts.cu", "moe_gather_backward_v8", (WarpBlocks(n), 1, 1), Threads, [P(dx), P(drows), P(rowOf), n, cols / 8, k]);
        else LaunchFlat("experts.cu", "moe_gather_backward", (long)n * cols, [P(dx), Dt(dx), P(drows), Dt(drows), P(rowOf), n, cols, k]);
    }

    /// <summary>Blocks of <see cref="Threads"/> for one warp per item (the *_v8 row kernels).</summary>
    static int WarpBlocks(int items) => (items + RowsPerBlock - 1) / RowsPerBlock;
}

/// <summary>
/// A BF16 grouped-product kernel of experts.cu: <see cref="Tile64"/> is grouped_gemm_tc (64×64 tiles, one stage,
/// scalar copies); the others are grouped_gemm_mma (128×128 tiles, cp.async pipeline) with k-step and stage count.
/// </summary>
public enum GroupedGemmKernel { Tile128K64Stages3, Tile128K32Stages3, Tile128K32Stages4, Tile64 }
