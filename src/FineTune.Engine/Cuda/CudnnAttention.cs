namespace FineTune.Engine.Cuda;

/// <summary>
/// Causal GQA attention through cuDNN's fused flash-attention engines (issue 13), on FineTune's bf16 layouts:
/// Q/O [B·S, Hq·D], K/V [B·S, Hkv·D], lse f32 [B, Hq, S]. <see cref="CudaBackend"/> takes it for unpacked causal
/// layers (<see cref="CudaBackend.AttentionKernels"/>); the device checks' `cudnn` command compares it with FineTune's
/// flash kernels. One plan per shape, direction and graph variant, built on first use; each call's workspace comes
/// from the device's caching allocator and goes back to it when the call is queued (stream order keeps it valid).
/// </summary>
internal sealed class CudnnAttention : IDisposable
{
    readonly CudaDevice _dev;
    readonly Dictionary<(SdpaShape Shape, bool Backward, SdpaGraphOptions Options), CudnnPlan> _plans = [];

    public Cudnn Library { get; }

    /// <param name="libraryPath">A libcudnn file to load; null searches (<see cref="Cudnn.Load"/>).</param>
    public CudnnAttention(CudaDevice dev, string? libraryPath = null)
    {
        _dev = dev;
        dev.MakeCurrent();
        Library = Cudnn.Load(libraryPath);
        Library.SetStream(dev.Stream);
    }

    /// <summary>The shape's plan, built (and cached) on first use; throws <see cref="CudnnException"/> when cuDNN refuses.</summary>
    public CudnnPlan Plan(SdpaShape s, bool backward, SdpaGraphOptions? options = null)
    {
        options ??= SdpaGraphOptions.Default;
        if (_plans.TryGetValue((s, backward, options), out var plan)) return plan;
        var graph = backward ? CudnnSdpaGraphs.Backward(s, Library.Version, options) : CudnnSdpaGraphs.Forward(s, Library.Version, options);
        plan = new CudnnPlan(Library, graph, $"cuDNN SDPA {(backward ? "backward" : "forward")} {s} ({options})", options.Engine);
        _plans[(s, backward, options)] = plan;
        return plan;
    }

    /// <summary>O = softmax(causal(Q·Kᵀ·scale))·V and lse = the softmax's log-sum-exp per (batch, head, row).</summary>
    public void Forward(ulong o, ulong lse, ulong q, ulong k, ulong v, SdpaShape s, SdpaGraphOptions? options = null)
    {
        var plan = Plan(s, backward: false, options);
        ulong ws = _dev.Allocate(Math.Max(plan.WorkspaceBytes, 256));
        try
        {
            plan.Execute(new Dictionary<string, ulong>
            {
                [CudnnSdpaGraphs.Q] = q, [CudnnSdpaGraphs.K] = k, [CudnnSdpaGraphs.V] = v,
                [CudnnSdpaGraphs.O] = o, [CudnnSdpaGraphs.Stats] = lse,
            }, ws, $"cuDNN SDPA forward {s}");
        }
        finally { _dev.Free(ws); }
        if (_dev.Profiling) _dev.Mark("cudnn_sdpa_forward");
    }

    /// <summary>Device bytes a backward call borrows for its workspace (the plan's, Δ, and the f32 dQ accumulator unless deterministic).</summary>
    public long BackwardWorkspaceBytes(SdpaShape s, SdpaGraphOptions? options = null)
    {
        options ??= SdpaGraphOptions.Default;
        var plan = Plan(s, backward: true, options);
        long sumBytes = Align((long)s.Batch * s.QueryHeads * s.Seq * sizeof(float));
        long accBytes = options.DeterministicDq ? 0 : (long)s.Batch * s.QueryHeads * s.Seq * s.HeadDim * sizeof(float);
        return Align(plan.WorkspaceBytes) + sumBytes + accBytes;
    }

    /// <summary>The bytes one <see cref="Backward"/> call takes as its workspace (what it borrows when given none).
    /// A deterministic call has no dQ accumulator but still points one, 256 bytes, past Δ.</summary>
    public long BackwardCallBytes(SdpaShape s, SdpaGraphOptions? options = null) =>
        BackwardWorkspaceBytes(s, options) + ((options ?? SdpaGraphOptions.Default).DeterministicDq ? 256 : 0);

