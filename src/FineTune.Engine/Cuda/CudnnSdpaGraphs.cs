namespace FineTune.Engine.Cuda;

/// <summary>
/// One causal attention problem for cuDNN: batch B, sequence S (queries = keys), Hq query heads over Hkv key/value
/// heads (GQA when Hkv &lt; Hq), head size D, softmax scale. Q/K/V/O are bf16 in FineTune's layout, [B·S, H·D]
/// row-major; the softmax statistics f32 [B, Hq, S] in natural log (FineTune's lse).
/// </summary>
/// A shape may be a slice of a larger problem's heads (<see cref="Slice"/>): its rows then hold
/// <see cref="QueryRowHeads"/> and <see cref="KvRowHeads"/> heads, of which it reads and writes its own, and its
/// lse rows belong to a [B, QueryRowHeads, S] buffer.
internal readonly record struct SdpaShape(int Batch, int Seq, int QueryHeads, int KvHeads, int HeadDim, float Scale)
{
    readonly int _queryRowHeads, _kvRowHeads;

    /// <summary>Heads in a row of Q, O, dO, dQ (and in the lse buffer): <see cref="QueryHeads"/> unless a slice.</summary>
    public int QueryRowHeads { get => _queryRowHeads == 0 ? QueryHeads : _queryRowHeads; init => _queryRowHeads = value == QueryHeads ? 0 : value; }
    /// <summary>Heads in a row of K, V, dK, dV: <see cref="KvHeads"/> unless a slice.</summary>
    public int KvRowHeads { get => _kvRowHeads == 0 ? KvHeads : _kvRowHeads; init => _kvRowHeads = value == KvHeads ? 0 : value; }

    /// <summary>
    /// A slice of some query heads of one key/value head (<see cref="HeadSlice"/>): its dK and dV are that key/value
    /// head's partial gradients from these query heads, written packed, [B·S, D], for the caller to sum.
    /// </summary>
    public bool PartialKv { get; init; }

    /// <summary>
    /// The problem of one sequence, one key/value head and <paramref name="queryHeads"/> of its query heads (a divisor of
    /// the group) of this one: for sequences so long that a whole group's dP workspace passes the limit.
    /// </summary>
    public SdpaShape HeadSlice(int queryHeads) =>
        new(1, Seq, queryHeads, 1, HeadDim, Scale) { QueryRowHeads = QueryRowHeads, KvRowHeads = KvRowHeads, PartialKv = true };

    /// <summary>Element offset of query head <paramref name="h"/> (of key/value head h / group) in sequence <paramref name="b0"/>.</summary>
    public (long Query, long Kv, long Lse) HeadOffsets(int b0, int h)
    {
        int kv = h / (QueryHeads / KvHeads);
        return ((long)b0 * Seq * QueryRowHeads * HeadDim + (long)h * HeadDim, (long)b0 * Seq * KvRowHeads * HeadDim + (long)kv * HeadDim,
            (long)b0 * QueryRowHeads * Seq + (long)h * Seq);
    }

    /// <summary>
    /// The problem of <paramref name="batch"/> sequences and <paramref name="kvHeads"/> key/value heads (with their
    /// query heads) of this one, addressed in this one's buffers at offsets <see cref="Offsets"/> gives.
    /// </summary>
    public SdpaShape Slice(int batch, int kvHeads) =>
        new(batch, Seq, kvHeads * (QueryHeads / KvHeads), kvHeads, HeadDim, Scale) { QueryRowHeads = QueryRowHeads, KvRowHeads = KvRowHeads };

    /// <summary>
    /// Element offsets of the slice starting at sequence <paramref name="b0"/> and key/value head <paramref name="kv0"/>:
    /// into Q-shaped buffers, K-shaped buffers, and lse.
    /// </summary>
    public (long Query, long Kv, long Lse) Offsets(int b0, int kv0)
    {
        long q0 = (long)kv0 * (QueryHeads / KvHeads);
        return ((long)b0 * Seq * QueryRowHeads * HeadDim + q0 * HeadDim, (long)b0 * Seq * KvRowHeads * HeadDim + (long)kv0 * HeadDim,
            (long)b0 * QueryRowHeads * Seq + q0 * Seq);
    }

    public override string ToString() => $"B{Batch} T{Seq} H{QueryHeads}/{KvHeads} D{HeadDim}" +
        (QueryRowHeads != QueryHeads ? $" (of rows of {QueryRowHeads}/{KvRowHeads} heads{(PartialKv ? ", partial dK/dV" : "")})" : "");
}

