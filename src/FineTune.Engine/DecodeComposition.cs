namespace FineTune.Engine;

/// <summary>
/// The definitions of <see cref="IBackend"/>'s fused decode-layer operations as compositions of its plain ones: what
/// every backend runs unless it fuses them (CUDA does for steps of one or two tokens, with the same bits), and what a
/// fused kernel is checked against. The norms here are llama-style (weight offset 0).
/// </summary>
public static class DecodeComposition
{
    public static void NormMatMulShared(IBackend b, IReadOnlyList<Tensor> cs, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps, IReadOnlyList<Tensor> bs)
    {
        b.RmsNorm(ln, rstd, x, normWeight, eps);
        b.MatMulShared(cs, ln, bs);
    }

    public static void NormSwiGluMatMul(IBackend b, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor x, Tensor normWeight, float eps,
        Tensor gateWeight, Tensor upWeight)
    {
        b.RmsNorm(ln, rstd, x, normWeight, eps);
        b.MatMulShared([gate, up], ln, [gateWeight, upWeight]);
        b.SwiGlu(h, gate, up);
    }

    public static void MatMulResidual(IBackend b, Tensor y, Tensor a, Tensor weight, Tensor residual)
    {
        b.MatMul(y, a, false, weight, true);
        b.Add(y, residual);
    }

    public static void AttentionOutputMlp(IBackend b, Tensor y, Tensor mid, Tensor h, Tensor gate, Tensor up, Tensor ln, Tensor rstd, Tensor att,
        Tensor oWeight, Tensor x, Tensor normWeight, float eps, Tensor gateWeight, Tensor upWeight, Tensor downWeight)
    {
        b.MatMulResidual(mid, att, oWeight, x);
        b.NormSwiGluMatMul(h, gate, up, ln, rstd, mid, normWeight, eps, gateWeight, upWeight);
        b.MatMulResidual(y, h, downWeight, mid);
    }

    public static void QkRopeCache(IBackend b, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm, Tensor? qRstd, Tensor? kRstd,
        float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows)
    {
        if (qNorm is not null || kNorm is not null)
        {
            if (qNorm is null || kNorm is null || qRstd is null || kRstd is null)
                throw new ArgumentException("q and k are normed together (q_norm and k_norm, each with its rstd) or not at all");
            b.RmsNorm(q, qRstd, qIn, qNorm, eps);
            b.RmsNorm(k, kRstd, kIn, kNorm, eps);
        }
        else if (!SameStorage(q, qIn) || !SameStorage(k, kIn))
            throw new ArgumentException("without q/k norms q and k are rotated in place: pass qIn = q and kIn = k");
        b.Rope(q, positions, cos, sin, headDim, inverse: false);
        b.Rope(k, positions, cos, sin, headDim, inverse: false);
        b.ScatterRows(kCache, k, cacheRows);
        b.ScatterRows(vCache, v, cacheRows);
    }

    public static void QkRopeCacheAttention(IBackend b, Tensor output, Tensor q, Tensor k, Tensor qIn, Tensor kIn, Tensor v, Tensor? qNorm, Tensor? kNorm,
        Tensor? qRstd, Tensor? kRstd, float eps, Tensor positions, Tensor cos, Tensor sin, int headDim, Tensor kCache, Tensor vCache, Tensor cacheRows,
        Tensor sequences, Tensor blockTables, CachedAttentionShape shape)
    {
        b.QkRopeCache(q, k, qIn, kIn, v, qNorm, kNorm, qRstd, kRstd, eps, positions, cos, sin, headDim, kCache, vCache, cacheRows);
        b.CachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, shape);
    }

    /// <summary>A whole decode layer: ln1 + q/k/v, q/k norms + RoPE + cache + attention, o_proj + MLP (CausalLM's fused layer).</summary>
    public static void DecodeLayer(IBackend b, DecodeLayerTensors t)
    {
        b.NormMatMulShared([t.QIn, t.KIn, t.V], t.Ln1, t.Rstd1, t.X, t.InputNorm, t.Eps, [t.QWeight, t.KWeight, t.VWeight]);
        b.QkRopeCacheAttention(t.Att, t.Q, t.K, t.QIn, t.KIn, t.V, t.QNorm, t.KNorm, t.QRstd, t.KRstd, t.Eps, t.Positions, t.Cos, t.Sin, t.HeadDim,
            t.KCache, t.VCache, t.CacheRows, t.Sequences, t.BlockTables, t.Shape);
        b.AttentionOutputMlp(t.Y, t.Mid, t.H, t.Gate, t.Up, t.Ln2, t.Rstd2, t.Att, t.OWeight, t.X, t.PostNorm, t.Eps, t.GateWeight, t.UpWeight, t.DownWeight);
    }

    /// <summary>Whether two tensors name the same elements (views of one buffer at one offset).</summary>
    public static bool SameStorage(Tensor a, Tensor b) => a.Buffer == b.Buffer && a.Offset == b.Offset && a.Length == b.Length;
}