    /// <summary>
    /// dQ, dK, dV (overwritten) from dO, the forward's O and lse, and Q, K, V. The graph's f32 intermediates
    /// (Δ = rowsum(dO∘O) and, unless <see cref="SdpaGraphOptions.DeterministicDq"/>, the dQ accumulator, zeroed first)
    /// sit after the plan's workspace. <paramref name="workspace"/>: device memory of at least
    /// <see cref="BackwardCallBytes"/> to hold all of them (0: borrowed from the allocator for the call).
    /// </summary>
    public void Backward(ulong dq, ulong dk, ulong dv, ulong dout, ulong o, ulong lse, ulong q, ulong k, ulong v, SdpaShape s,
        SdpaGraphOptions? options = null, ulong workspace = 0)
    {
        var plan = Plan(s, backward: true, options);
        long planBytes = Align(plan.WorkspaceBytes);
        long sumBytes = Align((long)s.Batch * s.QueryHeads * s.Seq * sizeof(float));
        options ??= SdpaGraphOptions.Default;
        long accBytes = options.DeterministicDq ? 0 : (long)s.Batch * s.QueryHeads * s.Seq * s.HeadDim * sizeof(float);
        ulong ws = workspace != 0 ? workspace : _dev.Allocate(BackwardCallBytes(s, options));
        try
        {
            ulong softmaxSum = ws + (ulong)planBytes, dqAccum = softmaxSum + (ulong)sumBytes;
            if (accBytes > 0) _dev.Zero(dqAccum, accBytes);
            plan.Execute(new Dictionary<string, ulong>
            {
                [CudnnSdpaGraphs.Q] = q, [CudnnSdpaGraphs.K] = k, [CudnnSdpaGraphs.V] = v, [CudnnSdpaGraphs.O] = o,
                [CudnnSdpaGraphs.dO] = dout, [CudnnSdpaGraphs.Stats] = lse,
                [CudnnSdpaGraphs.dQ] = dq, [CudnnSdpaGraphs.dK] = dk, [CudnnSdpaGraphs.dV] = dv,
                [CudnnSdpaGraphs.SoftmaxSum] = softmaxSum, [CudnnSdpaGraphs.DqAccum] = dqAccum,
            }, ws, $"cuDNN SDPA backward {s}");
        }
        finally
        {
            if (workspace == 0) _dev.Free(ws);
        }
        if (_dev.Profiling) _dev.Mark("cudnn_sdpa_backward");
    }

    /// <summary>
    /// The deterministic backward (<see cref="SdpaGraphOptions.DeterministicDq"/>) of <paramref name="s"/> in slices
    /// whose workspace stays within <paramref name="limitBytes"/> (the dP workspace grows with B·Hq·S²): the largest
    /// slice of sequences and key/value heads that fits (<see cref="SdpaShape.Slice"/>; the slices give the one call's
    /// bits), else, for sequences so long that one key/value head's group does not fit, the largest slice of one
    /// sequence and some of one group's query heads (<see cref="SdpaShape.HeadSlice"/>: their dK/dV partials are summed
    /// afterwards, so the bits differ from one call's by that rounding). Chosen from the workspace cuDNN states for each
    /// candidate. Null when not even one query head fits: the caller runs another backward.
    /// With <paramref name="fillTiles"/> &gt; 0, a slice holds no more sequences than the fewest whose query tiles
    /// (sequences × heads × ⌈S/128⌉) number at least that many (the caller passes four times the multiprocessors): more
    /// sequences a call would hardly fill the GPU better, only multiply the workspace (4 × 2048 tokens of a 7B model:
    /// 0.9 GiB in one call, 0.45 GiB in two). Measured on the H200 (B4 T2048 H32/8): one call 0.94 ms, four of one
    /// sequence 1.22 ms.
    /// </summary>
    public SdpaShape? DeterministicSlice(SdpaShape s, long limitBytes, int fillTiles = 0)
    {
        if (_slices.TryGetValue((s, limitBytes, fillTiles), out var known)) return known;
        var options = SdpaGraphOptions.Default with { DeterministicDq = true };
        int group = s.QueryHeads / s.KvHeads;
        long tilesPerSequence = (long)s.QueryHeads * ((s.Seq + 127) / 128);
        int mostSequences = fillTiles > 0 ? Divisors(s.Batch).First(b => b == s.Batch || b * tilesPerSequence >= fillTiles) : s.Batch;
        // Most work first: sequences × key/value heads, then one sequence and fewer query heads.
        var candidates = Divisors(s.Batch).Where(b => b <= mostSequences).SelectMany(b => Divisors(s.KvHeads).Select(h => s.Slice(b, h)))
            .OrderByDescending(c => (long)c.Batch * c.KvHeads).ThenByDescending(c => c.KvHeads)
            .Concat(Divisors(group).Where(n => n < group).OrderDescending().Select(s.HeadSlice));
        SdpaShape? chosen = null;
        foreach (var slice in candidates)
        {
            // The dP workspace alone is B·Hq·S²·2 bytes: skip plans that cannot fit.
            if ((long)slice.Batch * slice.QueryHeads * s.Seq * s.Seq * 2 > limitBytes) continue;
            if (BackwardWorkspaceBytes(slice, options) + PartialBytes(slice) <= limitBytes) { chosen = slice; break; }
        }
        _slices[(s, limitBytes, fillTiles)] = chosen;
        return chosen;
    }

