namespace FineTune.Engine.Cuda;

public sealed partial class CudaBackend
{
    const int AttentionRowsPerBlock = 8; // ROWS_PER_BLOCK in attention.cu
    const int MaxHeadDim = 256;          // MAX_D in attention.cu

    static void CheckAttention(Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        if (s.QueryHeads % s.KvHeads != 0) throw new ArgumentException($"{s.QueryHeads} query heads are not a multiple of {s.KvHeads} KV heads");
        if (s.HeadDim > MaxHeadDim) throw new ArgumentException($"head_dim {s.HeadDim} exceeds the CUDA attention kernel's limit of {MaxHeadDim}");
        if (q.Length != (long)s.Batch * s.QueryLen * s.QueryHeads * s.HeadDim) throw new ArgumentException($"q {q} does not match {s}");
        if (k.Length < (long)s.Batch * s.KvCapacity * s.KvHeads * s.HeadDim || v.Length != k.Length) throw new ArgumentException($"k/v {k} {v} do not match {s}");
        if (segmentIds.Length < (long)s.Batch * s.KvCapacity) throw new ArgumentException($"segment ids {segmentIds} do not match {s}");
        if (s.KeyLen > s.KvCapacity || s.QueryLen > s.KeyLen) throw new ArgumentException($"invalid attention shape {s}");
        Need(segmentIds, DType.I32);
    }

