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

    const int SplitMaxHeadDim = 128, SplitMaxGroup = 16; // SPLIT_MAX_D, SPLIT_MAX_GROUP in kv_cache.cu
    const int SplitMaxTokens = 512;
    const int SplitMinWarps = 4; // SPLIT_THREADS_MIN / 32 in kv_cache.cu

    /// <summary>
    /// Split-K decode attention (<c>cached_attention_split</c> + <c>cached_attention_combine</c>) for steps of up to
    /// 512 tokens at head_dim ≤ 128 and GQA groups ≤ 16; off (FINETUNE_SPLITK_ATTENTION=0, or false here) keeps every
    /// step on the warp-per-(token, head) kernel.
    /// </summary>
    public bool UseSplitKAttention { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_SPLITK_ATTENTION") != "0";

    /// <summary>
    /// The split-K attention and its combine as one launch (the last block of each (token, kv head) combines, in split
    /// order: the bits of the separate combine); FINETUNE_SPLITK_ONE_KERNEL=0 (or false here) launches
    /// <c>cached_attention_combine</c> after the split kernel instead.
    /// </summary>
    public bool UseSplitKOneKernel { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_SPLITK_ONE_KERNEL") != "0";

    // The split kernel's partial results. Grown, never shrunk, and an outgrown block is kept until the backend is
    // disposed: a captured CUDA graph may still name it.
    ulong _splitPartials;
    long _splitPartialsBytes;
    readonly List<ulong> _retiredPartials = [];

    // The one-kernel form's arrival counters, one per (token, kv head): zeroed when allocated, and each launch leaves
    // them at zero again.
    ulong _splitCounters;
    long _splitCountersBytes;

    public void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape s)
    {
        CheckCachedAttention(output, q, kCache, vCache, sequences, positions, blockTables, s);
        if (s.Tokens == 0) return;
        int group = s.QueryHeads / s.KvHeads;
        if (UseSplitKAttention && s.Tokens <= SplitMaxTokens && s.HeadDim <= SplitMaxHeadDim && group <= SplitMaxGroup)
        {
            int splits = SplitCount(s.Tokens, s.KvHeads);
            long bytes = (long)s.Tokens * s.QueryHeads * splits * (s.HeadDim + 2) * sizeof(float);
            ulong part = SplitPartials(bytes);
            ulong counters = UseSplitKOneKernel ? SplitCounters((long)s.Tokens * s.KvHeads * sizeof(uint)) : 0UL;
            LaunchDependent("kv_cache.cu", "cached_attention_split", (splits, s.KvHeads, s.Tokens), Math.Max(group, SplitMinWarps) * 32,
            [
                part, P(q), Dt(q), P(kCache), Dt(kCache), P(vCache), Dt(vCache), P(sequences), P(positions), P(blockTables),
                s.BlockSize, s.TableWidth, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
                P(output), Dt(output), counters,
            ]);
            if (counters == 0)
                LaunchDependent("kv_cache.cu", "cached_attention_combine", (s.Tokens, s.QueryHeads, 1), 32, [P(output), Dt(output), part, s.QueryHeads, s.HeadDim, splits]);
            return;
        }
        Launch("kv_cache.cu", "cached_attention_forward", ((s.Tokens + AttentionRowsPerBlock - 1) / AttentionRowsPerBlock, s.QueryHeads, 1), AttentionRowsPerBlock * 32,
        [
            P(output), Dt(output), P(q), Dt(q), P(kCache), Dt(kCache), P(vCache), Dt(vCache), P(sequences), P(positions), P(blockTables),
            s.Tokens, s.BlockSize, s.TableWidth, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
        ]);
    }

    void CheckCachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape s)
    {
        Need(sequences, DType.I32);
        Need(positions, DType.I32);
        Need(blockTables, DType.I32);
        if (s.QueryHeads % s.KvHeads != 0) throw new ArgumentException($"{s.QueryHeads} query heads are not a multiple of {s.KvHeads} KV heads");
        if (s.HeadDim > MaxHeadDim) throw new ArgumentException($"head_dim {s.HeadDim} exceeds the CUDA attention kernel's limit of {MaxHeadDim}");
        if (q.Length != (long)s.Tokens * s.QueryHeads * s.HeadDim || output.Length != q.Length) throw new ArgumentException($"q {q} / output {output} do not match {s}");
        if (kCache.Length != (long)s.Blocks * s.BlockSize * s.KvHeads * s.HeadDim || vCache.Length != kCache.Length) throw new ArgumentException($"caches {kCache} {vCache} do not match {s}");
        if (blockTables.Length % s.TableWidth != 0) throw new ArgumentException($"block tables {blockTables} are not rows of {s.TableWidth}");
    }

    /// <summary>
    /// Key ranges per (token, kv head): enough blocks for two per SM, at most 32. A function of the step's shape only
    /// (never of positions), so a graph captured for a decode step launches the right grid at every length.
    /// </summary>
    int SplitCount(int tokens, int kvHeads) => Math.Clamp((2 * _dev.Info.Multiprocessors + tokens * kvHeads - 1) / (tokens * kvHeads), 1, 32);

    ulong SplitPartials(long bytes) => Grown(ref _splitPartials, ref _splitPartialsBytes, bytes);

    ulong SplitCounters(long bytes) => ZeroedScratch(ref _splitCounters, ref _splitCountersBytes, bytes);

    // As Grown, and zeroed when (re)allocated: a kernel's arrival counters, which each launch leaves at zero.
    ulong ZeroedScratch(ref ulong block, ref long capacity, long bytes)
    {
        bool grows = bytes > capacity;
        ulong b = Grown(ref block, ref capacity, bytes);
        if (grows) _dev.Zero(b, capacity);
        return b;
    }

    // A scratch block grown (doubling), never shrunk; an outgrown block is kept until disposal, as a graph may name it.
    ulong Grown(ref ulong block, ref long capacity, long bytes)
    {
        if (bytes <= capacity) return block;
        if (block != 0) _retiredPartials.Add(block);
        capacity = Math.Max(bytes, 2 * capacity);
        block = _dev.Allocate(capacity);
        return block;
    }

    public void ArgMax(Tensor x, Tensor output)
    {
        Need(output, DType.I32);
        if (output.Length != x.Rows) throw new ArgumentException($"argmax of {x} into {output}: one output per row");
        if (x.Rows == 0) return;
        // Few long rows (a decode step's logits): split each row over blocks so the read uses the whole device.
        int parts = Math.Clamp(2 * _dev.Info.Multiprocessors / x.Rows, 1, 64);
        if (parts > 1 && x.Cols >= 4096)
        {
            int span = (x.Cols + parts - 1) / parts;
            ulong scratch = ArgMaxScratch((long)x.Rows * parts * 8);
            ulong partI = scratch + (ulong)((long)x.Rows * parts * 4);
            ulong counters = ZeroedScratch(ref _argMaxCounters, ref _argMaxCountersBytes, (long)x.Rows * sizeof(uint));
            LaunchDependent("argmax.cu", "argmax_partial", (parts, x.Rows, 1), 256, [P(x), Dt(x), scratch, partI, x.Cols, span, P(output), counters]);
            return;
        }
        Launch("argmax.cu", "argmax_rows", (x.Rows, 1, 1), 256, [P(x), Dt(x), P(output), x.Cols]);
    }

    // argmax_partial's (value, index) pairs; grown, never shrunk (an outgrown block is kept until disposal, as a graph
    // may name it).
    ulong _argMaxScratch;
    long _argMaxScratchBytes;
    // argmax_partial's arrival counters, one per row (zeroed when allocated; each launch leaves them at zero).
    ulong _argMaxCounters;
    long _argMaxCountersBytes;

    ulong ArgMaxScratch(long bytes) => Grown(ref _argMaxScratch, ref _argMaxScratchBytes, bytes);

    const int SampleThreads = 1024; // SAMPLE_THREADS in sampling.cu

    public void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch)
    {
        Need(parameters, DType.I32); Need(seen, DType.I32); Need(output, DType.I32); Need(scratch, DType.F32);
        int rows = logits.Rows, v = logits.Cols;
        if (output.Length != rows || parameters.Length < (long)rows * Sampling.SamplingRow.Ints || scratch.Length < (long)rows * v)
            throw new ArgumentException($"sampling of {logits} with {parameters} into {output} (scratch {scratch}): one parameter row and one output per logit row");
        if (rows == 0) return;
        Launch("sampling.cu", "sample_rows", (rows, 1, 1), SampleThreads, [P(logits), Dt(logits), P(parameters), P(seen), P(output), P(scratch), v]);
    }
}
