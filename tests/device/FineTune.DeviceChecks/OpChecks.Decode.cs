using FineTune.Engine;

namespace FineTune.DeviceChecks;

// A decode step's fused layer operations (decode.cu) on the BF16 path: each against the CPU's composition (values) and
// against the CUDA composition of plain kernels (bits: every output, ln and rstd included), at one and two rows; a
// three-row step must take the composition. Each fused operation also runs in the other launch mode (programmatic
// dependent launch with the weight's L2 prefetch before the wait, FINETUNE_PDL, against plain launches): the same bits.
// Then the split-K decode attention in one kernel against the split kernel and its separate combine (bits), in both
// launch modes, repeated (its counters must re-arm); and a one-token step's q/k norms + RoPE + K/V rows + attention as
// one kernel against qk_rope_cache + the split kernels and against the plain kernels (bits of every output). Times: fused launch vs the composition's launches; five fused
// launches back to back in each launch mode (under PDL each overlaps the one before). Each fused GEMV at one and two
// rows also runs with C = 2, 3, 4, 8 columns a warp (CudaBackend.DecodeColumns): C = 1's bits, and a GB/s line per C;
// so do gemv.cu's gemv_bf16 (the LM head's 151936 × 2048 among its shapes) and gemv_bf16_set. The GEMVs with their input
// staged in shared memory (the default) also run reading it from global memory: the same bits, and both times.
public static partial class OpChecks
{
    /// <summary>`decode`: only these checks (also part of `ops`).</summary>
    public static List<CheckRow> RunDecode()
    {
        var rows = new List<CheckRow>();
        using var cpu = new FineTune.Engine.Cpu.CpuBackend();
        using var gpu = new FineTune.Engine.Cuda.CudaBackend(0);
        var ctx = new Ctx(cpu, gpu, DType.BF16, "bf16", 1e-2, rows);
        DecodeOps(ctx);
        foreach (var b in ctx.Buffers) b.Dispose();
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"decode checks: {rows.Count - failed} passed, {failed} failed");
        return rows;
    }

    static void DecodeOps(Ctx c)
    {
        if (c.Act != DType.BF16) return;
        int gemvRows = c.Gpu.GemvRows;
        bool oneKernel = c.Gpu.UseSplitKOneKernel;
        c.Gpu.GemvRows = 2;
        try
        {
            foreach (int m in new[] { 1, 2, 3 })
            {
                NormSetCheck(c, m, 2048, [2048, 1024, 1024]);
                NormSwiGluCheck(c, m, 2048, 6144);
                ResidualCheck(c, m, 2048, 2048);
                ResidualCheck(c, m, 6144, 2048);
            }
            NormSetCheck(c, 1, 4096, [4096, 1024, 1024]);
            NormSetCheck(c, 2, 1000, [200]);
            NormSetCheck(c, 1, 2048, [1000, 200, 8]); // N not a multiple of warps·C, a product narrower than a warp's stride
            NormSwiGluCheck(c, 1, 4096, 14336);
            NormSwiGluCheck(c, 2, 1000, 200);
            ResidualCheck(c, 1, 14336, 4096); // Llama-3-8B down_proj
            ResidualCheck(c, 2, 14336, 4096);
            ResidualCheck(c, 1, 14336, 1000);
            ResidualCheck(c, 2, 1000, 200);
            ResidualCheck(c, 2, 28672, 1000); // two rows past GemvMaxSharedBytes: the composition, A from global memory
            foreach (var (m, ka, hidden, inter) in new[] { (1, 2048, 2048, 6144), (2, 2048, 2048, 6144), (1, 4096, 4096, 14336), (2, 1024, 512, 1000) })
                MlpTailCheck(c, m, ka, hidden, inter);
            foreach (var (m, d, hq, hkv, normed) in new[] { (1, 128, 16, 8, true), (2, 128, 16, 8, true), (1, 128, 32, 8, false), (2, 64, 8, 2, false), (1, 256, 8, 4, true), (3, 128, 4, 2, true) })
                QkRopeCheck(c, m, d, hq, hkv, normed);
            foreach (var (t, d, hq, hkv) in new[] { (1, 128, 16, 8), (2, 128, 16, 8), (1, 128, 32, 8), (8, 64, 8, 2), (3, 128, 4, 1) })
                SplitOneKernelCheck(c, t, d, hq, hkv);
            foreach (var (d, hq, hkv, normed, p) in new[] { (128, 16, 8, true, 100), (128, 16, 8, true, 0), (128, 32, 8, false, 255), (64, 8, 2, false, 37), (128, 4, 1, true, 200) })
                RopeAttentionCheck(c, d, hq, hkv, normed, p);
            // Qwen3-1.7B's layer (the bench's single-stream shape) at a short and a long context, Llama-3-8B's, a plain one
            foreach (var (hidden, inter, d, hq, hkv, normed, p) in new[] { (2048, 6144, 128, 16, 8, true, 100), (2048, 6144, 128, 16, 8, true, 1000),
                         (4096, 14336, 128, 32, 8, false, 300), (512, 1000, 64, 8, 2, false, 37) })
                DecodeLayerCheck(c, hidden, inter, d, hq, hkv, normed, p);
            foreach (int rows in new[] { 1, 2, 5 })
                ArgMaxCheck(c, rows, 151936); // a step's greedy pick (one launch)
            GemvColumnsCheck(c, [1, 2], 151936, 2048, DType.F32); // the LM head (Qwen3-1.7B), where cross-column pipelining matters most
            GemvColumnsCheck(c, [1, 2], 1000, 2048, DType.BF16, accumulate: true);
            GemvSetColumnsCheck(c, 1, 2048, [2048, 1024, 1024]);
            GemvSetColumnsCheck(c, 2, 1000, [1000, 200, 8]);
        }
        finally
        {
            c.Gpu.GemvRows = gemvRows;
            c.Gpu.UseFusedDecode = true;
            c.Gpu.UseSplitKOneKernel = oneKernel;
        }
        foreach (var (program, kernel) in new[] { ("decode.cu", "decode_layer"), ("decode.cu", "decode_mlp_tail"), ("decode.cu", "gemv_norm_set"), ("decode.cu", "gemv_norm_swiglu"), ("decode.cu", "gemv_residual"),  ("decode.cu", "qk_rope_cache"), ("gemv.cu", "gemv_bf16"), ("gemv.cu", "gemv_bf16_set"),
                     ("kv_cache.cu", "cached_attention_split"), ("kv_cache.cu", "cached_attention_rope_split"), ("argmax.cu", "argmax_partial") })
            Console.WriteLine($"     {kernel}: {c.Gpu.KernelRegisters(program, kernel)} registers a thread");
    }

    /// <summary>Runs <paramref name="op"/> fused and as the composition, checks each output pair's bits; returns (fused, composed) ms.</summary>
    static void FusedVsComposed(Ctx c, string name, Action<bool> op, (Tensor Fused, Tensor Composed)[] outputs, string[] names)
    {
        bool pdl = c.Gpu.UseDependentLaunch;
        c.Gpu.UseFusedDecode = true;
        double ms = c.Time(() => op(true));
        // The fused operation in the other launch mode, into the composition's outputs: the same bits.
        c.Gpu.UseDependentLaunch = !pdl;
        op(false);
        c.Gpu.UseDependentLaunch = pdl;
        string other = pdl ? "plain launch" : "dependent launch + prefetch";
        for (int i = 0; i < outputs.Length; i++)
            c.Check($"{name} = {other}", names[i] + " bits", c.Download(outputs[i].Fused).SequenceEqual(c.Download(outputs[i].Composed)), ms);
        c.Gpu.UseFusedDecode = false;
        op(false);
        for (int i = 0; i < outputs.Length; i++)
            c.Check($"{name} = composition", names[i] + " bits", c.Download(outputs[i].Fused).SequenceEqual(c.Download(outputs[i].Composed)), ms);
        c.Gpu.UseFusedDecode = true;
        double fused = c.TimeRepeat(() => op(true));
        c.Gpu.UseDependentLaunch = !pdl;
        double fusedOther = c.TimeRepeat(() => op(true));
        c.Gpu.UseDependentLaunch = pdl;
        c.Gpu.UseFusedDecode = false;
        double composed = c.TimeRepeat(() => op(false));
        c.Gpu.UseFusedDecode = true;
        var (plainMs, pdlMs) = pdl ? (fusedOther, fused) : (fused, fusedOther);
        Console.WriteLine($"     {name}: fused {plainMs:F4} ms (dependent launch + prefetch {pdlMs:F4} ms), composition {composed:F4} ms");
    }

    static readonly int[] DecodeColumnCounts = [2, 3, 4, 8];

    /// <summary>
    /// The cross-column GEMV (CudaBackend.DecodeColumns = C, FineTune issue 14): <paramref name="op"/> (the fused kernel)
    /// at C = 2, 3, 4, 8 into zeroed outputs gives C = 1's bits, in this launch mode and the other (the later columns' L2
    /// prefetch); and a time per C as GB/s of the weight's bytes, to pick the default from.
    /// </summary>
    static void ColumnsVsOne(Ctx c, string name, Action op, Tensor[] outputs, string[] names, long weightBytes)
    {
        int columns = c.Gpu.DecodeColumns;
        bool pdl = c.Gpu.UseDependentLaunch;
        try
        {
            c.Gpu.DecodeColumns = 1;
            op();
            var want = outputs.Select(c.Download).ToArray();
            var times = new List<string>();
            double one = c.TimeRepeat(op);
            times.Add($"C1 {one:F4} ms {weightBytes / one / 1e6:F0} GB/s");
            foreach (int cols in DecodeColumnCounts)
            {
                c.Gpu.DecodeColumns = cols;
                foreach (bool other in new[] { false, true })
                {
                    c.Gpu.UseDependentLaunch = other ? !pdl : pdl;
                    foreach (var o in outputs) c.Gpu.Zero(o);
                    double ms = c.Time(op);
                    string mode = other ? (pdl ? ", plain launch" : ", dependent launch + prefetch") : "";
                    for (int i = 0; i < outputs.Length; i++)
                        c.Check($"{name} C{cols}{mode} = C1", names[i] + " bits", c.Download(outputs[i]).SequenceEqual(want[i]), ms);
                }
                c.Gpu.UseDependentLaunch = pdl;
                double t = c.TimeRepeat(op);
                times.Add($"C{cols} {t:F4} ms {weightBytes / t / 1e6:F0} GB/s");
            }
            Console.WriteLine($"     {name} columns a warp ({(pdl ? "dependent launch + prefetch" : "plain launch")}, {c.Gpu.DecodeWarps} warps a block): {string.Join(", ", times)}");
        }
        finally
        {
            c.Gpu.DecodeColumns = columns;
            c.Gpu.UseDependentLaunch = pdl;
        }
    }

    /// <summary>
    /// The GEMVs' input rows staged in shared memory (CudaBackend.UseGemvStaging, the default) against A read from
    /// global memory (staging off; a matmul + residual then runs as gemv_bf16 + add): the same bits, and both times as
    /// GB/s of the weight's bytes.
    /// </summary>
    static void StagedVsGlobal(Ctx c, string name, Action op, Tensor[] outputs, string[] names, long weightBytes)
    {
        bool staging = c.Gpu.UseGemvStaging;
        try
        {
            c.Gpu.UseGemvStaging = true;
            foreach (var o in outputs) c.Gpu.Zero(o);
            op();
            var want = outputs.Select(c.Download).ToArray();
            double staged = c.TimeRepeat(op);
            c.Gpu.UseGemvStaging = false;
            foreach (var o in outputs) c.Gpu.Zero(o);
            double ms = c.Time(op);
            for (int i = 0; i < outputs.Length; i++)
                c.Check($"{name} A from global memory = staged", names[i] + " bits", c.Download(outputs[i]).SequenceEqual(want[i]), ms);
            double global = c.TimeRepeat(op);
            Console.WriteLine($"     {name}: A staged in shared memory {staged:F4} ms {weightBytes / staged / 1e6:F0} GB/s, from global memory {global:F4} ms {weightBytes / global / 1e6:F0} GB/s");
        }
        finally { c.Gpu.UseGemvStaging = staging; }
    }

    /// <summary>
    /// Decode attention over a paged cache, split-K: one kernel (the last block of each (token, kv head) combines)
    /// against the split kernel + cached_attention_combine, bit for bit, in both launch modes and again after five
    /// launches (each launch must leave its counters at zero); and against the CPU.
    /// </summary>
    static void SplitOneKernelCheck(Ctx c, int t, int d, int hq, int hkv)
    {
        int bs = 16, width = 16, blocks = t * width + 1, kvd = hkv * d;
        var pool = Enumerable.Range(1, blocks - 1).OrderBy(i => (i * 7919) % 1009).ToArray();
        int[] table = [.. Enumerable.Range(0, t * width).Select(i => pool[i])];
        int[] positions = [.. Enumerable.Range(0, t).Select(i => new[] { 100, 7, 255, 31, 64, 0, 200, 129 }[i % 8])];
        var kc = c.Pair(c.Rand((long)blocks * bs * kvd), [blocks * bs, kvd]);
        var vc = c.Pair(c.Rand((long)blocks * bs * kvd), [blocks * bs, kvd]);
        var q = c.Pair(c.Rand((long)t * hq * d), [t, hq * d]);
        var seqs = c.IntPair([.. Enumerable.Range(0, t)], [t]);
        var pos = c.IntPair(positions, [t]);
        var tb = c.IntPair(table, [table.Length]);
        var shape = new CachedAttentionShape(t, blocks, bs, width, hq, hkv, d);
        var (one, two) = (c.Zeros([t, hq * d]), c.Zeros([t, hq * d]));
        void Run(Tensor o, bool oneKernel)
        {
            c.Gpu.UseSplitKOneKernel = oneKernel;
            c.Gpu.CachedAttention(o, q.Gpu, kc.Gpu, vc.Gpu, seqs.Gpu, pos.Gpu, tb.Gpu, shape);
        }
        string name = $"decode attention one kernel T{t} H{hq}/{hkv} D{d}";
        bool pdl = c.Gpu.UseDependentLaunch, setting = c.Gpu.UseSplitKOneKernel;
        try
        {
            Run(two.Gpu, false);
            var separate = c.Download(two.Gpu);
            double ms = c.Time(() => Run(one.Gpu, true));
            c.Check($"{name} = split + combine", "out bits", c.Download(one.Gpu).SequenceEqual(separate), ms);
            c.Gpu.UseDependentLaunch = !pdl;
            Run(one.Gpu, true);
            c.Check($"{name} = split + combine, {(pdl ? "plain launch" : "dependent launch")}", "out bits", c.Download(one.Gpu).SequenceEqual(separate), ms);
            double otherMs = c.TimeRepeat(() => Run(one.Gpu, true));
            c.Gpu.UseDependentLaunch = pdl;
            double oneMs = c.TimeRepeat(() => Run(one.Gpu, true));
            c.Gpu.Zero(one.Gpu); // a launch whose combine did not run would leave the last one's output
            Run(one.Gpu, true);
            c.Check($"{name} = split + combine, after 10 launches", "out bits", c.Download(one.Gpu).SequenceEqual(separate), oneMs);
            double twoMs = c.TimeRepeat(() => Run(two.Gpu, false));
            c.Cpu.CachedAttention(one.Cpu, q.Cpu, kc.Cpu, vc.Cpu, seqs.Cpu, pos.Cpu, tb.Cpu, shape);
            c.Compare(name, "out", one, oneMs);
            Console.WriteLine($"     {name}: one kernel {oneMs:F4} ms ({(pdl ? "plain launch" : "dependent launch")} {otherMs:F4} ms), split + combine {twoMs:F4} ms");
        }
        finally { c.Gpu.UseSplitKOneKernel = setting; } // the checks after this one (the decode layer's) run with the default
    }

    /// <summary>
    /// A one-token step's QkRopeCacheAttention: the one kernel (cached_attention_rope_split) against qk_rope_cache + the
    /// split-K kernels (its one-kernel combine off) and against the plain kernels, every output bit for bit, the one
    /// kernel also in the other launch mode; attention against the CPU's composition.
    /// </summary>
    static void RopeAttentionCheck(Ctx c, int d, int hq, int hkv, bool normed, int position)
    {
        int half = d / 2, maxPos = 300, bs = 16, width = 16, blocks = width + 1, kvd = hkv * d;
        var (cos, sin) = RopeTables(c, maxPos, d);
        var (tb, pos, seqs, rows) = OneTokenStep(c, width, bs, position);
        var qIn = c.Rand((long)hq * d, 2f);
        var kIn = c.Rand(kvd, 2f);
        var v = c.Pair(c.Rand(kvd), [1, kvd]);
        var qn = c.Pair(c.Rand(d), [d]);
        var kn = c.Pair(c.Rand(d), [d]);
        var kcBase = c.Rand((long)blocks * bs * kvd);
        var vcBase = c.Rand((long)blocks * bs * kvd);
        var shape = new CachedAttentionShape(1, blocks, bs, width, hq, hkv, d);
        // Per configuration: att, q, k, qIn, kIn (q and k themselves without norms: rotated in place), caches, rstds.
        (Tensor Cpu, Tensor Gpu)[] Set() =>
        [
            c.Zeros([1, hq * d]), c.Zeros([1, hq * d]), c.Zeros([1, kvd]), c.Pair(qIn, [1, hq * d]), c.Pair(kIn, [1, kvd]),
            c.Pair(kcBase, [blocks * bs, kvd]), c.Pair(vcBase, [blocks * bs, kvd]), c.Zeros([hq], DType.F32), c.Zeros([hkv], DType.F32),
        ];
        // fresh: without norms q and k rotate in place, so a checked run starts from the inputs again (timed runs need not).
        void Op(IBackend b, (Tensor Cpu, Tensor Gpu)[] set, bool fresh = true)
        {
            Tensor T(int i) => b is FineTune.Engine.Cpu.CpuBackend ? set[i].Cpu : set[i].Gpu;
            bool gpu = b is not FineTune.Engine.Cpu.CpuBackend;
            Tensor X((Tensor Cpu, Tensor Gpu) t) => gpu ? t.Gpu : t.Cpu;
            if (gpu && !normed && fresh)
            {
                c.Gpu.Upload(T(3), qIn);
                c.Gpu.Upload(T(4), kIn);
            }
            var (q, k) = normed ? (T(1), T(2)) : (T(3), T(4));
            b.QkRopeCacheAttention(T(0), q, k, T(3), T(4), X(v), normed ? X(qn) : null, normed ? X(kn) : null, normed ? T(7) : null, normed ? T(8) : null,
                1e-6f, X(pos), X(cos), X(sin), d, T(5), T(6), X(rows), X(seqs), X(tb), shape);
        }
        int[] outputs = normed ? [0, 1, 2, 5, 6, 7, 8] : [0, 3, 4, 5, 6];
        string[] names = ["att", "q", "k", "q (in place)", "k (in place)", "kcache", "vcache", "qrstd", "krstd"];
        string name = $"qk{(normed ? "-norm" : "")}+rope+cache+attention T1 H{hq}/{hkv} D{d} p{position}";
        bool pdl = c.Gpu.UseDependentLaunch, fusedDecode = c.Gpu.UseFusedDecode, oneKernel = c.Gpu.UseSplitKOneKernel;
        var (one, other, pieces, plain) = (Set(), Set(), Set(), Set());
        double ms = c.Time(() => Op(c.Gpu, one));
        var att = c.Download(one[0].Gpu);
        c.Gpu.UseDependentLaunch = !pdl;
        Op(c.Gpu, other);
        c.Gpu.UseDependentLaunch = pdl;
        c.Gpu.UseSplitKOneKernel = false;
        Op(c.Gpu, pieces);
        c.Gpu.UseSplitKOneKernel = oneKernel;
        c.Gpu.UseFusedDecode = false;
        Op(c.Gpu, plain);
        c.Gpu.UseFusedDecode = fusedDecode;
        foreach (var (label, set) in new[] { (pdl ? "plain launch" : "dependent launch", other), ("qk_rope_cache + split + combine", pieces), ("plain kernels", plain) })
            foreach (int i in outputs)
                c.Check($"{name} = {label}", names[i] + " bits", c.Download(one[i].Gpu).SequenceEqual(c.Download(set[i].Gpu)), ms);
        double oneMs = c.TimeRepeat(() => Op(c.Gpu, one, fresh: false));
        c.Gpu.UseSplitKOneKernel = false;
        double piecesMs = c.TimeRepeat(() => Op(c.Gpu, pieces, fresh: false));
        c.Gpu.UseSplitKOneKernel = oneKernel;
        c.Gpu.Zero(one[0].Gpu); // a launch whose combine did not run would leave the last one's output
        Op(c.Gpu, one);
        c.Check($"{name}, again after 5 launches", "att bits", c.Download(one[0].Gpu).SequenceEqual(att), oneMs);
        Op(c.Cpu, one);
        c.Compare(name, "att", one[0], oneMs);
        Console.WriteLine($"     {name}: one kernel {oneMs:F4} ms, qk_rope_cache + split + combine {piecesMs:F4} ms");
    }

    /// <summary>gemv.cu's gemv_bf16 (MatMul at ≤ 2 rows) with C columns a warp: C = 1's bits and GB/s per C; it must launch gemv_bf16.</summary>
    static void GemvColumnsCheck(Ctx c, int[] rows, int n, int k, DType output, bool accumulate = false)
    {
        var w = c.Pair(c.Rand((long)n * k, 0.05f), [n, k]); // one weight for every row count (the LM head's is 622 MB)
        foreach (int m in rows)
        {
            var x = c.Pair(c.Rand((long)m * k), [m, k]);
            var y = c.Zeros([m, n], output);
            var start = c.Rand((long)m * n);
            string name = $"gemv {m}x{n}x{k}{(accumulate ? " (accumulate)" : "")} → {output}";
            void Op()
            {
                if (accumulate) c.Gpu.Upload(y.Gpu, start); // C += A·Bᵀ: each run from the same C
                c.Gpu.MatMul(y.Gpu, x.Gpu, false, w.Gpu, true, 0.5f, accumulate);
            }
            c.Gpu.Device.BeginProfile();
            Op();
            c.Check($"{name} launches gemv_bf16", "kernel", c.Gpu.Device.EndProfile().ContainsKey("gemv_bf16"), 0);
            ColumnsVsOne(c, name, Op, [y.Gpu], ["y"], (long)n * k * 2);
            StagedVsGlobal(c, name, Op, [y.Gpu], ["y"], (long)n * k * 2);
        }
    }

    /// <summary>gemv.cu's gemv_bf16_set (MatMulShared) with C columns a warp: C = 1's bits (a warp's columns cross products) and GB/s per C.</summary>
    static void GemvSetColumnsCheck(Ctx c, int m, int k, int[] outs)
    {
        var x = c.Pair(c.Rand((long)m * k), [m, k]);
        var ws = outs.Select(o => c.Pair(c.Rand((long)o * k, 0.05f), [o, k])).ToArray();
        var ys = outs.Select(o => c.Zeros([m, o])).ToArray();
        string name = $"gemv set {m}x[{string.Join('+', outs)}]x{k}";
        void Op() => c.Gpu.MatMulShared([.. ys.Select(t => t.Gpu)], x.Gpu, [.. ws.Select(w => w.Gpu)]);
        c.Gpu.Device.BeginProfile();
        Op();
        c.Check($"{name} launches gemv_bf16_set", "kernel", c.Gpu.Device.EndProfile().ContainsKey("gemv_bf16_set"), 0);
        ColumnsVsOne(c, name, Op, [.. ys.Select(t => t.Gpu)], [.. outs.Select((_, j) => $"c{j}")], (long)outs.Sum() * k * 2);
        StagedVsGlobal(c, name, Op, [.. ys.Select(t => t.Gpu)], [.. outs.Select((_, j) => $"c{j}")], (long)outs.Sum() * k * 2);
    }

    static void NormSetCheck(Ctx c, int m, int k, int[] outs)
    {
        var x = c.Pair(c.Rand((long)m * k, 2f), [m, k]);
        var nw = c.Pair(c.Rand(k), [k]);
        var ws = outs.Select(o => c.Pair(c.Rand((long)o * k, 0.05f), [o, k])).ToArray();
        (Tensor Cpu, Tensor Gpu)[] Outs() => outs.Select(o => c.Zeros([m, o])).ToArray();
        var (ys, ys2) = (Outs(), Outs());
        var (ln, ln2) = (c.Zeros([m, k]), c.Zeros([m, k]));
        var (rs, rs2) = (c.Zeros([m], DType.F32), c.Zeros([m], DType.F32));
        string name = $"norm+qkv {m}x[{string.Join('+', outs)}]x{k}";
        FusedVsComposed(c, name, fused =>
        {
            var (y, l, r) = fused ? (ys, ln, rs) : (ys2, ln2, rs2);
            c.Gpu.NormMatMulShared([.. y.Select(t => t.Gpu)], l.Gpu, r.Gpu, x.Gpu, nw.Gpu, 1e-6f, [.. ws.Select(w => w.Gpu)]);
        }, [.. ys.Zip(ys2, (a, b) => (a.Gpu, b.Gpu)), (ln.Gpu, ln2.Gpu), (rs.Gpu, rs2.Gpu)], [.. outs.Select((_, j) => $"c{j}"), "ln", "rstd"]);
        if (m <= 2)
            ColumnsVsOne(c, name, () => c.Gpu.NormMatMulShared([.. ys2.Select(t => t.Gpu)], ln2.Gpu, rs2.Gpu, x.Gpu, nw.Gpu, 1e-6f, [.. ws.Select(w => w.Gpu)]),
                [.. ys2.Select(t => t.Gpu), ln2.Gpu, rs2.Gpu], [.. outs.Select((_, j) => $"c{j}"), "ln", "rstd"], (long)outs.Sum() * k * 2);
        DecodeComposition.NormMatMulShared(c.Cpu, [.. ys.Select(t => t.Cpu)], ln.Cpu, rs.Cpu, x.Cpu, nw.Cpu, 1e-6f, [.. ws.Select(w => w.Cpu)]);
        for (int j = 0; j < outs.Length; j++) c.Compare(name, $"c{j}", ys[j], 0);
    }

    static void NormSwiGluCheck(Ctx c, int m, int k, int n)
    {
        var x = c.Pair(c.Rand((long)m * k, 2f), [m, k]);
        var nw = c.Pair(c.Rand(k), [k]);
        var g = c.Pair(c.Rand((long)n * k, 0.05f), [n, k]);
        var u = c.Pair(c.Rand((long)n * k, 0.05f), [n, k]);
        (Tensor Cpu, Tensor Gpu)[] Set() => [c.Zeros([m, n]), c.Zeros([m, n]), c.Zeros([m, n]), c.Zeros([m, k]), c.Zeros([m], DType.F32)];
        var (a, b) = (Set(), Set());
        string name = $"norm+gate/up+swiglu {m}x{n}x{k}";
        FusedVsComposed(c, name, fused =>
        {
            var s = fused ? a : b;
            c.Gpu.NormSwiGluMatMul(s[0].Gpu, s[1].Gpu, s[2].Gpu, s[3].Gpu, s[4].Gpu, x.Gpu, nw.Gpu, 1e-6f, g.Gpu, u.Gpu);
        }, [.. a.Zip(b, (p, q) => (p.Gpu, q.Gpu))], ["h", "gate", "up", "ln", "rstd"]);
        if (m <= 2)
            ColumnsVsOne(c, name, () => c.Gpu.NormSwiGluMatMul(b[0].Gpu, b[1].Gpu, b[2].Gpu, b[3].Gpu, b[4].Gpu, x.Gpu, nw.Gpu, 1e-6f, g.Gpu, u.Gpu),
                [.. b.Select(t => t.Gpu)], ["h", "gate", "up", "ln", "rstd"], 2L * n * k * 2);
        DecodeComposition.NormSwiGluMatMul(c.Cpu, a[0].Cpu, a[1].Cpu, a[2].Cpu, a[3].Cpu, a[4].Cpu, x.Cpu, nw.Cpu, 1e-6f, g.Cpu, u.Cpu);
        c.Compare(name, "h", a[0], 0);
    }

    /// <summary>
    /// AttentionOutputMlp as one cooperative launch (decode_mlp_tail, UsePersistentMlp) against its three fused kernels:
    /// every output's bits, the launch twice in a row (the grid barrier left ready), and the times of both forms.
    /// </summary>
    static void MlpTailCheck(Ctx c, int m, int ka, int hidden, int inter)
    {
        var att = c.Pair(c.Rand((long)m * ka), [m, ka]);
        var x = c.Pair(c.Rand((long)m * hidden, 2f), [m, hidden]);
        var wo = c.Pair(c.Rand((long)hidden * ka, 0.05f), [hidden, ka]);
        var nw = c.Pair(c.Rand(hidden), [hidden]);
        var wg = c.Pair(c.Rand((long)inter * hidden, 0.05f), [inter, hidden]);
        var wu = c.Pair(c.Rand((long)inter * hidden, 0.05f), [inter, hidden]);
        var wd = c.Pair(c.Rand((long)hidden * inter, 0.05f), [hidden, inter]);
        // y, mid, h, gate, up, ln, rstd
        (Tensor Cpu, Tensor Gpu)[] Set() =>
        [
            c.Zeros([m, hidden]), c.Zeros([m, hidden]), c.Zeros([m, inter]), c.Zeros([m, inter]), c.Zeros([m, inter]), c.Zeros([m, hidden]),
            c.Zeros([m], DType.F32),
        ];
        string[] names = ["y", "mid", "h", "gate", "up", "ln", "rstd"];
        var (one, three, again, dependent) = (Set(), Set(), Set(), Set());
        bool persistent = c.Gpu.UsePersistentMlp, pdl = c.Gpu.UseDependentLaunch;
        void Op((Tensor Cpu, Tensor Gpu)[] s, bool tail, bool asDependent = false)
        {
            c.Gpu.UsePersistentMlp = tail;
            c.Gpu.UseDependentLaunch = asDependent;
            c.Gpu.AttentionOutputMlp(s[0].Gpu, s[1].Gpu, s[2].Gpu, s[3].Gpu, s[4].Gpu, s[5].Gpu, s[6].Gpu, att.Gpu, wo.Gpu, x.Gpu, nw.Gpu, 1e-6f,
                wg.Gpu, wu.Gpu, wd.Gpu);
            c.Gpu.UsePersistentMlp = persistent;
            c.Gpu.UseDependentLaunch = pdl;
        }
        string name = $"o_proj+residual+norm+swiglu+down+residual {m}x{hidden} (attention {ka}, intermediate {inter})";
        c.Gpu.Device.BeginProfile();
        Op(one, true);
        bool ran = c.Gpu.Device.EndProfile().ContainsKey("decode_mlp_tail");
        c.Check($"{name} launches decode_mlp_tail", "kernel", ran, 0);
        Op(again, true);
        Op(dependent, true, asDependent: true);
        Op(three, false);
        for (int i = 0; i < names.Length; i++)
        {
            var bits = c.Download(one[i].Gpu);
            c.Check($"{name} one launch = three kernels", names[i] + " bits", bits.SequenceEqual(c.Download(three[i].Gpu)), 0);
            c.Check($"{name} one launch, again", names[i] + " bits", bits.SequenceEqual(c.Download(again[i].Gpu)), 0);
            c.Check($"{name} one launch, dependent (PDL)", names[i] + " bits", bits.SequenceEqual(c.Download(dependent[i].Gpu)), 0);
        }
        double oneMs = c.TimeRepeat(() => Op(again, true));
        double threeMs = c.TimeRepeat(() => Op(again, false));
        double dependentMs = c.TimeRepeat(() => Op(dependent, true, asDependent: true));
        DecodeComposition.AttentionOutputMlp(c.Cpu, one[0].Cpu, one[1].Cpu, one[2].Cpu, one[3].Cpu, one[4].Cpu, one[5].Cpu, one[6].Cpu, att.Cpu, wo.Cpu,
            x.Cpu, nw.Cpu, 1e-6f, wg.Cpu, wu.Cpu, wd.Cpu);
        c.Compare(name, "y", one[0], oneMs);
        long bytes = 2L * ((long)hidden * ka + 3L * inter * hidden);
        Console.WriteLine($"     {name}: one launch {oneMs:F4} ms ({bytes / oneMs / 1e6:F0} GB/s), three kernels {threeMs:F4} ms ({bytes / threeMs / 1e6:F0} GB/s), one dependent launch {dependentMs:F4} ms");
    }

    static void ResidualCheck(Ctx c, int m, int k, int n)
    {
        var x = c.Pair(c.Rand((long)m * k), [m, k]);
        var w = c.Pair(c.Rand((long)n * k, 0.05f), [n, k]);
        var r = c.Pair(c.Rand((long)m * n), [m, n]);
        var (y, y2) = (c.Zeros([m, n]), c.Zeros([m, n]));
        string name = $"matmul+residual {m}x{n}x{k}";
        FusedVsComposed(c, name, fused => c.Gpu.MatMulResidual((fused ? y : y2).Gpu, x.Gpu, w.Gpu, r.Gpu), [(y.Gpu, y2.Gpu)], ["y"]);
        if (m <= 2) ColumnsVsOne(c, name, () => c.Gpu.MatMulResidual(y2.Gpu, x.Gpu, w.Gpu, r.Gpu), [y2.Gpu], ["y"], (long)n * k * 2);
        if (m <= 2) StagedVsGlobal(c, name, () => c.Gpu.MatMulResidual(y2.Gpu, x.Gpu, w.Gpu, r.Gpu), [y2.Gpu], ["y"], (long)n * k * 2);
        // At one or two rows the fused kernel must run whenever its input rows fit shared memory (down_proj's K = 14336
        // at Llama-3-8B once took gemv_bf16 + ft_add: the normed kernels' K cap was applied here too).
        bool fits = (long)m * k * 2 <= FineTune.Engine.Cuda.CudaBackend.GemvMaxSharedBytes;
        c.Gpu.Device.BeginProfile();
        c.Gpu.MatMulResidual(y2.Gpu, x.Gpu, w.Gpu, r.Gpu);
        bool ran = c.Gpu.Device.EndProfile().ContainsKey("gemv_residual");
        c.Check($"{name} launches gemv_residual iff m <= 2 and its rows fit shared memory", "kernel", ran == (m <= 2 && fits), 0);
        DecodeComposition.MatMulResidual(c.Cpu, y.Cpu, x.Cpu, w.Cpu, r.Cpu);
        c.Compare(name, "y", y, 0);
    }

    /// <summary>
    /// A one-token decode step of sequence 0 at <paramref name="position"/> over a paged cache: a block table of
    /// <paramref name="width"/> shuffled blocks (block 0 unused), the position, the sequence and the new key's cache row.
    /// </summary>
    static ((Tensor Cpu, Tensor Gpu) Table, (Tensor Cpu, Tensor Gpu) Positions, (Tensor Cpu, Tensor Gpu) Sequences, (Tensor Cpu, Tensor Gpu) CacheRows)
        OneTokenStep(Ctx c, int width, int bs, int position)
    {
        int[] table = [.. Enumerable.Range(1, width).OrderBy(i => (i * 7919) % 1009)];
        return (c.IntPair(table, [width]), c.IntPair([position], [1]), c.IntPair([0], [1]), c.IntPair([table[position / bs] * bs + position % bs], [1]));
    }

    // Rotary tables [maxPos, d/2] at base 10000, on both backends.
    static ((Tensor Cpu, Tensor Gpu) Cos, (Tensor Cpu, Tensor Gpu) Sin) RopeTables(Ctx c, int maxPos, int d)
    {
        int half = d / 2;
        var cosv = new float[maxPos * half];
        var sinv = new float[maxPos * half];
        for (int p = 0; p < maxPos; p++)
            for (int i = 0; i < half; i++)
            {
                double theta = p * Math.Pow(10000, -2.0 * i / d);
                cosv[p * half + i] = (float)Math.Cos(theta);
                sinv[p * half + i] = (float)Math.Sin(theta);
            }
        return (c.Pair(cosv, [maxPos, half], DType.F32), c.Pair(sinv, [maxPos, half], DType.F32));
    }

    static void QkRopeCheck(Ctx c, int m, int d, int hq, int hkv, bool normed)
    {
        int half = d / 2, maxPos = 40, cacheRows = 16;
        var (cos, sin) = RopeTables(c, maxPos, d);
        int[] positions = [.. Enumerable.Range(0, m).Select(i => 5 + 17 * i)];
        int[] rows = [.. Enumerable.Range(0, m).Select(i => 11 - 3 * i)];
        var pos = c.IntPair(positions, [m]);
        var crow = c.IntPair(rows, [m]);
        var qIn = c.Pair(c.Rand((long)m * hq * d, 2f), [m, hq * d]);
        var kIn = c.Pair(c.Rand((long)m * hkv * d, 2f), [m, hkv * d]);
        var v = c.Pair(c.Rand((long)m * hkv * d), [m, hkv * d]);
        var qn = c.Pair(c.Rand(d), [d]);
        var kn = c.Pair(c.Rand(d), [d]);
        var kcBase = c.Rand((long)cacheRows * hkv * d);
        (Tensor Cpu, Tensor Gpu)[] Set() => normed
            ? [c.Zeros([m, hq * d]), c.Zeros([m, hkv * d]), c.Pair(kcBase, [cacheRows, hkv * d]), c.Pair(kcBase, [cacheRows, hkv * d]),
               c.Zeros([m * hq], DType.F32), c.Zeros([m * hkv], DType.F32)]
            : [c.Pair(c.Download(qIn.Gpu), [m, hq * d]), c.Pair(c.Download(kIn.Gpu), [m, hkv * d]), c.Pair(kcBase, [cacheRows, hkv * d]), c.Pair(kcBase, [cacheRows, hkv * d])];
        var (a, b) = (Set(), Set());
        string name = $"qk{(normed ? "-norm" : "")}+rope+cache {m}x(H{hq}/{hkv} D{d})";
        // Without norms q and k rotate in place: each run starts from fresh copies of the inputs.
        var qStart = c.Download(qIn.Gpu);
        var kStart = c.Download(kIn.Gpu);
        void Op(bool fused)
        {
            var s = fused ? a : b;
            if (normed)
                c.Gpu.QkRopeCache(s[0].Gpu, s[1].Gpu, qIn.Gpu, kIn.Gpu, v.Gpu, qn.Gpu, kn.Gpu, s[4].Gpu, s[5].Gpu, 1e-6f, pos.Gpu, cos.Gpu, sin.Gpu, d, s[2].Gpu, s[3].Gpu, crow.Gpu);
            else
            {
                c.Gpu.Upload(s[0].Gpu, qStart);
                c.Gpu.Upload(s[1].Gpu, kStart);
                c.Gpu.QkRopeCache(s[0].Gpu, s[1].Gpu, s[0].Gpu, s[1].Gpu, v.Gpu, null, null, null, null, 1e-6f, pos.Gpu, cos.Gpu, sin.Gpu, d, s[2].Gpu, s[3].Gpu, crow.Gpu);
            }
        }
        FusedVsComposed(c, name, Op, [.. a.Zip(b, (p, q) => (p.Gpu, q.Gpu))], normed ? ["q", "k", "kcache", "vcache", "qrstd", "krstd"] : ["q", "k", "kcache", "vcache"]);
        if (normed)
            DecodeComposition.QkRopeCache(c.Cpu, a[0].Cpu, a[1].Cpu, qIn.Cpu, kIn.Cpu, v.Cpu, qn.Cpu, kn.Cpu, a[4].Cpu, a[5].Cpu, 1e-6f, pos.Cpu, cos.Cpu, sin.Cpu, d, a[2].Cpu, a[3].Cpu, crow.Cpu);
        else
            DecodeComposition.QkRopeCache(c.Cpu, a[0].Cpu, a[1].Cpu, a[0].Cpu, a[1].Cpu, v.Cpu, null, null, null, null, 1e-6f, pos.Cpu, cos.Cpu, sin.Cpu, d, a[2].Cpu, a[3].Cpu, crow.Cpu);
        c.Compare(name, "q", a[0], 0);
        c.Compare(name, "kcache", a[2], 0);
    }
}