/// <summary>
/// Details of the SDPA graphs that cuDNN versions may judge differently, to try in turn when a graph is refused:
/// the rank of the by-value scalars (the frontend sends rank 1; its older samples [1,1,1,1]), the compute type of the
/// causal mask's GEN_INDEX operations (frontend 1.23 leaves it at the graph's f32; 1.8 set INT32), and whether masked
/// scores take the lowest finite float (frontend 1.8, and 1.23 before cuDNN 9.1) instead of −∞.
/// </summary>
/// <param name="Engine">Not a graph detail: how many engine configurations that finalize to pass over (0: the
/// heuristics' first), so the device checks can time the others.</param>
/// <param name="DeterministicDq">Backward only: dQ = dS·K written straight to dQ instead of accumulated in an f32
/// buffer. cuDNN then takes its "dP workspace" engine (dP materialised in the workspace, B·Hq·S²·2 bytes), whose dQ
/// needs no atomic additions; the default accumulates dQ with atomics, in an order that varies run to run.</param>
internal sealed record SdpaGraphOptions(int ScalarRank = 4, CudnnDataType IndexCompute = CudnnDataType.FLOAT, bool LowestMask = false, int Engine = 0,
    bool DeterministicDq = false)
{
    /// <summary>4-d scalars: cuDNN 9.14 refuses rank-1 ones (attn_scale: "xDesc.getNbDims() != bDesc.getNbDims()", H200, 2026-12-02).</summary>
    public static readonly SdpaGraphOptions Default = new();

    /// <summary>The default first, then frontend 1.8's causal mask, then both with the rank-1 scalars of frontend 1.23.</summary>
    public static IReadOnlyList<SdpaGraphOptions> Alternatives { get; } =
    [
        Default, new(IndexCompute: CudnnDataType.INT32, LowestMask: true),
        new(ScalarRank: 1), new(ScalarRank: 1, IndexCompute: CudnnDataType.INT32, LowestMask: true),
    ];

    public override string ToString() => $"scalars rank {ScalarRank}, GEN_INDEX compute {IndexCompute}, mask {(LowestMask ? "lowest float" : "by version")}" +
        (DeterministicDq ? ", dQ without atomics" : "") + (Engine > 0 ? $", engine choice {Engine}" : "");
}

/// <summary>
/// The cuDNN graphs of causal SDPA, as cuDNN's fused flash-attention engines recognise them (the pattern the
/// cudnn-frontend's SDPA nodes expand to): built from matmuls, pointwise operations and reductions, described here
/// without native calls so tests can check every dimension and stride.
/// <para>Forward: S = Q·Kᵀ; S·scale; causal mask (row ≥ column kept, else −∞); M = max S; E = exp(S − M); L = Σ E;
/// Stats = M + ln L; P = E / L (bf16); O = P·V.</para>
/// <para>Backward: Δ = Σ_d dO∘O (f32, in memory); S = Q·Kᵀ·scale − Stats, masked; P = exp S; dV = Pᵀ·dO;
/// dP = dO·Vᵀ; dS = P∘(dP − Δ)·scale; dK = dSᵀ·Q; dQ = dS·K (accumulated in f32 memory, then converted).
/// With GQA, dK and dV are first computed per query head and summed over each KV head's group.</para>
/// </summary>
internal static class CudnnSdpaGraphs
{
    public const string Q = "Q", K = "K", V = "V", O = "O", Stats = "Stats";
    public const string dO = "dO", dQ = "dQ", dK = "dK", dV = "dV";
    /// <summary>Backward's f32 intermediates in memory: Δ = rowsum(dO∘O) [B,Hq,S,1] and the dQ accumulator [B,Hq,S,D].</summary>
    public const string SoftmaxSum = "SoftmaxSum", DqAccum = "dQAccum";

