namespace FineTune.Engine.Cuda;

/// <summary>
/// The CUDA backend: BF16 activations and frozen weights, F32 statistics, gradients, masters and optimizer
/// state; every matrix product through cuBLASLt with fp32 accumulation; the rest as NVRTC-compiled kernels
/// (Cuda/Kernels/*.cu). Everything is queued on one stream; only downloads and <see cref="Synchronize"/> wait.
/// Kernels take a dtype code per tensor (0 F32, 1 BF16), so any mix of F32 and BF16 tensors is accepted.
/// </summary>
public sealed partial class CudaBackend : IBackend
{
    const int Threads = 256;
    readonly CudaDevice _dev;
    readonly int _maxBlocks;

    /// <param name="computeDType">BF16 (training) or F32 (exact checks against the CPU backend).</param>
    public CudaBackend(int ordinal = 0, KernelCache? cache = null, DType computeDType = DType.BF16)
    {
        if (computeDType is not (DType.BF16 or DType.F32)) throw new ArgumentException($"compute dtype must be BF16 or F32, not {computeDType}");
        _dev = CudaDevice.Open(ordinal, cache);
        _maxBlocks = _dev.Info.Multiprocessors * 16;
        ComputeDType = computeDType;
    }

    public string Name => $"cuda:{_dev.Info.Ordinal}";
    public DType ComputeDType { get; }
    public CudaDevice Device => _dev;

    public DeviceMemory? Memory
    {
        get
        {
            var (free, total) = _dev.MemoryInfo();
            var stats = _dev.Allocator.Stats;
            return new DeviceMemory(free + stats.CachedBytes, stats.InUseBytes, total);
        }
    }

    public void BindToCurrentThread() => _dev.MakeCurrent();
    public CudaDeviceInfo Info => _dev.Info;

    public DeviceBuffer AllocateBuffer(long byteLength) => new CudaBuffer(this, _dev, byteLength);

    /// <summary>Graphs need the driver's capture calls; profiling (an event per operation) keeps them off.</summary>
    public bool SupportsGraphs => _dev.HasGraphs && !_dev.Profiling;
    public void BeginGraphCapture() => _dev.BeginCapture();
    public IDeviceGraph? EndGraphCapture(bool discard = false) => _dev.EndCapture(discard);

    public void Dispose()
    {
        _cudnn?.Dispose();
        _cudnn = null;
        _dev.Dispose();
    }

    // ---- helpers ----
    ulong P(Tensor t)
    {
        if (t.Buffer is not CudaBuffer b || !ReferenceEquals(t.Backend, this))
            throw new ArgumentException($"tensor '{t.Name}' does not belong to this CUDA backend");
        return b.Pointer + (ulong)(t.Offset * t.DType.ByteSize());
    }

    static int Dt(Tensor t) => t.DType switch
    {
        DType.F32 => 0,
        DType.BF16 => 1,
        _ => throw new ArgumentException($"tensor '{t.Name}' is {t.DType}; this operation takes F32 or BF16"),
    };

    static void Need(Tensor t, DType dtype)
    {
        if (t.DType != dtype) throw new ArgumentException($"tensor '{t.Name}' is {t.DType}, expected {dtype}");
    }

    static void SameLength(Tensor a, Tensor b)
    {
        if (a.Length != b.Length) throw new ArgumentException($"length mismatch: {a} vs {b}");
    }

    /// <summary>
    /// True when every tensor is BF16 with a 16-byte aligned start and a multiple of 8 elements (and, for row
    /// kernels, <paramref name="cols"/> a multiple of 8): the *_v8 kernels then move eight values per load.
    /// </summary>
    bool V8(int cols, params ReadOnlySpan<Tensor> tensors)
    {
        if ((cols & 7) != 0 || _scalarOnly) return false;
        foreach (var t in tensors)
            if (t.DType != DType.BF16 || (t.Length & 7) != 0 || (P(t) & 15) != 0) return false;
        return true;
    }

    /// <summary>FINETUNE_VECTOR_KERNELS=0 keeps every operation on the scalar (any-dtype) kernels.</summary>
    readonly bool _scalarOnly = Environment.GetEnvironmentVariable("FINETUNE_VECTOR_KERNELS") == "0";

    int Blocks(long n) => (int)Math.Clamp((n + Threads - 1) / Threads, 1, _maxBlocks);