    readonly Dictionary<(SdpaShape, long, int), SdpaShape?> _slices = [];

    static IEnumerable<int> Divisors(int n) => Enumerable.Range(1, n).Where(d => n % d == 0);

    // A head slice's dK and dV partials of one key/value head: bf16 [group / n][S][D] each.
    static long PartialBytes(SdpaShape slice) => slice.PartialKv ? 2L * slice.Seq * slice.HeadDim * 2 : 0;

    /// <summary>
    /// <see cref="Backward"/> without atomics, as consecutive calls on the slices of <paramref name="slice"/>'s size
    /// (from <see cref="DeterministicSlice"/>): each reads and writes its own sequences' and heads' elements of the
    /// whole problem's buffers. Head slices write their dK/dV partials into scratch, which
    /// <paramref name="sumPartials"/> (dk, dv, dk partials, dv partials, count, rows, row stride in elements) adds up
    /// into the key/value head's columns once its group is done. <paramref name="workspace"/>: as in <see cref="Backward"/>,
    /// for one slice's call (every call reuses it).
    /// </summary>
    public void BackwardDeterministic(ulong dq, ulong dk, ulong dv, ulong dout, ulong o, ulong lse, ulong q, ulong k, ulong v, SdpaShape whole,
        SdpaShape slice, Action<ulong, ulong, ulong, ulong, int, long, int> sumPartials, ulong workspace = 0)
    {
        var options = SdpaGraphOptions.Default with { DeterministicDq = true };
        if (!slice.PartialKv)
        {
            for (int b0 = 0; b0 < whole.Batch; b0 += slice.Batch)
                for (int kv0 = 0; kv0 < whole.KvHeads; kv0 += slice.KvHeads)
                {
                    var (qo, kvo, lo) = whole.Offsets(b0, kv0);
                    ulong Q(ulong p) => p + (ulong)(qo * 2);
                    ulong K(ulong p) => p + (ulong)(kvo * 2);
                    Backward(Q(dq), K(dk), K(dv), Q(dout), Q(o), lse + (ulong)(lo * 4), Q(q), K(k), K(v), slice, options, workspace);
                }
            return;
        }
        int group = whole.QueryHeads / whole.KvHeads, parts = group / slice.QueryHeads;
        long partElems = (long)whole.Seq * whole.HeadDim;
        ulong dkParts = _dev.Allocate(parts * partElems * 2), dvParts = _dev.Allocate(parts * partElems * 2);
        try
        {
            for (int b0 = 0; b0 < whole.Batch; b0++)
                for (int kv0 = 0; kv0 < whole.KvHeads; kv0++)
                {
                    for (int part = 0; part < parts; part++)
                    {
                        var (qo, kvo, lo) = whole.HeadOffsets(b0, kv0 * group + part * slice.QueryHeads);
                        ulong Q(ulong p) => p + (ulong)(qo * 2);
                        ulong K(ulong p) => p + (ulong)(kvo * 2);
                        ulong partOffset = (ulong)(part * partElems * 2);
                        Backward(Q(dq), dkParts + partOffset, dvParts + partOffset, Q(dout), Q(o), lse + (ulong)(lo * 4), Q(q), K(k), K(v), slice, options, workspace);
                    }
                    ulong kvAt = (ulong)(whole.Offsets(b0, kv0).Kv * 2);
                    sumPartials(dk + kvAt, dv + kvAt, dkParts, dvParts, parts, whole.Seq, whole.KvRowHeads * whole.HeadDim);
                }
        }
        finally
        {
            _dev.Free(dkParts);
            _dev.Free(dvParts);
        }
    }

    static long Align(long bytes) => (bytes + 255) / 256 * 256;

    public void Dispose()
    {
        foreach (var p in _plans.Values) p.Dispose();
        _plans.Clear();
        Library.Dispose();
    }
}