    /// <summary>
    /// [B, H, S, D] view of a [B·S, R·D] row-major buffer (R = <paramref name="rowHeads"/>, H when 0): element
    /// (b, h, s, d) at b·S·R·D + s·R·D + h·D + d.
    /// </summary>
    public static (long[] Dims, long[] Strides) RowMajorHeads(int b, int s, int h, int d, int rowHeads = 0)
    {
        long r = rowHeads == 0 ? h : rowHeads;
        return ([b, h, s, d], [s * r * d, d, r * d, 1]);
    }

    /// <summary>The same buffer as [B, H, D, S] (the transpose of the last two dimensions): Kᵀ and Vᵀ.</summary>
    public static (long[] Dims, long[] Strides) Transposed((long[] Dims, long[] Strides) t) =>
        ([t.Dims[0], t.Dims[1], t.Dims[3], t.Dims[2]], [t.Strides[0], t.Strides[1], t.Strides[3], t.Strides[2]]);

    /// <summary>FineTune's lse [B, R, S] (R = <paramref name="rowHeads"/>, H when 0) as the [B, H, S, 1] statistics tensor.</summary>
    public static (long[] Dims, long[] Strides) StatsLayout(int b, int s, int h, int rowHeads = 0) =>
        ([b, h, s, 1], [(long)(rowHeads == 0 ? h : rowHeads) * s, s, 1, 1]);

    /// <summary>
    /// The value masked scores take: −∞, except before cuDNN 9.1, which wanted the most negative finite float
    /// (what the frontend does for those versions).
    /// </summary>
    public static float MaskValue(long cudnnVersion, bool lowest = false) => lowest || cudnnVersion < 90100 ? float.MinValue : float.NegativeInfinity;

    public static CudnnGraph Forward(SdpaShape p, long cudnnVersion, SdpaGraphOptions? options = null)
    {
        options ??= SdpaGraphOptions.Default;
        var g = new CudnnGraph();
        int b = p.Batch, s = p.Seq, hq = p.QueryHeads, hk = p.KvHeads, d = p.HeadDim;
        var (qDims, qStrides) = RowMajorHeads(b, s, hq, d, p.QueryRowHeads);
        var kLayout = RowMajorHeads(b, s, hk, d, p.KvRowHeads);
        var (ktDims, ktStrides) = Transposed(kLayout);
        var (vDims, vStrides) = RowMajorHeads(b, s, hk, d, p.KvRowHeads);
        var (statsDims, statsStrides) = StatsLayout(b, s, hq, p.QueryRowHeads);
        var q = g.Memory(Q, qDims, qStrides, CudnnDataType.BFLOAT16);
        var kt = g.Memory(K, ktDims, ktStrides, CudnnDataType.BFLOAT16);
        var v = g.Memory(V, vDims, vStrides, CudnnDataType.BFLOAT16);
        var o = g.Memory(O, qDims, qStrides, CudnnDataType.BFLOAT16);
        var stats = g.Memory(Stats, statsDims, statsStrides, CudnnDataType.FLOAT);
        var scale = g.Scalar("attn_scale", p.Scale, options.ScalarRank);
        var maskValue = g.Scalar("mask_value", MaskValue(cudnnVersion, options.LowestMask), options.ScalarRank);

        long[] scoreDims = [b, hq, s, s], scoreStrides = CudnnGraph.Packed(scoreDims);
        long[] rowDims = [b, hq, s, 1], rowStrides = CudnnGraph.Packed(rowDims);
        var scores = g.Matmul("bmm1 Q·Kt", q, kt, g.Virtual("S", scoreDims, scoreStrides));
        var scaled = g.Pointwise("attn_scale", CudnnPointwiseMode.MUL, scores, scale, g.VirtualLike("S_scaled", scores));
        var masked = CausalMask(g, scaled, maskValue, "S_masked", options.IndexCompute);
        var max = g.Reduce("softmax max", CudnnReduction.MAX, masked, g.Virtual("M", rowDims, rowStrides));
        var centred = g.Pointwise("softmax sub", CudnnPointwiseMode.SUB, masked, max, g.VirtualLike("S_minus_M", masked));
        var exp = g.Pointwise("softmax exp", CudnnPointwiseMode.EXP, centred, null, g.VirtualLike("E", masked));
        var sum = g.Reduce("softmax sum", CudnnReduction.ADD, exp, g.Virtual("L", rowDims, rowStrides));
        var logSum = g.Pointwise("softmax log", CudnnPointwiseMode.LOG, sum, null, g.VirtualLike("lnL", sum));
        g.Pointwise("softmax stats", CudnnPointwiseMode.ADD, max, logSum, stats);
        // P is the second matmul's A operand: the backend wants it in the inputs' type.
        var probs = g.Pointwise("softmax div", CudnnPointwiseMode.DIV, exp, sum, g.VirtualLike("P", masked, CudnnDataType.BFLOAT16));
        g.Matmul("bmm2 P·V", probs, v, o);
        return g;
    }