    /// <summary>Off: always the simple kernels (the device checks compare both paths).</summary>
    public bool UseFlashAttention { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_FLASH_ATTENTION") != "0";

    /// <summary>
    /// Shape of the flash forward kernel; null takes <see cref="FlashForwardTiles.For"/>'s default for the head size.
    /// `FINETUNE_FLASH_FORWARD=w4s1` (any instantiated shape) sets it from the environment.
    /// </summary>
    public FlashForwardTiles? FlashForward { get; set; } = FlashForwardTiles.Parse(Environment.GetEnvironmentVariable("FINETUNE_FLASH_FORWARD"));

    // Every variant (causal, GQA, packed segments, sliding window, soft-cap) runs on the flash kernels when the
    // tensors are BF16 and the head size is one they are instantiated for.
    bool Flash(int headDim, params Tensor[] tensors) =>
        UseFlashAttention && headDim is 64 or 128 or 256 && tensors.All(t => t.DType == DType.BF16);

    /// <summary>
    /// Which kernels run the unpacked causal layers (<see cref="AttentionShape.Unpacked"/>, no window or soft-cap, head
    /// size 64 or 128, bf16): see <see cref="Cuda.AttentionKernels"/>. `FINETUNE_ATTENTION=flash|cudnn|cudnn-fast` sets it
    /// from the environment. Packed sequences, windows, soft-caps and head size 256 always take the flash kernels.
    /// </summary>
    public AttentionKernels AttentionKernels { get; set; } = AttentionKernelsSetting.Parse(Environment.GetEnvironmentVariable("FINETUNE_ATTENTION"));

    /// <summary>
    /// Under <see cref="AttentionKernels.Cudnn"/>, the most device bytes one call of cuDNN's deterministic backward may
    /// borrow (its dP workspace is B·Hq·S²·2 bytes): a larger problem runs in slices of sequences and key/value heads,
    /// and one whose single sequence and head does not fit takes the flash backward. `FINETUNE_CUDNN_WORKSPACE_MIB`.
    /// </summary>
    public long CudnnDeterministicWorkspaceLimit { get; set; } =
        (long.TryParse(Environment.GetEnvironmentVariable("FINETUNE_CUDNN_WORKSPACE_MIB"), out var mib) ? mib : 1024) << 20;

    /// <summary>
    /// The deterministic backward runs no more sequences a call than fill the GPU (its workspace then grows with those,
    /// not the batch: <see cref="CudnnAttention.DeterministicSlice"/>); `FINETUNE_CUDNN_SEQUENCE_SLICES=0` takes the
    /// widest slice within the limit instead. Both give the same bits.
    /// </summary>
    public bool CudnnSequenceSlices { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_CUDNN_SEQUENCE_SLICES") != "0";

    CudnnAttention? _cudnn;
    bool _cudnnFailed;
    readonly HashSet<(SdpaShape, bool)> _cudnnRefused = [];

    /// <summary>Attention calls cuDNN ran (forward, backward) in this backend.</summary>
    public (int Forward, int Backward) CudnnCalls { get; private set; }

    /// <summary>What cuDNN's attention did in this backend: the library once loaded, or why it did not, and refused shapes.</summary>
    public List<string> CudnnNotes { get; } = [];

    /// <summary>The unpacked-causal shape cuDNN takes, or null when this call stays on the flash kernels.</summary>
    SdpaShape? CudnnShape(AttentionShape s, params Tensor[] tensors)
    {
        if (AttentionKernels == AttentionKernels.Flash || !s.Unpacked || !s.Variant.IsPlain || s.HeadDim is not (64 or 128)) return null;
        if (s.QueryLen != s.KeyLen || s.KeyLen != s.KvCapacity || tensors.Any(t => t.DType != DType.BF16)) return null;
        var shape = new SdpaShape(s.Batch, s.QueryLen, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale);
        if (_cudnnShapes.Contains(shape)) return shape;
        if (_cudnnShapes.Count >= CudnnMaxShapes)
        {
            if (!_cudnnShapesFull)
            {
                _cudnnShapesFull = true;
                CudnnNotes.Add($"more than {CudnnMaxShapes} distinct attention shapes (FINETUNE_CUDNN_MAX_SHAPES): later new shapes run the flash kernels");
            }
            return null;
        }
        _cudnnShapes.Add(shape);
        return shape;
    }

    /// <summary>
    /// The most distinct shapes (batch, length, heads) cuDNN takes in this backend: each costs plans built on first use
    /// (~0.1–0.3 s on the H200), which batches padded to their longest row would pay at almost every step; later new
    /// shapes run the flash kernels (the same choice on every run of the same data). `FINETUNE_CUDNN_MAX_SHAPES`.
    /// </summary>
    public int CudnnMaxShapes { get; set; } = int.TryParse(Environment.GetEnvironmentVariable("FINETUNE_CUDNN_MAX_SHAPES"), out var n) ? n : 64;

    readonly HashSet<SdpaShape> _cudnnShapes = [];
    bool _cudnnShapesFull;

    CudnnAttention? Cudnn()
    {
        if (_cudnn != null || _cudnnFailed) return _cudnn;
        try
        {
            _cudnn = new CudnnAttention(_dev, Environment.GetEnvironmentVariable("FINETUNE_CUDNN") is { Length: > 0 } f ? f : null);
            CudnnNotes.Add($"cuDNN {_cudnn.Library.VersionText} from {_cudnn.Library.LibraryName}");
        }
        catch (CudaException e)
        {
            _cudnnFailed = true;
            CudnnNotes.Add($"cuDNN did not load ({e.Message}): the flash kernels run every layer");
            Console.Error.WriteLine($"finetune: {CudnnNotes[^1]}");
        }
        return _cudnn;
    }

    // Runs one cuDNN call; a graph cuDNN refuses for this shape is remembered (and noted) and the caller runs flash.
    bool TryCudnn(SdpaShape shape, bool backward, Action<CudnnAttention> call)
    {
        if (_cudnnRefused.Contains((shape, backward)) || Cudnn() is not { } dnn) return false;
        try { call(dnn); return true; }
        catch (CudnnException e)
        {
            _cudnnRefused.Add((shape, backward));
            CudnnNotes.Add($"cuDNN refused the {(backward ? "backward" : "forward")} of {shape}: {e.Message}");
            Console.Error.WriteLine($"finetune: {CudnnNotes[^1]}; the flash kernels run it");
            return false;
        }
    }

    // Under Cudnn, the slice of the problem cuDNN's deterministic backward runs at a time within the workspace limit
    // (null: not even one sequence and key/value head fits, and the flash backward runs, also deterministic); under
    // CudnnFast, the whole problem (its atomic dQ needs only an f32 accumulator).
    SdpaShape? CudnnBackwardSlice(SdpaShape shape)
    {
        if (AttentionKernels == AttentionKernels.CudnnFast) return shape;
        if (_cudnnRefused.Contains((shape, true)) || Cudnn() is not { } dnn) return null;
        SdpaShape? slice;
        try { slice = dnn.DeterministicSlice(shape, CudnnDeterministicWorkspaceLimit, CudnnSequenceSlices ? 4 * _dev.Info.Multiprocessors : 0); }
        catch (CudnnException e)
        {
            _cudnnRefused.Add((shape, true));
            CudnnNotes.Add($"cuDNN refused the deterministic backward of {shape}: {e.Message}");
            Console.Error.WriteLine($"finetune: {CudnnNotes[^1]}; the flash kernels run it");
            return null;
        }
        if (_cudnnSliced.Add(shape))
            CudnnNotes.Add(slice is { PartialKv: true } h
                ? $"backward of {shape}: cuDNN without atomics, {shape.Batch * shape.QueryHeads / h.QueryHeads} call(s) of 1 sequence × {h.QueryHeads} query head(s), dK/dV partials summed in f32"
                : slice is { } x
                ? $"backward of {shape}: cuDNN without atomics, {shape.Batch / x.Batch * (shape.KvHeads / x.KvHeads)} call(s) of {x.Batch} sequence(s) × {x.KvHeads} key/value head(s)"
                : $"backward of {shape}: one sequence and query head needs more than FINETUNE_CUDNN_WORKSPACE_MIB={CudnnDeterministicWorkspaceLimit >> 20} MiB of cuDNN workspace; the flash backward runs it");
        return slice;
    }

    readonly HashSet<SdpaShape> _cudnnSliced = [];

    /// <summary>
    /// Whether a backward's workspace goes into the caller's scratch (<see cref="IBackend.AttentionBackward"/>) where it
    /// fits; `FINETUNE_ATTENTION_SCRATCH=0` borrows it from the allocator as before (the A/B of the peak it saves).
    /// </summary>
    public bool AttentionScratch { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_ATTENTION_SCRATCH") != "0";

    // The cuDNN backward's slice (CudnnBackwardSlice) and whether its workspace fits the caller's scratch of
    // scratchBytes. When the usual slice's does not, the widest slice of whole sequences and key/value heads whose
    // workspace fits the scratch runs instead (more calls, the same bits); when none does (or the usual slice already
    // splits a group's query heads, whose bits depend on the split), the usual slice borrows its workspace.
    (SdpaShape Slice, bool InScratch)? CudnnBackwardPlan(SdpaShape shape, long scratchBytes)
    {
        if (CudnnBackwardSlice(shape) is not { } slice) return null;
        if (scratchBytes <= 0 || _cudnn is not { } dnn) return (slice, false);
        if (AttentionKernels == AttentionKernels.CudnnFast)
            return (slice, dnn.BackwardCallBytes(shape) <= scratchBytes);
        var deterministic = SdpaGraphOptions.Default with { DeterministicDq = true };
        if (dnn.BackwardCallBytes(slice, deterministic) <= scratchBytes) return Noted(slice);
        if (slice.PartialKv) return (slice, false);
        // DeterministicSlice's limit is on BackwardWorkspaceBytes, which a deterministic call's bytes exceed by 256.
        var fits = dnn.DeterministicSlice(shape, Math.Min(scratchBytes - 256, CudnnDeterministicWorkspaceLimit),
            CudnnSequenceSlices ? 4 * _dev.Info.Multiprocessors : 0);
        return fits is { PartialKv: false } f ? Noted(f) : (slice, false);

        (SdpaShape, bool) Noted(SdpaShape chosen)
        {
            if (_cudnnScratched.Add((shape, chosen)))
                CudnnNotes.Add($"backward of {shape}: workspace in the layer's spent activations ({scratchBytes >> 20} MiB), " + (chosen.PartialKv
                    ? $"{shape.Batch * shape.QueryHeads / chosen.QueryHeads} call(s) of 1 sequence × {chosen.QueryHeads} query head(s)"
                    : $"{shape.Batch / chosen.Batch * (shape.KvHeads / chosen.KvHeads)} call(s) of {chosen.Batch} sequence(s) × {chosen.KvHeads} key/value head(s)"));
            return (chosen, true);
        }
    }

    readonly HashSet<(SdpaShape, SdpaShape)> _cudnnScratched = [];

    /// <summary>Tile shapes of the flash backward kernels; null takes <see cref="FlashBackwardTiles.Default"/>.</summary>
    public FlashBackwardTiles? FlashTiles { get; set; }

    int _sharedLimit;

    /// <summary>The device's opt-in shared-memory limit a block (read once).</summary>
    int SharedLimit => _sharedLimit != 0 ? _sharedLimit : _sharedLimit = _dev.MaxSharedMemoryPerBlock;

    // Launches a flash kernel with dynamic shared memory (CudaDevice.Launch raises the 48 KiB default where needed);
    // `mark` names it in the profile.
    void LaunchFlash(string kernel, (int, int, int) grid, int threads, int sharedBytes, ReadOnlySpan<KernelArg> args, string mark)
    {
        var fn = _dev.Function("flash_attention.cu", kernel);
        _dev.Launch(fn, grid, (threads, 1, 1), sharedBytes, args, kernel);
        if (_dev.Profiling) _dev.Mark(mark);
    }

    public void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        CheckAttention(q, k, v, segmentIds, s);
        Need(lse, DType.F32);
        if (s.Batch == 0 || s.QueryLen == 0) return;
        if (CudnnShape(s, output, q, k, v) is { } ds && TryCudnn(ds, false, d => d.Forward(P(output), P(lse), P(q), P(k), P(v), ds)))
        {
            CudnnCalls = (CudnnCalls.Forward + 1, CudnnCalls.Backward);
            return;
        }
        if (Flash(s.HeadDim, output, q, k, v))
        {
            // Plain layers take the plain kernels (window and cap ignored); windowed or soft-capped ones the _var kernels.
            var tiles = FlashForwardTiles.For(s.HeadDim, FlashForward);
            string kernel = tiles.Kernel(s.HeadDim, variant: !s.Variant.IsPlain);
            LaunchFlash(kernel, ((s.QueryLen + tiles.Rows - 1) / tiles.Rows, s.QueryHeads, s.Batch), 32 * tiles.Warps, tiles.SharedBytes(s.HeadDim),
                [P(output), P(lse), P(q), P(k), P(v), P(segmentIds), s.QueryLen, s.KeyLen, s.KvCapacity, s.QueryHeads, s.KvHeads, s.Scale,
                 s.Variant.Window, s.Variant.SoftCap],
                kernel);
            return;
        }
        var grid = ((s.QueryLen + AttentionRowsPerBlock - 1) / AttentionRowsPerBlock, s.QueryHeads, s.Batch);
        Launch("attention.cu", "attention_forward", grid, AttentionRowsPerBlock * 32,
        [
            P(output), Dt(output), P(lse), P(q), Dt(q), P(k), Dt(k), P(v), Dt(v), P(segmentIds),
            s.QueryLen, s.KeyLen, s.KvCapacity, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
        ]);
    }

    public void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s, Tensor? scratch = null)
    {
        CheckAttention(q, k, v, segmentIds, s);
        Need(lse, DType.F32);
        if (s.QueryLen != s.KeyLen || s.KeyLen != s.KvCapacity) throw new ArgumentException($"attention backward needs QueryLen == KeyLen == KvCapacity: {s}");
        if (s.Batch == 0 || s.QueryLen == 0) return;
        var (scratchAt, scratchBytes) = scratch is { } w && AttentionScratch ? (P(w), w.Length * w.DType.ByteSize()) : (0UL, 0L);
        if (CudnnShape(s, dq, dk, dv, doutput, output, q, k, v) is { } ds && CudnnBackwardPlan(ds, scratchBytes) is { } plan
            && TryCudnn(ds, true, d =>
            {
                ulong workspace = plan.InScratch ? scratchAt : 0;
                if (AttentionKernels == AttentionKernels.CudnnFast)
                    d.Backward(P(dq), P(dk), P(dv), P(doutput), P(output), P(lse), P(q), P(k), P(v), ds, workspace: workspace);
                else
                    d.BackwardDeterministic(P(dq), P(dk), P(dv), P(doutput), P(output), P(lse), P(q), P(k), P(v), ds, plan.Slice,
                        (dkAt, dvAt, dkParts, dvParts, parts, rows, ld) => LaunchFlat("flash_attention.cu", "sum_head_partials", rows * ds.HeadDim,
                            [dkAt, dvAt, dkParts, dvParts, parts, rows, ds.HeadDim, ld]), workspace);
            }))
        {
            CudnnCalls = (CudnnCalls.Forward, CudnnCalls.Backward + 1);
            return;
        }
        int t = s.QueryLen, rows = s.Batch * t * s.QueryHeads;
        ulong delta = _dev.Allocate((long)rows * sizeof(float));
        try
        {
            Launch("attention.cu", "attention_backward_delta", ((rows + AttentionRowsPerBlock - 1) / AttentionRowsPerBlock, 1, 1), AttentionRowsPerBlock * 32,
                [delta, P(doutput), Dt(doutput), P(output), Dt(output), s.Batch, t, s.QueryHeads, s.HeadDim]);
            if (Flash(s.HeadDim, dq, dk, dv, doutput, q, k, v))
            {
                var tiles = FlashBackwardTiles.For(s.HeadDim, FlashTiles, SharedLimit);
                int d = s.HeadDim, dqRows = 16 * tiles.DqWarps, dkvKeys = 16 * tiles.DkvWarps;
                bool variant = !s.Variant.IsPlain;
                int window = s.Variant.Window;
                float cap = s.Variant.SoftCap;
                LaunchFlash(tiles.DqKernel(d, variant), ((t + dqRows - 1) / dqRows, s.QueryHeads, s.Batch), 32 * tiles.DqWarps, tiles.DqSharedBytes(d),
                    [P(dq), P(doutput), P(lse), delta, P(q), P(k), P(v), P(segmentIds), t, s.QueryHeads, s.KvHeads, s.Scale, window, cap],
                    $"flash_backward_dq_d{d}");
                // Grouped-query: per-query-head F32 partials, summed over each group afterwards (deterministic).
                // In the caller's scratch where both fit.
                bool grouped = s.QueryHeads != s.KvHeads;
                long partLen = grouped ? (long)s.Batch * t * s.QueryHeads * s.HeadDim : 0;
                bool partsInScratch = grouped && 2 * partLen * 4 <= scratchBytes;
                ulong dkPart = !grouped ? 0 : partsInScratch ? scratchAt : _dev.Allocate(partLen * 4);
                ulong dvPart = !grouped ? 0 : partsInScratch ? scratchAt + (ulong)(partLen * 4) : _dev.Allocate(partLen * 4);
                try
                {
                    int keyBlocks = (t + dkvKeys - 1) / dkvKeys * FlashBackwardTiles.DkvColumnSplits(d);
                    LaunchFlash(tiles.DkvKernel(d, variant), (keyBlocks, s.QueryHeads, s.Batch), 32 * tiles.DkvWarps, tiles.DkvSharedBytes(d),
                        [P(dk), P(dv), dkPart, dvPart, P(doutput), P(lse), delta, P(q), P(k), P(v), P(segmentIds), t, s.QueryHeads, s.KvHeads, s.Scale,
                         window, cap],
                        "flash_backward_dkv");
                    if (grouped)
                    {
                        long tokenRows = (long)s.Batch * t;
                        LaunchFlat("flash_attention.cu", "flash_dkv_reduce", tokenRows * s.KvHeads * s.HeadDim,
                            [P(dk), P(dv), dkPart, dvPart, tokenRows, s.QueryHeads, s.KvHeads, s.HeadDim]);
                    }
                }
                finally
                {
                    if (grouped && !partsInScratch) { _dev.Free(dkPart); _dev.Free(dvPart); }
                }
                return;
            }
            int blocks = (t + AttentionRowsPerBlock - 1) / AttentionRowsPerBlock;
            Launch("attention.cu", "attention_backward_dq", (blocks, s.QueryHeads, s.Batch), AttentionRowsPerBlock * 32,
            [
                P(dq), Dt(dq), P(doutput), Dt(doutput), P(lse), delta, P(q), Dt(q), P(k), Dt(k), P(v), Dt(v), P(segmentIds),
                t, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
            ]);
            Launch("attention.cu", "attention_backward_dkv", (blocks, s.KvHeads, s.Batch), AttentionRowsPerBlock * 32,
            [
                P(dk), Dt(dk), P(dv), Dt(dv), P(doutput), Dt(doutput), P(lse), delta, P(q), Dt(q), P(k), Dt(k), P(v), Dt(v),
                P(segmentIds), t, s.QueryHeads, s.KvHeads, s.HeadDim, s.Scale, s.Variant.Window, s.Variant.SoftCap,
            ]);
        }
        finally { _dev.Free(delta); }
    }
}