    void Launch(string program, string kernel, (int, int, int) grid, int block, ReadOnlySpan<KernelArg> args, int sharedBytes = 0)
    {
        _dev.Launch(_dev.Function(program, kernel), grid, (block, 1, 1), sharedBytes, args, kernel);
        if (_dev.Profiling) _dev.Mark(kernel);
    }

    /// <summary>The default of <see cref="UseDependentLaunch"/> when FINETUNE_PDL is unset (flip here once measured).</summary>
    const bool DependentLaunchByDefault = false;

    /// <summary>
    /// Programmatic dependent launch for a decode step's kernels (FINETUNE_PDL=1 on, 0 off, unset
    /// <see cref="DependentLaunchByDefault"/>): the GEMVs (gemv.cu, the fused decode.cu layers, the LM head) and the
    /// split-K attention start while the kernel before them finishes. Each lets its own dependent launch at its start,
    /// and before it waits for its input (griddepcontrol.wait) a GEMV loads its weight's first batch into registers
    /// and prefetches the rest of its rows (and a norm's weight) into L2 (<see cref="PrefetchFlag"/>); the norms and
    /// SwiGLU trigger their dependents at their start.
    /// </summary>
    public bool UseDependentLaunch { get; set; } = Environment.GetEnvironmentVariable("FINETUNE_PDL") is { Length: > 0 } pdl ? pdl == "1" : DependentLaunchByDefault;

    /// <summary>The GEMV kernels' pf argument: prefetch the weight into L2 before the dependency wait, only when launched as dependents.</summary>
    int PrefetchFlag => UseDependentLaunch ? 1 : 0;

    void LaunchDependent(string program, string kernel, (int, int, int) grid, int block, ReadOnlySpan<KernelArg> args, int sharedBytes = 0)
    {
        if (!UseDependentLaunch) { Launch(program, kernel, grid, block, args, sharedBytes); return; }
        _dev.LaunchDependent(_dev.Function(program, kernel), grid, (block, 1, 1), sharedBytes, args, kernel);
        if (_dev.Profiling) _dev.Mark(kernel);
    }

    void LaunchFlat(string program, string kernel, long n, ReadOnlySpan<KernelArg> args)
    {
        if (n == 0) return;
        Launch(program, kernel, (Blocks(n), 1, 1), Threads, args);
    }