    public static CudnnGraph Backward(SdpaShape p, long cudnnVersion, SdpaGraphOptions? options = null)
    {
        options ??= SdpaGraphOptions.Default;
        var g = new CudnnGraph();
        int b = p.Batch, s = p.Seq, hq = p.QueryHeads, hk = p.KvHeads, d = p.HeadDim;
        var (qDims, qStrides) = RowMajorHeads(b, s, hq, d, p.QueryRowHeads);
        var kLayout = RowMajorHeads(b, s, hk, d, p.KvRowHeads);
        var (ktDims, ktStrides) = Transposed(kLayout);
        var (vtDims, vtStrides) = Transposed(kLayout);
        var (statsDims, statsStrides) = StatsLayout(b, s, hq, p.QueryRowHeads);
        var q = g.Memory(Q, qDims, qStrides, CudnnDataType.BFLOAT16);
        var kt = g.Memory(K, ktDims, ktStrides, CudnnDataType.BFLOAT16);
        var vt = g.Memory(V, vtDims, vtStrides, CudnnDataType.BFLOAT16);
        var o = g.Memory(O, qDims, qStrides, CudnnDataType.BFLOAT16);
        var dout = g.Memory(dO, qDims, qStrides, CudnnDataType.BFLOAT16);
        var stats = g.Memory(Stats, statsDims, statsStrides, CudnnDataType.FLOAT);
        var dq = g.Memory(dQ, qDims, qStrides, CudnnDataType.BFLOAT16);
        var gradLayout = p.PartialKv ? RowMajorHeads(b, s, hk, d) : kLayout;
        var dk = g.Memory(dK, gradLayout.Dims, gradLayout.Strides, CudnnDataType.BFLOAT16);
        var dv = g.Memory(dV, gradLayout.Dims, gradLayout.Strides, CudnnDataType.BFLOAT16);
        long[] rowDims = [b, hq, s, 1], rowStrides = CudnnGraph.Packed(rowDims);
        long[] accDims = [b, hq, s, d];
        var softmaxSum = g.Memory(SoftmaxSum, rowDims, rowStrides, CudnnDataType.FLOAT);
        var one = g.Scalar("one", 1f, options.ScalarRank);
        var scale = g.Scalar("attn_scale", p.Scale, options.ScalarRank);
        var maskValue = g.Scalar("mask_value", MaskValue(cudnnVersion, options.LowestMask), options.ScalarRank);

        // Δ = Σ_d dO∘O, stored (the engine reads it per key tile).
        var dOO = g.Pointwise("mul dO·O", CudnnPointwiseMode.MUL, dout, o, g.Virtual("dO_O", qDims, qStrides));
        var rowSum = g.Reduce("reduce dO·O", CudnnReduction.ADD, dOO, g.Virtual("dO_O_sum", rowDims, rowStrides));
        g.Pointwise("softmax_sum", CudnnPointwiseMode.MUL, rowSum, one, softmaxSum);

        // P recomputed from the saved statistics.
        long[] scoreDims = [b, hq, s, s], scoreStrides = CudnnGraph.Packed(scoreDims);
        var scores = g.Matmul("matmul Q·Kt", q, kt, g.Virtual("S", scoreDims, scoreStrides));
        var scaled = g.Pointwise("mul S·scale", CudnnPointwiseMode.MUL, scores, scale, g.VirtualLike("S_scaled", scores));
        var centred = g.Pointwise("sub S−Stats", CudnnPointwiseMode.SUB, scaled, stats, g.VirtualLike("S_minus_stats", scores));
        var masked = CausalMask(g, centred, maskValue, "S_masked", options.IndexCompute);
        var probs = g.Pointwise("exp", CudnnPointwiseMode.EXP, masked, null, g.VirtualLike("P", scores));

        // [B, Hq, S_kv, S_q] views of P and dS, with the S_q·S_kv tensors' strides transposed.
        long[] tDims = [b, hq, s, s], tStrides = [scoreStrides[0], scoreStrides[1], 1, s];
        var probsT = g.Reshape("reshape P", probs, g.Virtual("Pt", tDims, tStrides, CudnnDataType.BFLOAT16));
        PerKvHead(g, "matmul Pt·dO", probsT, dout, dv, hq, hk, s, d);

        var dP = g.Matmul("matmul dO·Vt", dout, vt, g.Virtual("dP", scoreDims, scoreStrides));
        var dPc = g.Pointwise("sub dP−Δ", CudnnPointwiseMode.SUB, dP, softmaxSum, g.VirtualLike("dP_minus_sum", dP));
        var dS = g.Pointwise("mul ·P", CudnnPointwiseMode.MUL, dPc, probs, g.VirtualLike("dS_unscaled", dP));
        var dSs = g.Pointwise("mul dS·scale", CudnnPointwiseMode.MUL, dS, scale, g.VirtualLike("dS", dP));
        var dST = g.Reshape("reshape dS", dSs, g.Virtual("dSt", tDims, tStrides, CudnnDataType.BFLOAT16));
        PerKvHead(g, "matmul dSt·Q", dST, q, dk, hq, hk, s, d);

        var k = g.Reshape("reshape Kt", kt, g.Virtual("K_view", kLayout.Dims, kLayout.Strides, CudnnDataType.BFLOAT16));
        if (options.DeterministicDq)
        {
            g.Matmul("matmul dS·K", dSs, k, dq);
            return g;
        }
        var dqAccum = g.Memory(DqAccum, accDims, CudnnGraph.Packed(accDims), CudnnDataType.FLOAT);
        g.Matmul("matmul dS·K", dSs, k, dqAccum);
        g.Pointwise("identity dQ", CudnnPointwiseMode.IDENTITY, dqAccum, null, dq);
        return g;
    }

