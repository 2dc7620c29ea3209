namespace FineTune.Engine.Cuda;

/// <summary>
/// A decode step's fused layer operations (decode.cu): for steps of at most two tokens, with bf16 operands, each one
/// launch with the bits of its <see cref="DecodeComposition"/>; anything else runs the composition. Off with
/// FINETUNE_FUSED_DECODE=0 (or <see cref="UseFusedDecode"/> false): the A/B of the generation benchmark.
/// </summary>
public sealed partial class CudaBackend
{
    const int DecodeMaxRows = 2, DecodeMaxK = 8192; // DEC_MAX_M, DEC_MAX_K in decode.cu

    public bool UseFusedDecode { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_FUSED_DECODE") != "0";

    /// <summary>
    /// Warps per block of the fused GEMVs (one output column each): FINETUNE_DECODE_WARPS, 2 … 32, default 8 (H200,
    /// 2026-12-02: 4 and 16 were slower at batch 1 on both bench shapes).
    /// </summary>
    public int DecodeWarps { get; set; } = int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_DECODE_WARPS"), out int w) ? Math.Clamp(w, 2, 32) : 8;

    public const int DecodeMaxColumns = 8;

    /// <summary>
    /// Output columns a warp of the fused GEMVs (and gemv.cu's) takes, C: FINETUNE_DECODE_COLUMNS, 1 … 8, default 1 (one
    /// column a warp, the grid of before). With C &gt; 1 a warp streams the columns n, n + G, n + 2G, … (G: the grid's
    /// warps) and loads the next column's first batch before finishing the current one, so its loads stay in flight across
    /// columns (decode.cu, dec_columns); every C gives the bits of C = 1. Measured on the H200 (2026-12-03): C = 2 and 4
    /// for every kernel were slower end to end on both bench shapes, so the default stays 1. The variable also takes
    /// per-kernel values (<see cref="ParseDecodeColumnOverrides"/>: "gemv_norm_set=2,gemv_residual=1"), which
    /// <see cref="DecodeColumnsOf"/> applies; setting this property clears them.
    /// </summary>
    public int DecodeColumns
    {
        get => _decodeColumns;
        set { _decodeColumns = Math.Clamp(value, 1, DecodeMaxColumns); _decodeColumnsByKernel = new Dictionary<string, int>(); }
    }

    /// <summary>The kernels whose columns a warp FINETUNE_DECODE_COLUMNS can set one by one. Declared before
    /// <see cref="ColumnsFromEnvironment"/>, whose initializer parses with it (static initializers run in text order).</summary>
    public static readonly string[] DecodeColumnKernels = ["gemv_norm_set", "gemv_norm_swiglu", "gemv_residual", "gemv_bf16", "gemv_bf16_set"];

    static readonly (int Default, IReadOnlyDictionary<string, int> ByKernel) ColumnsFromEnvironment =
        ParseDecodeColumnOverrides(Environment.GetEnvironmentVariable("FINETUNE_DECODE_COLUMNS"));
    int _decodeColumns = ColumnsFromEnvironment.Default;
    IReadOnlyDictionary<string, int> _decodeColumnsByKernel = ColumnsFromEnvironment.ByKernel;

    /// <summary>C for one of <see cref="DecodeColumnKernels"/>: its own value where FINETUNE_DECODE_COLUMNS names it, else <see cref="DecodeColumns"/>.</summary>
    public int DecodeColumnsOf(string kernel) => _decodeColumnsByKernel.TryGetValue(kernel, out int c) ? c : _decodeColumns;

    /// <summary>FINETUNE_DECODE_COLUMNS's value as one C for every kernel: an integer clamped to 1 … <see cref="DecodeMaxColumns"/>; 1 when unset or not a number.</summary>
    public static int ParseDecodeColumns(string? value) => ParseDecodeColumnOverrides(value).Default;

    /// <summary>
    /// FINETUNE_DECODE_COLUMNS as comma-separated items, each "C" (every kernel's default) or "kernel=C" (one of
    /// <see cref="DecodeColumnKernels"/>), C clamped to 1 … <see cref="DecodeMaxColumns"/>; items that are neither (an
    /// unknown kernel, not a number) are ignored, and the last item for a kernel wins. Default 1.
    /// </summary>
    public static (int Default, IReadOnlyDictionary<string, int> ByKernel) ParseDecodeColumnOverrides(string? value)
    {
        int all = 1;
        var byKernel = new Dictionary<string, int>();
        foreach (var raw in (value ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = raw.IndexOf('=');
            if (eq < 0) { if (int.TryParse(raw, out int c)) all = Math.Clamp(c, 1, DecodeMaxColumns); continue; }
            string kernel = raw[..eq].Trim();
            if (Array.IndexOf(DecodeColumnKernels, kernel) >= 0 && int.TryParse(raw[(eq + 1)..], out int k)) byKernel[kernel] = Math.Clamp(k, 1, DecodeMaxColumns);
        }
        return (all, byKernel);
    }

    /// <summary>
    /// Blocks of a GEMV grid of <paramref name="warps"/> warps a block, <paramref name="perWarp"/> columns a warp:
    /// ceil(columns / (warps · perWarp)). The kernels' warp g (of G = blocks · warps) takes columns g, g + G, …, at most
    /// perWarp of them below columns: every column exactly once, since G · perWarp ≥ columns.
    /// </summary>
    public static int GemvBlocks(int columns, int warps, int perWarp)
    {
        long per = (long)warps * Math.Clamp(perWarp, 1, DecodeMaxColumns);
        return (int)((columns + per - 1) / per);
    }

    /// <summary>
    /// x [M, K] with M ≤ two rows (and the GEMV's row limit), K a multiple of 8 up to <paramref name="maxK"/>; every
    /// tensor bf16, 16-byte aligned. The kernels that keep normed rows of x in shared memory take K ≤ DecodeMaxK;
    /// gemv_residual copies its input into shared memory as it is (M·K bf16 up to GemvMaxSharedBytes: down_proj's K =
    /// 14,336 at Llama-3-8B, 29,568 at Qwen2.5-72B for one row).
    /// </summary>
    bool DecodeFits(Tensor x, int maxK, params ReadOnlySpan<Tensor> others)
    {
        if (!UseFusedDecode || !UseGemv || x.Rows < 1 || x.Rows > Math.Min(DecodeMaxRows, GemvRows) || x.Cols > maxK) return false;
        if (!V8(x.Cols, x)) return false;
        foreach (var t in others)
            if (!V8(8, t)) return false;
        return true;
    }

    /// <summary>Whether <paramref name="w"/> is a [n, k] weight whose products land in <paramref name="c"/> [m, n] from an input of m rows.</summary>
    static bool ProductShape(Tensor c, Tensor w, int m, int k) => w.Cols == k && c.Rows == m && c.Cols == w.Rows;

    public void NormMatMulShared(IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs)
    {
        int m = x.Rows, k = x.Cols;
        bool fused = cs.Count == bs.Count && cs.Count is >= 1 and <= 3 && normWeight.Length == k && ln.Rows == m && ln.Cols == k
            && rstd.DType == DType.F32 && rstd.Length >= m && DecodeFits(x, DecodeMaxK, [ln, normWeight, .. cs, .. bs]);
        for (int j = 0; j < cs.Count && fused; j++) fused = ProductShape(cs[j], bs[j], m, k);
        if (!fused) { DecodeComposition.NormMatMulShared(this, cs, ln, rstd, x, normWeight, eps, bs); return; }
        var args = new KernelArg[20];
        args[0] = P(x); args[1] = P(normWeight); args[2] = eps; args[3] = 0f; args[4] = P(ln); args[5] = P(rstd);
        args[6] = m; args[7] = k; args[8] = cs.Count;
        int total = 0;
        for (int j = 0; j < 3; j++)
        {
            bool used = j < cs.Count;
            args[9 + 3 * j] = used ? P(cs[j]) : 0UL;
            args[10 + 3 * j] = used ? P(bs[j]) : 0UL;
            args[11 + 3 * j] = used ? cs[j].Cols : 0;
            if (used) total += cs[j].Cols;
        }
        args[18] = PrefetchFlag;
        args[19] = DecodeColumnsOf("gemv_norm_set");
        LaunchDecode("gemv_norm_set", total, m * k * 2, args);
    }

    bool NormSwiGluFits(Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, Tensor gateWeight, Tensor upWeight)
    {
        int m = x.Rows, k = x.Cols, n = gateWeight.Rows;
        return normWeight.Length == k && ln.Rows == m && ln.Cols == k && rstd.DType == DType.F32 && rstd.Length >= m
            && ProductShape(gate, gateWeight, m, k) && ProductShape(up, upWeight, m, k) && h.Rows == m && h.Cols == n
            && DecodeFits(x, DecodeMaxK, ln, normWeight, gate, up, h, gateWeight, upWeight);
    }

    public void NormSwiGluMatMul(Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight)
    {
        int m = x.Rows, k = x.Cols, n = gateWeight.Rows;
        if (!NormSwiGluFits(h, gate, up, ln, rstd, x, normWeight, gateWeight, upWeight))
        {
            DecodeComposition.NormSwiGluMatMul(this, h, gate, up, ln, rstd, x, normWeight, eps, gateWeight, upWeight);
            return;
        }
        LaunchDecode("gemv_norm_swiglu", n, m * k * 2, SwiGluWarps, 2,
            [P(x), P(normWeight), eps, 0f, P(ln), P(rstd), m, k, n, P(gateWeight), P(upWeight), P(gate), P(up), P(h), PrefetchFlag, DecodeColumnsOf("gemv_norm_swiglu")]);
    }

    /// <summary>Whether gemv_residual takes these operands; <paramref name="shared"/>: its staged input rows' bytes.</summary>
    bool ResidualFits(Tensor y, Tensor a, Tensor weight, Tensor residual, out int shared)
    {
        int m = a.Rows, k = a.Cols;
        shared = GemvSharedBytes(m, k); // the input rows, staged: 0 when they do not fit
        return ProductShape(y, weight, m, k) && residual.Rows == m && residual.Cols == y.Cols && DecodeFits(a, int.MaxValue, y, weight, residual)
            && shared > 0;
    }

    public void MatMulResidual(Tensor y, Tensor a, Tensor weight, Tensor residual)
    {
        int m = a.Rows, k = a.Cols;
        if (!ResidualFits(y, a, weight, residual, out int shared)) { DecodeComposition.MatMulResidual(this, y, a, weight, residual); return; }
        LaunchDecode("gemv_residual", y.Cols, shared, [P(y), P(a), P(weight), P(residual), m, y.Cols, k, PrefetchFlag, DecodeColumnsOf("gemv_residual")]);
    }

    /// <summary>The default of <see cref="UsePersistentMlp"/> when FINETUNE_PERSISTENT_MLP is unset (flip here once measured).</summary>
    const bool PersistentMlpByDefault = false;

    /// <summary>
    /// A layer's o_proj + residual, ln2 + gate/up + SwiGLU and down_proj + residual as one cooperative launch
    /// (decode.cu's decode_mlp_tail: the three kernels' bodies with grid barriers between them, the same bits) instead
    /// of three (FINETUNE_PERSISTENT_MLP=1 on, 0 off, unset <see cref="PersistentMlpByDefault"/>).
    /// </summary>
    public bool UsePersistentMlp { get; set; } =
        Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_MLP") is { Length: > 0 } pm ? pm == "1" : PersistentMlpByDefault;

    /// <summary>
    /// decode_mlp_tail's block shape: warps a block (even, at most 2 · DEC_PAIRS; 0: <see cref="SwiGluWarps"/>) and blocks an
    /// SM (0: as many as fit), for measurement (FINETUNE_PERSISTENT_MLP_WARPS, FINETUNE_PERSISTENT_MLP_BLOCKS).
    /// </summary>
    public (int Warps, int BlocksPerSm) PersistentMlpGrid { get; set; } =
        (int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_MLP_WARPS"), out int pw) ? pw : 0,
         int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_MLP_BLOCKS"), out int pb) ? pb : 0);

    /// <summary>
    /// Whether decode_mlp_tail is also a programmatic dependent launch (its blocks start while the attention finishes and
    /// issue their first o_proj weight loads; FINETUNE_PERSISTENT_MLP_PDL=0 off), when <see cref="UseDependentLaunch"/> is on.
    /// </summary>
    public bool PersistentMlpDependent { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_MLP_PDL") != "0";

    ulong _mlpBarrier;
    long _mlpBarrierBytes;
    (int Warps, int Shared, int PerSm) _mlpGrid;

    public void AttentionOutputMlp(Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att, Tensor oWeight, Tensor x,
        Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight)
    {
        int m = x.Rows, hidden = x.Cols, inter = gateWeight.Rows, sharedA = 0, sharedH = 0;
        int warps = PersistentMlpGrid.Warps > 0 ? Math.Clamp(PersistentMlpGrid.Warps & ~1, 2, 2 * DecodePairs) : SwiGluWarps;
        bool persistent = UsePersistentMlp && UseFusedDecode && _dev.HasCooperativeLaunch
            && ResidualFits(mid, att, oWeight, x, out sharedA) && ResidualFits(y, h, downWeight, mid, out sharedH)
            && NormSwiGluFits(h, gate, up, ln, rstd, mid, normWeight, gateWeight, upWeight) && mid.Rows == m && mid.Cols == hidden && y.Cols == hidden;
        if (!persistent)
        {
            DecodeComposition.AttentionOutputMlp(this, y, mid, h, gate, up, ln, rstd, att, oWeight, x, normWeight, eps, gateWeight, upWeight, downWeight);
            return;
        }
        int shared = Math.Max(Math.Max(sharedA, sharedH), m * hidden * 2);
        var function = _dev.Function("decode.cu", "decode_mlp_tail");
        if (_mlpGrid.Warps != warps || _mlpGrid.Shared != shared) // the occupancy query once a shape, not every layer
            _mlpGrid = (warps, shared, Math.Max(1, _dev.MaxActiveBlocksPerSm(function, warps * 32, shared)));
        int perSm = PersistentMlpGrid.BlocksPerSm > 0 ? Math.Min(_mlpGrid.PerSm, PersistentMlpGrid.BlocksPerSm) : _mlpGrid.PerSm;
        int blocks = _dev.Info.Multiprocessors * perSm;
        ulong bar = ZeroedScratch(ref _mlpBarrier, ref _mlpBarrierBytes, 2 * sizeof(uint));
        bool dependent = UseDependentLaunch && PersistentMlpDependent;
        _dev.LaunchCooperative(function, (blocks, 1, 1), (warps * 32, 1, 1), shared,
        [
            P(mid), P(att), P(oWeight), P(x), att.Cols, P(normWeight), eps, P(ln), P(rstd), inter, P(gateWeight), P(upWeight),
            P(gate), P(up), P(h), P(y), P(downWeight), m, hidden, bar, dependent ? 1 : 0,
        ], "decode_mlp_tail", dependent);
        if (_dev.Profiling) _dev.Mark("decode_mlp_tail");
    }

    /// <summary>Whether qk_rope_cache (or the rope-and-attention kernel) takes these operands; <paramref name="normed"/>: q/k norms given.</summary>
    bool QkRopeFits(Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        Tensor positions, Tensor cos, Tensor sin, int d, Tensor kCache, Tensor vCache, Tensor cacheRows, out bool normed)
    {
        int m = q.Rows;
        normed = qNorm is not null && kNorm is not null && qRstd is { DType: DType.F32 } && kRstd is { DType: DType.F32 };
        int hq = q.Cols / Math.Max(1, d), hkv = k.Cols / Math.Max(1, d);
        return d is 64 or 128 or 256 && q.Cols == hq * d && k.Cols == hkv * d && v.Cols == k.Cols && qIn.Cols == q.Cols && kIn.Cols == k.Cols
            && k.Rows == m && v.Rows == m && qIn.Rows == m && kIn.Rows == m && positions.Length == m && cacheRows.Length == m
            && positions.DType == DType.I32 && cacheRows.DType == DType.I32 && cos.DType == DType.F32 && sin.DType == DType.F32
            && cos.Cols == d / 2 && sin.Cols == d / 2 && kCache.Cols == k.Cols && vCache.Cols == k.Cols
            && (normed ? qNorm!.Length == d && kNorm!.Length == d && qRstd!.Length >= (long)m * hq && kRstd!.Length >= (long)m * hkv
                : qNorm is null && kNorm is null && DecodeComposition.SameStorage(q, qIn) && DecodeComposition.SameStorage(k, kIn))
            && DecodeFits(q, DecodeMaxK, [k, qIn, kIn, v, kCache, vCache, .. (normed ? new[] { qNorm!, kNorm! } : [])]);
    }

    public void QkRopeCache(Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd, float eps,
        Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows)
    {
        int m = q.Rows, d = headDim;
        if (!QkRopeFits(q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, positions, cos, sin, d, kCache, vCache, cacheRows, out bool normed))
        {
            DecodeComposition.QkRopeCache(this, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows);
            return;
        }
        int hq = q.Cols / d, hkv = k.Cols / d;
        int warps = m * (hq + hkv);
        LaunchDependent("decode.cu", "qk_rope_cache", ((warps + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
            [P(q), P(k), P(qIn), P(kIn), P(v), normed ? P(qNorm!) : 0UL, normed ? P(kNorm!) : 0UL, normed ? P(qRstd!) : 0UL, normed ? P(kRstd!) : 0UL,
             eps, 0f, P(positions), P(cos), P(sin), cos.Rows, P(kCache), P(vCache), P(cacheRows), m, hq, hkv, d]);
    }

    /// <summary>Whether cached_attention_rope_split (and decode_layer's attention stage) takes these operands.</summary>
    bool RopeSplitFits(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        Tensor positions, Tensor cos, Tensor sin, int d, Tensor kCache, Tensor vCache, Tensor cacheRows, CachedAttentionShape s, out bool normed)
    {
        int group = s.KvHeads > 0 ? s.QueryHeads / s.KvHeads : 0;
        return QkRopeFits(q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, positions, cos, sin, d, kCache, vCache, cacheRows, out normed)
            && s.Tokens == 1 && q.Rows == 1 && d == s.HeadDim && d is 64 or 128 && UseSplitKAttention && UseSplitKOneKernel
            && s.KvHeads > 0 && s.QueryHeads % s.KvHeads == 0 && group <= SplitMaxGroup && q.Cols == s.QueryHeads * d && k.Cols == s.KvHeads * d
            && output.DType == DType.BF16 && output.Length == q.Length;
    }

    /// <summary>
    /// A one-token step's q/k norms, RoPE, K/V rows and split-K attention as one launch (<c>cached_attention_rope_split</c>:
    /// each block rotates its query heads itself, the block holding the new key writes it, the combining block stores
    /// q), with the bits of qk_rope_cache and the split kernel; anything else (more tokens, the split-K attention or its
    /// one-kernel combine off, head_dim 256) runs <see cref="DecodeComposition.QkRopeCacheAttention"/>.
    /// </summary>
    public void QkRopeCacheAttention(Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows, Tensor sequences, Tensor blockTables,
        CachedAttentionShape s)
    {
        int d = headDim, group = s.KvHeads > 0 ? s.QueryHeads / s.KvHeads : 0;
        if (!RopeSplitFits(output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, positions, cos, sin, d, kCache, vCache, cacheRows, s, out bool normed))
        {
            DecodeComposition.QkRopeCacheAttention(this, output, q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache,
                cacheRows, sequences, blockTables, s);
            return;
        }
        CheckCachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, s);
        int splits = SplitCount(1, s.KvHeads);
        ulong part = SplitPartials((long)s.QueryHeads * splits * (d + 2) * sizeof(float));
        ulong counters = SplitCounters(s.KvHeads * sizeof(uint));
        LaunchDependent("kv_cache.cu", "cached_attention_rope_split", (splits, s.KvHeads, 1), Math.Max(group, SplitMinWarps) * 32,
        [
            part, P(kCache), P(vCache), P(sequences), P(positions), P(blockTables), s.BlockSize, s.TableWidth, s.QueryHeads, s.KvHeads, d, s.Scale,
            s.Variant.Window, s.Variant.SoftCap, P(output), Dt(output), counters,
            P(qIn), P(kIn), P(v), normed ? P(qNorm!) : 0UL, normed ? P(kNorm!) : 0UL, normed ? P(qRstd!) : 0UL, normed ? P(kRstd!) : 0UL, eps, 0f,
            P(cos), P(sin), cos.Rows, P(q), P(k), P(cacheRows),
        ]);
    }

    /// <summary>The default of <see cref="UsePersistentLayer"/> when FINETUNE_PERSISTENT_LAYER is unset.</summary>
    const bool PersistentLayerByDefault = false;

    /// <summary>
    /// A one-token step's whole decode layer as one cooperative launch (decode.cu's decode_layer: the five stages with
    /// grid barriers between them and every warp's weight rows streaming through a cp.async FIFO in shared memory ahead
    /// of its arithmetic, the same bits as the three operations); FINETUNE_PERSISTENT_LAYER=1 on, 0 off, unset
    /// <see cref="PersistentLayerByDefault"/>.
    /// </summary>
    public bool UsePersistentLayer { get; set; } =
        Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_LAYER") is { Length: > 0 } pl ? pl == "1" : PersistentLayerByDefault;

    /// <summary>
    /// decode_layer's warps a block (even, 4 … 16; FINETUNE_PERSISTENT_LAYER_WARPS, default 8), its FIFO's pieces a warp
    /// (FINETUNE_PERSISTENT_LAYER_DEPTH, 2 … 8; 0: as many as the shared memory holds) and the megabytes of the weights
    /// after the FIFO prefetched into L2 before the attention (FINETUNE_PERSISTENT_LAYER_L2, default 24), for measurement.
    /// </summary>
    public (int Warps, int Depth, int L2Megabytes) PersistentLayerShape { get; set; } =
        (int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_LAYER_WARPS"), out int lw) ? Math.Clamp(lw & ~1, 4, 16) : 8,
         int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_LAYER_DEPTH"), out int ld) ? Math.Clamp(ld, 0, LayerMaxDepth) : 0,
         int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_PERSISTENT_LAYER_L2"), out int l2) ? Math.Clamp(l2, 0, 256) : 24);

    const int LayerPieceBytes = 32 * 8 * 16, LayerMaxDepth = 8; // DL_PIECE · 16, DL_MAX_P in decode.cu

    /// <summary>Why the last <see cref="DecodeLayer"/> call composed the three operations instead of decode_layer (null: it launched).</summary>
    public string? PersistentLayerRefusal { get; private set; }

    /// <summary>
    /// Where a decode_layer launch's time goes (DeviceChecks): an I32 tensor of at least 2 · <see cref="PersistentLayerStamps"/>
    /// · SMs values into which every block writes its nanosecond clock (as 64-bit values) at entry, at each stage's end
    /// and at each grid barrier's release; null (the default) writes nothing.
    /// </summary>
    public Tensor? PersistentLayerTrace
    {
        get => _layerTrace;
        set
        {
            if (value is not null && (value.DType != DType.I32 || value.Length < 2L * PersistentLayerStamps * _dev.Info.Multiprocessors))
                throw new ArgumentException($"a decode_layer trace needs {2 * PersistentLayerStamps * _dev.Info.Multiprocessors} I32 values, not {value}");
            _layerTrace = value;
        }
    }

    /// <summary>The points of a block's trace: entry; q/k/v done, barrier; attention done, barrier; o_proj done, barrier; gate/up done, barrier; down_proj done.</summary>
    public const int PersistentLayerStamps = 10; // DL_STAMPS in decode.cu

    Tensor? _layerTrace;
    ulong _layerBarrier;
    long _layerBarrierBytes;
    int _layerStaticShared = -1;
    (int Warps, int Shared, bool Fits) _layerOccupancy;

    // The occupancy query once a block shape, not every layer (as decode_mlp_tail's).
    bool LayerBlockFits(nint function, int warps, int shared)
    {
        if (_layerOccupancy.Warps != warps || _layerOccupancy.Shared != shared)
            _layerOccupancy = (warps, shared, _dev.MaxActiveBlocksPerSm(function, warps * 32, shared) >= 1);
        return _layerOccupancy.Fits;
    }

    /// <summary>The FIFO depth decode_layer gets at <paramref name="warps"/> warps with <paramref name="inputBytes"/> of input row (0: it does not fit).</summary>
    public static int PersistentLayerDepth(int sharedLimit, int staticShared, int inputBytes, int warps, int wanted)
    {
        int room = sharedLimit - staticShared - inputBytes;
        int depth = Math.Min(LayerMaxDepth, room / (warps * LayerPieceBytes));
        if (wanted > 0) depth = Math.Min(depth, wanted);
        return depth >= 2 ? depth : 0;
    }

    public void DecodeLayer(DecodeLayerTensors t)
    {
        var s = t.Shape;
        int hidden = t.X.Cols, inter = t.GateWeight.Rows, d = t.HeadDim, warps = PersistentLayerShape.Warps;
        int group = s.KvHeads > 0 ? s.QueryHeads / s.KvHeads : 0;
        bool normed = false;
        bool fits = UsePersistentLayer && UseFusedDecode && _dev.HasCooperativeLaunch && t.X.Rows == 1 && t.Y.Rows == 1 && t.Y.Cols == hidden
            && group <= warps
            && RopeSplitFits(t.Att, t.Q, t.K, t.QIn, t.KIn, t.V, t.QNorm, t.KNorm, t.QRstd, t.KRstd, t.Positions, t.Cos, t.Sin, d, t.KCache, t.VCache,
                t.CacheRows, s, out normed)
            && t.InputNorm.Length == hidden && t.Ln1.Rows == 1 && t.Ln1.Cols == hidden && t.Rstd1.DType == DType.F32
            && ProductShape(t.QIn, t.QWeight, 1, hidden) && ProductShape(t.KIn, t.KWeight, 1, hidden) && ProductShape(t.V, t.VWeight, 1, hidden)
            && DecodeFits(t.X, DecodeMaxK, [t.Ln1, t.InputNorm, t.QIn, t.KIn, t.V, t.QWeight, t.KWeight, t.VWeight, t.Y])
            && ResidualFits(t.Mid, t.Att, t.OWeight, t.X, out _) && ResidualFits(t.Y, t.H, t.DownWeight, t.Mid, out _)
            && NormSwiGluFits(t.H, t.Gate, t.Up, t.Ln2, t.Rstd2, t.Mid, t.PostNorm, t.GateWeight, t.UpWeight) && t.Mid.Cols == hidden;
        var function = fits ? _dev.Function("decode.cu", "decode_layer") : 0;
        int kmax = Math.Max(Math.Max(hidden, t.Att.Cols), inter), inputBytes = (kmax * 2 + 127) / 128 * 128, depth = 0;
        if (fits)
        {
            if (_layerStaticShared < 0) _layerStaticShared = _dev.FunctionAttribute(function, 1 /* CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES */);
            depth = PersistentLayerDepth(SharedLimit, _layerStaticShared, inputBytes, warps, PersistentLayerShape.Depth);
        }
        int shared = inputBytes + warps * depth * LayerPieceBytes;
        PersistentLayerRefusal = !UsePersistentLayer ? "off" : !fits ? "operands or settings outside decode_layer's (one token, bf16, the fused operations' shapes)"
            : depth == 0 ? $"no room for a FIFO of 2 pieces a warp ({SharedLimit} B shared, {_layerStaticShared} static, {inputBytes} input)"
            : !LayerBlockFits(function, warps, shared) ? $"no block of {warps} warps and {shared} B fits an SM" : null;
        if (PersistentLayerRefusal is not null)
        {
            DecodeComposition.DecodeLayer(this, t);
            return;
        }
        CheckCachedAttention(t.Att, t.Q, t.KCache, t.VCache, t.Sequences, t.Positions, t.BlockTables, s);
        int splits = SplitCount(1, s.KvHeads);
        ulong part = SplitPartials((long)s.QueryHeads * splits * (d + 2) * sizeof(float));
        ulong counters = SplitCounters(s.KvHeads * sizeof(uint));
        ulong bar = ZeroedScratch(ref _layerBarrier, ref _layerBarrierBytes, 2 * sizeof(uint));
        bool dependent = UseDependentLaunch && PersistentMlpDependent;
        _dev.LaunchCooperative(function, (_dev.Info.Multiprocessors, 1, 1), (warps * 32, 1, 1), shared,
        [
            P(t.X), P(t.InputNorm), t.Eps, P(t.Ln1), P(t.Rstd1), hidden, P(t.QIn), P(t.KIn), P(t.V), P(t.QWeight), P(t.KWeight), P(t.VWeight),
            part, P(t.KCache), P(t.VCache), P(t.Sequences), P(t.Positions), P(t.BlockTables), s.BlockSize, s.TableWidth, s.QueryHeads, s.KvHeads, d,
            s.Scale, s.Variant.Window, s.Variant.SoftCap, P(t.Att), counters,
            normed ? P(t.QNorm!) : 0UL, normed ? P(t.KNorm!) : 0UL, normed ? P(t.QRstd!) : 0UL, normed ? P(t.KRstd!) : 0UL, P(t.Cos), P(t.Sin), t.Cos.Rows,
            P(t.Q), P(t.K), P(t.CacheRows), splits,
            P(t.Mid), P(t.OWeight), P(t.PostNorm), P(t.Ln2), P(t.Rstd2), inter, P(t.GateWeight), P(t.UpWeight), P(t.Gate), P(t.Up), P(t.H),
            P(t.Y), P(t.DownWeight), bar, depth, (int)((long)PersistentLayerShape.L2Megabytes * 1_000_000 / ((long)_dev.Info.Multiprocessors * warps * LayerPieceBytes)),
            PersistentLayerTrace is { } trace ? P(trace) : 0UL,
        ], "decode_layer", dependent);
        if (_dev.Profiling) _dev.Mark("decode_layer");
    }

    /// <summary>
    /// <see cref="DecodeColumnsOf"/>(kernel) output columns a warp (the kernel's last argument, which the caller passes the
    /// same), <see cref="DecodeWarps"/> warps a block; a programmatic dependent launch when that is on.
    /// </summary>
    void LaunchDecode(string kernel, int columns, int sharedBytes, ReadOnlySpan<KernelArg> args) =>
        LaunchDecode(kernel, columns, sharedBytes, DecodeWarps, 1, args);

    /// <summary>
    /// Warps a block of gemv_norm_swiglu, whose warps work in pairs (the gate row and the up row of a column):
    /// <see cref="DecodeWarps"/> rounded down to even, at most 2 · DEC_PAIRS (decode.cu; the pairs' barrier ids).
    /// </summary>
    int SwiGluWarps => Math.Clamp(DecodeWarps & ~1, 2, 2 * DecodePairs);

    const int DecodePairs = 8; // DEC_PAIRS in decode.cu

    /// <summary>As above with <paramref name="warps"/> a block, <paramref name="warpsPerColumn"/> of them on each column.</summary>
    void LaunchDecode(string kernel, int columns, int sharedBytes, int warps, int warpsPerColumn, ReadOnlySpan<KernelArg> args)
    {
        var grid = (GemvBlocks(columns, warps / warpsPerColumn, DecodeColumnsOf(kernel)), 1, 1);
        var function = _dev.Function("decode.cu", kernel);
        if (UseDependentLaunch) _dev.LaunchDependent(function, grid, (warps * 32, 1, 1), sharedBytes, args, kernel);
        else _dev.Launch(function, grid, (warps * 32, 1, 1), sharedBytes, args, kernel);
        if (_dev.Profiling) _dev.Mark(kernel);
    }

    /// <summary>Registers per thread of a kernel (cuFuncGetAttribute; DeviceChecks print them beside the decode kernels' times).</summary>
    public int KernelRegisters(string program, string kernel) => _dev.FunctionAttribute(_dev.Function(program, kernel), 4 /* CU_FUNC_ATTRIBUTE_NUM_REGS */);
}