    // ---- transfers ----
    public void Upload(Tensor dst, ReadOnlySpan<float> src)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"upload of {src.Length} values into {dst}");
        switch (dst.DType)
        {
            case DType.F32: _dev.CopyToDevice(P(dst), src); break;
            case DType.BF16:
                var tmp = new ushort[src.Length];
                Bf16.FromFloatParallel(src, tmp);
                _dev.CopyToDevice<ushort>(P(dst), tmp);
                break;
            default: throw new ArgumentException($"cannot upload floats into {dst}");
        }
    }

    public void Upload(Tensor dst, ReadOnlySpan<int> src)
    {
        if (src.Length != dst.Length) throw new ArgumentException($"upload of {src.Length} values into {dst}");
        Need(dst, DType.I32);
        _dev.CopyToDevice(P(dst), src);
    }

    public void Download(Tensor src, Span<float> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"download of {src} into {dst.Length} values");
        switch (src.DType)
        {
            case DType.F32: _dev.CopyToHost(dst, P(src)); break;
            case DType.BF16:
                var tmp = new ushort[dst.Length];
                _dev.CopyToHost<ushort>(tmp, P(src));
                Bf16.ToFloat(tmp, dst);
                break;
            default: throw new ArgumentException($"cannot download {src} as floats");
        }
    }

    public void Download(Tensor src, Span<int> dst)
    {
        if (dst.Length != src.Length) throw new ArgumentException($"download of {src} into {dst.Length} values");
        Need(src, DType.I32);
        _dev.CopyToHost(dst, P(src));
    }

    public void Synchronize() => _dev.Synchronize();

    // ---- elementwise ----
    public void Zero(Tensor x)
    {
        _dev.Zero(P(x), x.Length * x.DType.ByteSize());
        if (_dev.Profiling) _dev.Mark("memset");
    }

    public void Copy(Tensor dst, Tensor src)
    {
        SameLength(dst, src);
        if (dst.DType == src.DType)
        {
            _dev.CopyDeviceToDevice(P(dst), P(src), src.Length * src.DType.ByteSize());
            if (_dev.Profiling) _dev.Mark("memcpy");
            return;
        }
        LaunchFlat("elementwise.cu", "ft_copy", src.Length, [P(dst), Dt(dst), P(src), Dt(src), src.Length]);
    }

    public void Add(Tensor y, Tensor x, float alpha = 1f)
    {
        SameLength(y, x);
        if (V8(8, y, x)) LaunchFlat("elementwise.cu", "ft_add_v8", y.Length / 8, [P(y), P(x), alpha, y.Length / 8]);
        else LaunchFlat("elementwise.cu", "ft_add", y.Length, [P(y), Dt(y), P(x), Dt(x), alpha, y.Length]);
    }

    public void Scale(Tensor x, float s) => LaunchFlat("elementwise.cu", "ft_scale", x.Length, [P(x), Dt(x), s, x.Length]);

    public void AddBias(Tensor y, Tensor bias)
    {
        int cols = checked((int)bias.Length);
        if (y.Length % cols != 0) throw new ArgumentException($"bias {bias} does not divide {y}");
        LaunchFlat("elementwise.cu", "ft_add_bias", y.Length, [P(y), Dt(y), P(bias), Dt(bias), y.Length, cols]);
    }

    public void BiasBackward(Tensor dbias, Tensor dy)
    {
        int cols = checked((int)dbias.Length);
        int rows = checked((int)(dy.Length / cols));
        Launch("elementwise.cu", "ft_bias_backward", ((cols + Threads - 1) / Threads, 1, 1), Threads,
            [P(dbias), Dt(dbias), P(dy), Dt(dy), rows, cols]);
    }

    // ---- embedding ----
    public void Embedding(Tensor output, Tensor table, Tensor ids)
    {
        Need(ids, DType.I32);
        int cols = table.Cols;
        long n = ids.Length;
        if (output.Length != n * cols) throw new ArgumentException($"embedding output {output} does not hold {n}×{cols}");
        if (n == 0) return;
        if (V8(cols, output, table))
            Launch("embedding.cu", "embedding_forward_v8", (checked((int)((n + RowsPerBlock - 1) / RowsPerBlock)), 1, 1), Threads,
                [P(output), P(table), P(ids), n, cols / 8, table.Rows]);
        else LaunchFlat("embedding.cu", "embedding_forward", n * cols, [P(output), Dt(output), P(table), Dt(table), P(ids), n, cols, table.Rows]);
    }

    public void EmbeddingBackward(Tensor dtable, Tensor doutput, Tensor ids)
    {
        Need(ids, DType.I32);
        int cols = dtable.Cols;
        long n = ids.Length;
        LaunchFlat("embedding.cu", "embedding_backward", n * cols, [P(dtable), Dt(dtable), P(doutput), Dt(doutput), P(ids), n, cols, dtable.Rows]);
    }

    // ---- RMSNorm ----
    const int RowsPerBlock = Threads / 32;

    public void RmsNorm(Tensor y, Tensor rstd, Tensor x, Tensor weight, float eps, float weightOffset = 0f)
    {
        int c = checked((int)weight.Length);
        int rows = checked((int)(x.Length / c));
        SameLength(y, x); Need(rstd, DType.F32);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        if (rows == 0) return;
        if (V8(c, y, x, weight))
            Launch("rmsnorm.cu", "rmsnorm_forward_v8", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(y), P(rstd), P(x), P(weight), rows, c, eps, weightOffset]);
        else
            Launch("rmsnorm.cu", "rmsnorm_forward", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(y), Dt(y), P(rstd), P(x), Dt(x), P(weight), Dt(weight), rows, c, eps, weightOffset]);
    }

    /// <summary>resid = a + b and y = RMSNorm(resid) in one pass (the pre-norm of the next sub-layer).</summary>
    public void ResidualRmsNorm(Tensor resid, Tensor y, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps, float weightOffset = 0f)
    {
        int c = checked((int)weight.Length);
        int rows = checked((int)(a.Length / c));
        SameLength(resid, a); SameLength(b, a); SameLength(y, a); Need(rstd, DType.F32);
        if (rstd.Length < rows) throw new ArgumentException($"rstd {rstd} has fewer than {rows} rows");
        if (rows == 0) return;
        if (V8(c, resid, y, a, b, weight))
            Launch("rmsnorm.cu", "residual_rmsnorm_forward_v8", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(resid), P(y), P(rstd), P(a), P(b), P(weight), rows, c, eps, weightOffset]);
        else
            Launch("rmsnorm.cu", "residual_rmsnorm_forward", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(resid), Dt(resid), P(y), Dt(y), P(rstd), P(a), Dt(a), P(b), Dt(b), P(weight), Dt(weight), rows, c, eps, weightOffset]);
    }

    public void RmsNormBackward(Tensor dx, Tensor? dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd, float weightOffset = 0f, bool accumulate = true)
    {
        int c = checked((int)weight.Length);
        int rows = checked((int)(x.Length / c));
        SameLength(dx, x); SameLength(dy, x); Need(rstd, DType.F32);
        if (rows == 0) return;
        if (V8(c, dx, dy, x, weight))
            Launch("rmsnorm.cu", "rmsnorm_backward_dx_v8", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(dx), P(dy), P(x), P(weight), P(rstd), rows, c, weightOffset, accumulate ? 1 : 0]);
        else
            Launch("rmsnorm.cu", "rmsnorm_backward_dx", ((rows + RowsPerBlock - 1) / RowsPerBlock, 1, 1), Threads,
                [P(dx), Dt(dx), P(dy), Dt(dy), P(x), Dt(x), P(weight), Dt(weight), P(rstd), rows, c, weightOffset, accumulate ? 1 : 0]);
        if (dweight is not null)
            Launch("rmsnorm.cu", "rmsnorm_backward_dw", ((c + Threads - 1) / Threads, 1, 1), Threads,
                [P(dweight), Dt(dweight), P(dy), Dt(dy), P(x), Dt(x), P(rstd), rows, c]);
    }

    // ---- RoPE ----
    public void Rope(Tensor x, Tensor positions, Tensor cos, Tensor sin, int headDim, bool inverse)
    {
        Need(positions, DType.I32); Need(cos, DType.F32); Need(sin, DType.F32);
        int half = headDim / 2;
        int n = checked((int)positions.Length);
        if (n == 0) return;
        int width = checked((int)(x.Length / n));
        int heads = width / headDim;
        if (cos.Cols != half || sin.Cols != half) throw new ArgumentException($"rope tables {cos}/{sin} must have headDim/2 = {half} columns");
        if ((half & 7) == 0 && V8(width, x) && (P(cos) & 15) == 0 && (P(sin) & 15) == 0)
            LaunchFlat("rope.cu", "rope_apply_v8", (long)n * heads * (half / 8),
                [P(x), P(positions), P(cos), P(sin), n, heads, headDim, cos.Rows, inverse ? -1f : 1f]);
        else
            LaunchFlat("rope.cu", "rope_apply", (long)n * heads * half,
                [P(x), Dt(x), P(positions), P(cos), P(sin), n, heads, headDim, cos.Rows, inverse ? -1f : 1f]);
    }

    // ---- SwiGLU ----
    public void SwiGlu(Tensor h, Tensor gate, Tensor up)
    {
        SameLength(h, gate); SameLength(h, up);
        if (V8(8, h, gate, up)) LaunchFlat("swiglu.cu", "swiglu_forward_v8", h.Length / 8, [P(h), P(gate), P(up), h.Length / 8]);
        else LaunchFlat("swiglu.cu", "swiglu_forward", h.Length, [P(h), Dt(h), P(gate), Dt(gate), P(up), Dt(up), h.Length]);
    }

    public void SwiGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up)
    {
        SameLength(dgate, dh); SameLength(dup, dh); SameLength(gate, dh); SameLength(up, dh);
        if (V8(8, dgate, dup, dh, gate, up))
            LaunchFlat("swiglu.cu", "swiglu_backward_v8", dh.Length / 8, [P(dgate), P(dup), P(dh), P(gate), P(up), dh.Length / 8]);
        else
            LaunchFlat("swiglu.cu", "swiglu_backward", dh.Length,
                [P(dgate), Dt(dgate), P(dup), Dt(dup), P(dh), Dt(dh), P(gate), Dt(gate), P(up), Dt(up), dh.Length]);
    }

    public void GeGlu(Tensor h, Tensor gate, Tensor up)
    {
        SameLength(h, gate); SameLength(h, up);
        LaunchFlat("geglu.cu", "geglu_forward", h.Length, [P(h), Dt(h), P(gate), Dt(gate), P(up), Dt(up), h.Length]);
    }

    public void GeGluBackward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up)
    {
        SameLength(dgate, dh); SameLength(dup, dh); SameLength(gate, dh); SameLength(up, dh);
        LaunchFlat("geglu.cu", "geglu_backward", dh.Length,
            [P(dgate), Dt(dgate), P(dup), Dt(dup), P(dh), Dt(dh), P(gate), Dt(gate), P(up), Dt(up), dh.Length]);
    }

    public void SoftCap(Tensor y, Tensor x, float cap)
    {
        SameLength(y, x);
        if (!(cap > 0f)) throw new ArgumentOutOfRangeException(nameof(cap), $"the soft-cap must be positive, got {cap}");
        LaunchFlat("softcap.cu", "softcap_forward", x.Length, [P(y), Dt(y), P(x), Dt(x), cap, x.Length]);
    }

    public void SoftCapBackward(Tensor dx, Tensor y, float cap)
    {
        SameLength(dx, y);
        if (!(cap > 0f)) throw new ArgumentOutOfRangeException(nameof(cap), $"the soft-cap must be positive, got {cap}");
        LaunchFlat("softcap.cu", "softcap_backward", y.Length, [P(dx), Dt(dx), P(y), Dt(y), cap, y.Length]);
    }

    // ---- loss ----
    public void CrossEntropy(Tensor logits, Tensor labels, Tensor lossSum, float gradScale, bool computeGrad)
    {
        Need(labels, DType.I32); Need(lossSum, DType.F32);
        int v = logits.Cols, n = logits.Rows;
        if (labels.Length != n) throw new ArgumentException($"labels {labels} do not match logits {logits}");
        if (n == 0) return;
        ulong rowLoss = _dev.Allocate((long)n * sizeof(float));
        try
        {
            if (V8(v, logits))
                Launch("cross_entropy.cu", "cross_entropy_v8", (n, 1, 1), 512, [P(logits), P(labels), rowLoss, n, v, gradScale, computeGrad ? 1 : 0]);
            else
                Launch("cross_entropy.cu", "cross_entropy", (n, 1, 1), 512,
                    [P(logits), Dt(logits), P(labels), rowLoss, n, v, gradScale, computeGrad ? 1 : 0]);
            Launch("cross_entropy.cu", "cross_entropy_sum", (1, 1, 1), 1024, [rowLoss, n, P(lossSum)]);
        }
        finally { _dev.Free(rowLoss); }
    }

    public void LabelLogProbs(Tensor logits, Tensor labels, Tensor logProbs, Tensor? gradScales)
    {
        Need(labels, DType.I32); Need(logProbs, DType.F32);
        int v = logits.Cols, n = logits.Rows;
        if (labels.Length != n) throw new ArgumentException($"labels {labels} do not match logits {logits}");
        if (logProbs.Length != n) throw new ArgumentException($"logProbs {logProbs} must hold one value per row of {logits}");
        if (gradScales is not null)
        {
            Need(gradScales, DType.F32);
            if (gradScales.Length != n) throw new ArgumentException($"gradScales {gradScales} must hold one value per row of {logits}");
        }
        if (n == 0) return;
        if (V8(v, logits))
            Launch("cross_entropy.cu", "label_log_probs_v8", (n, 1, 1), 512,
                [P(logits), P(labels), P(logProbs), gradScales is null ? 0UL : P(gradScales), n, v]);
        else
            Launch("cross_entropy.cu", "label_log_probs", (n, 1, 1), 512,
                [P(logits), Dt(logits), P(labels), P(logProbs), gradScales is null ? 0UL : P(gradScales), n, v]);
    }

    // ---- randomness ----
    public void Dropout(Tensor y, Tensor x, float p, ulong seed)
    {
        SameLength(y, x);
        LaunchFlat("elementwise.cu", "ft_dropout", y.Length, [P(y), Dt(y), P(x), Dt(x), p, (KernelArg)seed, y.Length]);
    }

    public void AddUniformNoise(Tensor x, float magnitude, ulong seed) =>
        LaunchFlat("elementwise.cu", "ft_uniform_noise", x.Length, [P(x), Dt(x), magnitude, (KernelArg)seed, x.Length]);
}