    // Top-left causal mask: keeps score (row i, column j) where i ≥ j, else the mask value.
    static CudnnTensor CausalMask(CudnnGraph g, CudnnTensor scores, CudnnTensor maskValue, string name, CudnnDataType indexCompute)
    {
        var row = g.Pointwise("gen_row_index", CudnnPointwiseMode.GEN_INDEX, scores, null, g.VirtualLike("row", scores, CudnnDataType.INT32),
            compute: indexCompute, axis: 2);
        var col = g.Pointwise("gen_col_index", CudnnPointwiseMode.GEN_INDEX, scores, null, g.VirtualLike("col", scores, CudnnDataType.INT32),
            compute: indexCompute, axis: 3);
        var keep = g.Pointwise("row>=col", CudnnPointwiseMode.CMP_GE, row, col, g.VirtualLike("causal", scores, CudnnDataType.BOOLEAN),
            compute: CudnnDataType.BOOLEAN);
        return g.Pointwise("causal select", CudnnPointwiseMode.BINARY_SELECT, scores, maskValue, g.VirtualLike(name, scores), t: keep);
    }

    // out[B, Hkv, S_kv, D] = a[B, Hq, S_kv, S_q]·bm[B, Hq, S_q, D], summed over each KV head's group of query heads.
    static void PerKvHead(CudnnGraph g, string name, CudnnTensor a, CudnnTensor bm, CudnnTensor output, int hq, int hk, int s, int d)
    {
        if (hq == hk) { g.Matmul(name, a, bm, output); return; }
        long[] fullDims = [a.Dims[0], hq, s, d];
        var full = g.Matmul(name, a, bm, g.Virtual(output.Name + "_per_query_head", fullDims, CudnnGraph.Packed(fullDims), CudnnDataType.BFLOAT16));
        g.Reduce("sum " + output.Name + " over group", CudnnReduction.ADD, full, output);
    }
}
