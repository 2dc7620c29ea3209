namespace FineTune.Engine.Cuda;

public sealed partial class CudaBackend
{
    public void ScatterRows(Tensor dst, Tensor src, Tensor rows)
    {
        Need(rows, DType.I32);
        int cols = src.Cols;
        if (dst.Cols != cols || src.Rows != rows.Length) throw new ArgumentException($"scatter of {src} by {rows} into {dst}: shapes do not agree");
        LaunchFlat("kv_cache.cu", "scatter_rows", src.Length, [P(dst), Dt(dst), P(src), Dt(src), P(rows), rows.Length, cols]);
    }

    public void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor slots, Tensor positions, CachedAttentionShape s)
    {
        Need(slots, DType.I32);
        Need(positions, DType.I32);
        if (s.QueryHeads % s.KvHeads != 0) throw new ArgumentException($"{s.QueryHeads} query heads are not a multiple of {s.KvHeads} KV heads");
        if (s.HeadDim > MaxHeadDim) throw new ArgumentException($"head_dim {s.HeadDim} exceeds the CUDA attention kernel's limit of {MaxHeadDim}");
        if (q.Length != (long)s.Tokens * s.QueryHeads * s.HeadDim || output.Length != q.Length) throw new ArgumentException($"q {q} / output {output} do not match {s}");
        if (kCache.Length != (long)s.Slots * s.Capacity * s.KvHeads * s.HeadDim || vCache.Length != kCache.Length) throw new ArgumentException($"caches {kCache} {vCache} do not match {s}");
        if (s.Tokens == 0) return;
        Launch("kv_cache.cu", "cached_attention_forward", ((s.Tokens + AttentionRowsPerBlock - 1) / AttentionRowsPerBlock, s.QueryHeads, 1), AttentionRowsPerBlock * 32,
        [
            P(output), Dt(output), P(q), Dt(q), P(kCache), Dt(kCache), P(vCache), Dt(vCache), P(slots), P(positions),
            s.Tokens, s.Capacity, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
        ]);
    }

    public void ArgMax(Tensor x, Tensor output)
    {
        Need(output, DType.I32);
        if (output.Length != x.Rows) throw new ArgumentException($"argmax of {x} into {output}: one output per row");
        if (x.Rows == 0) return;
        Launch("argmax.cu", "argmax_rows", (x.Rows, 1, 1), 256, [P(x), Dt(x), P(output), x.Cols]);
    }
}
