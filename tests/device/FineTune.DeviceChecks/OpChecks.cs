using System.Diagnostics;
using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;
using FineTune.Engine.Sampling;

namespace FineTune.DeviceChecks;

/// <summary>One comparison: relative error ‖gpu − cpu‖ / ‖cpu‖ of one output.</summary>
public sealed record CheckRow(string Op, string Path, string Output, long Elements, double RelError, double Tolerance, bool Pass, double GpuMs);

/// <summary>
/// Runs every backend operation on the CPU backend (the reference, F32) and on the CUDA backend with the same
/// random inputs. F32 path: every CUDA tensor F32, tolerance 1e-4. BF16 path: activations and weights BF16 on
/// the GPU, the CPU fed the same BF16-rounded values in F32, tolerance 1e-2.
/// </summary>
public static partial class OpChecks
{
    sealed class Ctx(CpuBackend cpu, CudaBackend gpu, DType act, string path, double tol, List<CheckRow> rows)
    {
        public readonly CpuBackend Cpu = cpu;
        public readonly CudaBackend Gpu = gpu;
        public readonly DType Act = act;
        public readonly string Path = path;
        public readonly double Tol = tol;
        public readonly List<CheckRow> Rows = rows;
        public readonly Random Rng = new(1234);
        public readonly List<DeviceBuffer> Buffers = [];

        public float[] Rand(long n, float scale = 1f)
        {
            var a = new float[n];
            for (long i = 0; i < n; i++) a[i] = (float)(Rng.NextDouble() * 2 - 1) * scale;
            return a;
        }

        Tensor Alloc(IBackend b, DType t, int[] shape)
        {
            long n = 1; foreach (var d in shape) n *= d;
            var buf = b.AllocateBuffer(Math.Max(1, n) * t.ByteSize());
            Buffers.Add(buf);
            return new Tensor(buf, 0, t, shape);
        }

        /// <summary>The same values in both backends; GPU dtype <paramref name="gpuType"/> (null = the path's activation dtype).</summary>
        public (Tensor Cpu, Tensor Gpu) Pair(float[] values, int[] shape, DType? gpuType = null)
        {
            var t = gpuType ?? Act;
            var v = t == DType.BF16 ? values.Select(x => Bf16.ToFloat(Bf16.FromFloat(x))).ToArray() : values;
            var c = Alloc(Cpu, DType.F32, shape);
            var g = Alloc(Gpu, t, shape);
            Cpu.Upload(c, v);
            Gpu.Upload(g, v);
            return (c, g);
        }

        public (Tensor Cpu, Tensor Gpu) IntPair(int[] values, int[] shape)
        {
            var c = Alloc(Cpu, DType.I32, shape);
            var g = Alloc(Gpu, DType.I32, shape);
            Cpu.Upload(c, values);
            Gpu.Upload(g, values);
            return (c, g);
        }

        public (Tensor Cpu, Tensor Gpu) Zeros(int[] shape, DType? gpuType = null) => Pair(new float[shape.Aggregate(1L, (a, b) => a * b)], shape, gpuType);

        public void Compare(string op, string output, (Tensor Cpu, Tensor Gpu) t, double gpuMs, double? tol = null)
        {
            var a = new float[t.Cpu.Length];
            var b = new float[t.Gpu.Length];
            Cpu.Download(t.Cpu, a);
            Gpu.Download(t.Gpu, b);
            double num = 0, den = 0;
            bool finite = true;
            for (int i = 0; i < a.Length; i++)
            {
                if (!float.IsFinite(b[i])) finite = false;
                double d = (double)b[i] - a[i];
                num += d * d; den += (double)a[i] * a[i];
            }
            double rel = den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
            if (!finite) rel = double.NaN;
            double limit = tol ?? Tol;
            var row = new CheckRow(op, Path, output, a.Length, rel, limit, finite && rel <= limit, gpuMs);
            Rows.Add(row);
            Console.WriteLine($"{(row.Pass ? "ok  " : "FAIL")} {Path,-5} {op,-44} {output,-12} n={a.Length,-9} rel={rel:E2} (tol {limit:E0}) gpu {gpuMs:F3} ms");
        }

        public float[] Download(Tensor gpu)
        {
            var a = new float[gpu.Length];
            Gpu.Download(gpu, a);
            return a;
        }

        /// <summary>A pass/fail property (reported as error 0 or 1, tolerance 0).</summary>
        public void Check(string op, string output, bool pass, double gpuMs)
        {
            var row = new CheckRow(op, Path, output, 0, pass ? 0 : 1, 0, pass, gpuMs);
            Rows.Add(row);
            Console.WriteLine($"{(pass ? "ok  " : "FAIL")} {Path,-5} {op,-44} {output,-12} {(pass ? "holds" : "does not hold")}");
        }

        /// <summary>Mean device time of 5 runs (the work must not change its own inputs).</summary>
        public double TimeRepeat(Action gpuWork)
        {
            Gpu.Synchronize();
            using var timer = Gpu.Device.StartTimer();
            for (int i = 0; i < 5; i++) gpuWork();
            return timer.StopMs() / 5;
        }

        public double Time(Action gpuWork)
        {
            Gpu.Synchronize();
            using var timer = Gpu.Device.StartTimer();
            gpuWork();
            return timer.StopMs();
        }
    }

    /// <summary>
    /// The greedy argmax over vocabulary rows (the split form: parts of a row over blocks, the last part to finish
    /// picking), against the CPU, ties included; five launches back to back first (each must leave its counters at 0).
    /// </summary>
    static void ArgMaxCheck(Ctx c, int rowsN, int vocab)
    {
        var logits = c.Rand(rowsN * vocab);
        // Ties: the lower index wins, within one block's part of the row and across parts (the split argmax).
        int tied = Math.Min(3, rowsN - 1);
        logits[tied * vocab + 7] = logits[tied * vocab + 9] = logits[tied * vocab + 150000] = 100f;
        var x = c.Pair(logits, [rowsN, vocab], DType.F32); // F32 on both: bf16 rounding would tie values the CPU tells apart
        var picks = c.IntPair(new int[rowsN], [rowsN]);
        double t = c.TimeRepeat(() => c.Gpu.ArgMax(x.Gpu, picks.Gpu));
        c.Gpu.Upload(picks.Gpu, Enumerable.Repeat(-1, rowsN).ToArray()); // a launch that picked nothing would leave these
        c.Gpu.ArgMax(x.Gpu, picks.Gpu);
        c.Cpu.ArgMax(x.Cpu, picks.Cpu);
        var a = new int[rowsN];
        var b = new int[rowsN];
        c.Cpu.Download(picks.Cpu, a);
        c.Gpu.Download(picks.Gpu, b);
        c.Check($"argmax {rowsN}x{vocab}", "indices", a.SequenceEqual(b) && b[tied] == 7, t);
    }

    public static List<CheckRow> Run()
    {
        var rows = new List<CheckRow>();
        using var cpu = new CpuBackend();
        using var gpu = new CudaBackend(0);
        var info = gpu.Info;
        Console.WriteLine($"GPU: {info.Name} ({info.Architecture}, {info.Multiprocessors} SMs, {info.TotalMemoryBytes / (1 << 30)} GiB), driver {info.DriverVersion}");
        var sw = Stopwatch.StartNew();
        foreach (var (act, path, tol) in new[] { (DType.F32, "f32", 1e-4), (DType.BF16, "bf16", 1e-2) })
        {
            var ctx = new Ctx(cpu, gpu, act, path, tol, rows);
            RunAll(ctx);
            foreach (var b in ctx.Buffers) b.Dispose();
        }
        // Once, outside the two passes (its buffers would only repeat the same allocations in the steady-state pass).
        var timing = new Ctx(cpu, gpu, DType.BF16, "bf16", 1e-2, rows);
        GroupedGemmTiming(timing);
        foreach (var b in timing.Buffers) b.Dispose();
        QuantChecks.Run(cpu, gpu, rows);
        Fp8Checks.Run(cpu, gpu, rows);
        CollectiveChecks.Run(cpu, gpu, rows);
        Console.WriteLine($"NVRTC {gpu.Device.NvrtcLibrary}, cuBLASLt {gpu.Device.CublasLtLibrary}; kernels compiled {gpu.Device.KernelsCompiled}, from cache {gpu.Device.KernelsFromCache}, {gpu.Device.CompileSeconds:F2} s compiling/loading");

        // Steady state: the same op sequence again must not call cuMemAlloc (caching allocator).
        var before = gpu.Device.Allocator.Stats;
        var again = new Ctx(cpu, gpu, DType.BF16, "bf16", 1e-2, []);
        RunAll(again, quiet: true);
        foreach (var b in again.Buffers) b.Dispose();
        var after = gpu.Device.Allocator.Stats;
        bool steady = after.RawAllocations == before.RawAllocations;
        rows.Add(new CheckRow("allocator steady state", "bf16", "cuMemAlloc calls", after.RawAllocations - before.RawAllocations, 0, 0, steady, 0));
        Console.WriteLine($"{(steady ? "ok  " : "FAIL")} allocator: second pass made {after.RawAllocations - before.RawAllocations} cuMemAlloc calls (total {after.RawAllocations}); peak in use {after.PeakInUseBytes / 1048576.0:F1} MiB");
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"op checks: {rows.Count - failed} passed, {failed} failed ({sw.Elapsed.TotalSeconds:F1} s)");
        return rows;
    }

    static void RunAll(Ctx c, bool quiet = false)
    {
        var sink = quiet ? new List<CheckRow>() : null;
        var target = sink is null ? c : new Ctx(c.Cpu, c.Gpu, c.Act, c.Path, c.Tol, sink);
        if (sink is not null) { Elementwise(target); MatMuls(target); Norms(target); Attention(target); Generation(target); Loss(target); Optimizer(target); GemmaOps(target); Experts(target); c.Buffers.AddRange(target.Buffers); return; }
        Elementwise(c); MatMuls(c); Norms(c); Attention(c); Generation(c); DecodeOps(c); Loss(c); Optimizer(c); GemmaOps(c); Experts(c);
    }

    static void Elementwise(Ctx c)
    {
        int n = 100_003;
        var x = c.Pair(c.Rand(n), [n]);
        var y = c.Pair(c.Rand(n), [n]);
        double ms = c.Time(() => c.Gpu.Add(y.Gpu, x.Gpu, 0.75f));
        c.Cpu.Add(y.Cpu, x.Cpu, 0.75f);
        c.Compare("add", "y", y, ms);
        var x8 = c.Pair(c.Rand(100_000), [100_000]);
        var y8 = c.Pair(c.Rand(100_000), [100_000]);
        ms = c.Time(() => c.Gpu.Add(y8.Gpu, x8.Gpu, -0.5f));
        c.Cpu.Add(y8.Cpu, x8.Cpu, -0.5f);
        c.Compare("add (v8)", "y", y8, ms);
        ms = c.Time(() => c.Gpu.Scale(y.Gpu, -1.5f));
        c.Cpu.Scale(y.Cpu, -1.5f);
        c.Compare("scale", "x", y, ms);

        // Copy with conversion: F32 → path dtype → F32.
        var src = c.Pair(c.Rand(n), [n], DType.F32);
        var mid = c.Zeros([n]);
        var back = c.Zeros([n], DType.F32);
        ms = c.Time(() => { c.Gpu.Copy(mid.Gpu, src.Gpu); c.Gpu.Copy(back.Gpu, mid.Gpu); });
        c.Cpu.Copy(back.Cpu, src.Cpu);
        c.Compare("copy/cast", "dst", back, ms);

        int rows = 257, cols = 96;
        var yb = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var bias = c.Pair(c.Rand(cols), [cols]);
        ms = c.Time(() => c.Gpu.AddBias(yb.Gpu, bias.Gpu));
        c.Cpu.AddBias(yb.Cpu, bias.Cpu);
        c.Compare("add_bias", "y", yb, ms);
        var db = c.Pair(c.Rand(cols), [cols], DType.F32);
        ms = c.Time(() => c.Gpu.BiasBackward(db.Gpu, yb.Gpu));
        c.Cpu.BiasBackward(db.Cpu, yb.Cpu);
        c.Compare("bias_backward", "dbias", db, ms);

        int vocab = 311, tokens = 203, dim = 64;
        var table = c.Pair(c.Rand(vocab * dim), [vocab, dim]);
        var ids = Enumerable.Range(0, tokens).Select(i => c.Rng.Next(vocab)).ToArray();
        ids[5] = ids[9] = ids[17]; // repeated ids must add up in the backward
        var idt = c.IntPair(ids, [tokens]);
        var emb = c.Zeros([tokens, dim]);
        ms = c.Time(() => c.Gpu.Embedding(emb.Gpu, table.Gpu, idt.Gpu));
        c.Cpu.Embedding(emb.Cpu, table.Cpu, idt.Cpu);
        c.Compare("embedding", "out", emb, ms, tol: 0); // a copy: the same bits (bf16: embedding_forward_v8)
        var demb = c.Pair(c.Rand(tokens * dim), [tokens, dim]);
        var dtable = c.Zeros([vocab, dim], DType.F32);
        ms = c.Time(() => c.Gpu.EmbeddingBackward(dtable.Gpu, demb.Gpu, idt.Gpu));
        c.Cpu.EmbeddingBackward(dtable.Cpu, demb.Cpu, idt.Cpu);
        c.Compare("embedding_backward", "dtable", dtable, ms);
        if (c.Act == DType.BF16)
        {
            var dtb = c.Zeros([vocab, dim]);
            ms = c.Time(() => c.Gpu.EmbeddingBackward(dtb.Gpu, demb.Gpu, idt.Gpu));
            c.Cpu.EmbeddingBackward(dtb.Cpu, demb.Cpu, idt.Cpu);
            c.Compare("embedding_backward", "dtable bf16", dtb, ms);
        }

        foreach (int m in new[] { 4099, 4096 }) SwiGluChecks(c, m);
        DropoutChecks(c, 4099);
    }

    static void SwiGluChecks(Ctx c, int m)
    {
        string tag = m % 8 == 0 ? " (v8)" : "";
        double ms;
        float[] gHost = c.Rand(m, 4f), uHost = c.Rand(m, 2f);
        var g = c.Pair(gHost, [m]);
        var u = c.Pair(uHost, [m]);
        var h = c.Zeros([m]);
        ms = c.Time(() => c.Gpu.SwiGlu(h.Gpu, g.Gpu, u.Gpu));
        c.Cpu.SwiGlu(h.Cpu, g.Cpu, u.Cpu);
        c.Compare("swiglu" + tag, "h", h, ms);
        var dh = c.Pair(c.Rand(m), [m]);
        var dg = c.Zeros([m]); var du = c.Zeros([m]);
        ms = c.Time(() => c.Gpu.SwiGluBackward(dg.Gpu, du.Gpu, dh.Gpu, g.Gpu, u.Gpu));
        c.Cpu.SwiGluBackward(dg.Cpu, du.Cpu, dh.Cpu, g.Cpu, u.Cpu);
        c.Compare("swiglu_backward" + tag, "dgate", dg, ms);
        c.Compare("swiglu_backward" + tag, "dup", du, ms);
        InPlaceGluBits(c, "swiglu_backward" + tag, c.Gpu.SwiGluBackward, gHost, uHost, dh.Gpu, dg.Gpu, du.Gpu);
    }

    /// <summary>The training MLP's backward writes dgate over gate and dup over up: those bits must be the out-of-place call's.</summary>
    static void InPlaceGluBits(Ctx c, string op, Action<Tensor, Tensor, Tensor, Tensor, Tensor> backward, float[] gHost, float[] uHost,
        Tensor dh, Tensor dgate, Tensor dup)
    {
        var g = c.Pair(gHost, [gHost.Length]).Gpu;
        var u = c.Pair(uHost, [uHost.Length]).Gpu;
        backward(g, u, dh, g, u);
        c.Check(op, "in place: the out-of-place bits",
            c.Download(g).AsSpan().SequenceEqual(c.Download(dgate)) && c.Download(u).AsSpan().SequenceEqual(c.Download(dup)), 0);
    }

    static void DropoutChecks(Ctx c, int m)
    {
        double ms;

        // Counter-based randomness: the same seed gives the same mask on both backends (bit-exact in F32).
        var dx = c.Pair(c.Rand(m), [m]);
        var dy = c.Zeros([m]);
        ms = c.Time(() => c.Gpu.Dropout(dy.Gpu, dx.Gpu, 0.1f, 42));
        c.Cpu.Dropout(dy.Cpu, dx.Cpu, 0.1f, 42);
        c.Compare("dropout", "y", dy, ms);
        ms = c.Time(() => c.Gpu.AddUniformNoise(dx.Gpu, 0.05f, 7));
        c.Cpu.AddUniformNoise(dx.Cpu, 0.05f, 7);
        c.Compare("uniform_noise", "x", dx, ms);
    }

    static void MatMuls(Ctx c)
    {
        int m = 133, n = 96, k = 200;
        foreach (var (ta, tb) in new[] { (false, true), (false, false), (true, false), (true, true) })
        {
            var a = c.Pair(c.Rand(m * k), ta ? [k, m] : [m, k]);
            var b = c.Pair(c.Rand(k * n), tb ? [n, k] : [k, n]);
            // Output F32 (gradients) and, on the BF16 path, BF16 (activations).
            foreach (var outType in c.Act == DType.BF16 ? new[] { DType.F32, DType.BF16 } : new[] { DType.F32 })
            {
                var cc = c.Pair(c.Rand(m * n), [m, n], outType);
                double ms = c.Time(() => c.Gpu.MatMul(cc.Gpu, a.Gpu, ta, b.Gpu, tb, 0.5f, accumulate: true));
                c.Cpu.MatMul(cc.Cpu, a.Cpu, ta, b.Cpu, tb, 0.5f, accumulate: true);
                c.Compare($"matmul T{(ta ? 1 : 0)}{(tb ? 1 : 0)} acc ->{outType}", "c", cc, ms);
            }
        }
        // Decode-step products (1 … 8 rows against a bf16 weight): the GEMV kernel against the CPU, timed beside cuBLASLt
        // (every row count here takes the GEMV, whatever FINETUNE_GEMV_ROWS sends to it by default).
        int gemvRows = c.Gpu.GemvRows;
        c.Gpu.GemvRows = 8;
        if (c.Act == DType.BF16)
            foreach (var (gm, gn, gk) in new[] { (1, 2048, 2048), (2, 2048, 2048), (4, 2048, 2048), (5, 6144, 2048), (8, 2048, 6144), (3, 1000, 200) })
            {
                var x = c.Pair(c.Rand(gm * gk), [gm, gk]);
                var w = c.Pair(c.Rand(gn * gk, 0.05f), [gn, gk]);
                foreach (var outType in new[] { DType.BF16, DType.F32 })
                {
                    var y = c.Pair(c.Rand(gm * gn), [gm, gn], outType);
                    c.Gpu.UseGemv = false;
                    double blasMs = c.TimeRepeat(() => c.Gpu.MatMul(y.Gpu, x.Gpu, false, w.Gpu, true));
                    c.Gpu.UseGemv = true;
                    double ms = c.Time(() => c.Gpu.MatMul(y.Gpu, x.Gpu, false, w.Gpu, true, 0.5f, accumulate: true));
                    c.Cpu.MatMul(y.Cpu, x.Cpu, false, w.Cpu, true);
                    c.Cpu.MatMul(y.Cpu, x.Cpu, false, w.Cpu, true, 0.5f, accumulate: true);
                    c.Compare($"gemv {gm}x{gn}x{gk} acc ->{outType}", "c", y, ms);
                    double gemvMs = c.TimeRepeat(() => c.Gpu.MatMul(y.Gpu, x.Gpu, false, w.Gpu, true));
                    Console.WriteLine($"     gemv {gm}x{gn}x{gk}: {gemvMs:F4} ms ({2.0 * gn * gk / gemvMs / 1e6:F0} GB/s of weight), cuBLASLt {blasMs:F4} ms");
                }
            }
        // q/k/v in one launch (MatMulShared): the CPU's values, and the bits of three separate GEMV launches.
        if (c.Act == DType.BF16)
            foreach (int gm in new[] { 1, 4 })
            {
                int gk = 2048;
                var x = c.Pair(c.Rand(gm * gk), [gm, gk]);
                int[] outs = [2048, 1024, 1000];
                var ws = outs.Select(o => c.Pair(c.Rand(o * gk, 0.05f), [o, gk])).ToArray();
                var ys = outs.Select(o => c.Zeros([gm, o])).ToArray();
                var single = outs.Select(o => c.Zeros([gm, o])).ToArray();
                double ms = c.Time(() => c.Gpu.MatMulShared(ys.Select(y => y.Gpu).ToArray(), x.Gpu, ws.Select(w => w.Gpu).ToArray()));
                for (int j = 0; j < outs.Length; j++)
                {
                    c.Gpu.MatMul(single[j].Gpu, x.Gpu, false, ws[j].Gpu, true);
                    c.Cpu.MatMul(ys[j].Cpu, x.Cpu, false, ws[j].Cpu, true);
                    c.Compare($"gemv set {gm}x{outs[j]}x{gk} [{j}]", "c", ys[j], ms);
                    c.Check($"gemv set {gm}x{outs[j]}x{gk} [{j}] = separate launch", "bits", c.Download(ys[j].Gpu).SequenceEqual(c.Download(single[j].Gpu)), ms);
                }
                double setMs = c.TimeRepeat(() => c.Gpu.MatMulShared(ys.Select(y => y.Gpu).ToArray(), x.Gpu, ws.Select(w => w.Gpu).ToArray()));
                double sepMs = c.TimeRepeat(() => { for (int j = 0; j < outs.Length; j++) c.Gpu.MatMul(single[j].Gpu, x.Gpu, false, ws[j].Gpu, true); });
                Console.WriteLine($"     gemv set {gm} rows x (2048+1024+1000) x 2048: one launch {setMs:F4} ms, three {sepMs:F4} ms");
            }
        c.Gpu.GemvRows = gemvRows;
        // Mixed operands: an F32 master against BF16 activations (rounded to BF16 on the GPU).
        if (c.Act == DType.BF16)
        {
            var x = c.Pair(c.Rand(m * k), [m, k]);
            var wv = c.Rand(n * k).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray();
            var w = c.Pair(wv, [n, k], DType.F32);
            var y = c.Zeros([m, n], DType.F32);
            double ms = c.Time(() => c.Gpu.MatMul(y.Gpu, x.Gpu, false, w.Gpu, true));
            c.Cpu.MatMul(y.Cpu, x.Cpu, false, w.Cpu, true);
            c.Compare("matmul mixed f32·bf16", "c", y, ms);
        }
        {
            var x = c.Pair(c.Rand(m * k), [m, k]);
            var w = c.Pair(c.Rand(n * k), [n, k]);
            var bias = c.Pair(c.Rand(n), [n]);
            var y = c.Zeros([m, n]);
            double ms = c.Time(() => c.Gpu.LinearWithBias(y.Gpu, x.Gpu, w.Gpu, bias.Gpu));
            c.Cpu.MatMul(y.Cpu, x.Cpu, false, w.Cpu, true);
            c.Cpu.AddBias(y.Cpu, bias.Cpu);
            c.Compare("linear+bias epilogue", "y", y, ms);
        }
        {
            // The LoRA form of the training forward: y = scale·xaᵀᵀ·Bᵀ + bias with xaᵀ stored [r, m] (qwen2's q/k/v).
            const int r = 8;
            var xaT = c.Pair(c.Rand(r * m), [r, m]);
            var bw = c.Pair(c.Rand(n * r), [n, r]);
            var bias = c.Pair(c.Rand(n), [n]);
            var y = c.Zeros([m, n]);
            double ms = c.Time(() => c.Gpu.MatMulBias(y.Gpu, xaT.Gpu, true, bw.Gpu, true, bias.Gpu, 0.5f));
            ((IBackend)c.Cpu).MatMulBias(y.Cpu, xaT.Cpu, true, bw.Cpu, true, bias.Cpu, 0.5f);
            c.Compare("matmul+bias epilogue (transposed A, scaled)", "y", y, ms);
        }
    }

    static void Norms(Ctx c)
    {
        // 320 columns take the bf16 v8 kernels on the BF16 path; 100 columns the scalar ones.
        NormsOf(c, 67, 320, "");
        NormsOf(c, 5, 100, " (cols 100)");
        RopeChecks(c);
    }

    static void NormsOf(Ctx c, int rows, int cols, string tag)
    {
        var x = c.Pair(c.Rand(rows * cols, 3f), [rows, cols]);
        var w = c.Pair(c.Rand(cols), [cols]);
        var y = c.Zeros([rows, cols]);
        var rstd = c.Zeros([rows], DType.F32);
        double ms = c.Time(() => c.Gpu.RmsNorm(y.Gpu, rstd.Gpu, x.Gpu, w.Gpu, 1e-6f));
        c.Cpu.RmsNorm(y.Cpu, rstd.Cpu, x.Cpu, w.Cpu, 1e-6f);
        c.Compare("rmsnorm" + tag, "y", y, ms);
        c.Compare("rmsnorm" + tag, "rstd", rstd, ms);
        var dy = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var dx = c.Pair(c.Rand(rows * cols), [rows, cols]); // accumulates into existing values
        var dw = c.Pair(c.Rand(cols), [cols], DType.F32);
        ms = c.Time(() => c.Gpu.RmsNormBackward(dx.Gpu, dw.Gpu, dy.Gpu, x.Gpu, w.Gpu, rstd.Gpu));
        c.Cpu.RmsNormBackward(dx.Cpu, dw.Cpu, dy.Cpu, x.Cpu, w.Cpu, rstd.Cpu);
        c.Compare("rmsnorm_backward" + tag, "dx", dx, ms);
        c.Compare("rmsnorm_backward" + tag, "dweight", dw, ms);
        // Written (accumulate: false) over garbage: the bits of zeroing dx first and accumulating.
        var written = c.Pair(c.Rand(rows * cols, 7f), [rows, cols]);
        var zeroed = c.Zeros([rows, cols]);
        ms = c.Time(() => c.Gpu.RmsNormBackward(written.Gpu, null, dy.Gpu, x.Gpu, w.Gpu, rstd.Gpu, accumulate: false));
        c.Gpu.RmsNormBackward(zeroed.Gpu, null, dy.Gpu, x.Gpu, w.Gpu, rstd.Gpu);
        c.Cpu.RmsNormBackward(written.Cpu, null, dy.Cpu, x.Cpu, w.Cpu, rstd.Cpu, accumulate: false);
        c.Compare("rmsnorm_backward written" + tag, "dx", written, ms);
        c.Check("rmsnorm_backward written = zeroed + accumulated" + tag, "dx bits", c.Download(written.Gpu).AsSpan().SequenceEqual(c.Download(zeroed.Gpu)), ms);

        // Fused residual + norm against add-then-norm on the CPU.
        var a = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var b = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var resid = c.Zeros([rows, cols]);
        var y2 = c.Zeros([rows, cols]);
        var r2 = c.Zeros([rows], DType.F32);
        ms = c.Time(() => c.Gpu.ResidualRmsNorm(resid.Gpu, y2.Gpu, r2.Gpu, a.Gpu, b.Gpu, w.Gpu, 1e-5f));
        c.Cpu.Copy(resid.Cpu, a.Cpu);
        c.Cpu.Add(resid.Cpu, b.Cpu);
        c.Cpu.RmsNorm(y2.Cpu, r2.Cpu, resid.Cpu, w.Cpu, 1e-5f);
        c.Compare("residual_rmsnorm (fused)" + tag, "resid", resid, ms);
        c.Compare("residual_rmsnorm (fused)" + tag, "y", y2, ms);

    }

    static void RopeChecks(Ctx c)
    {
        double ms;
        // RoPE with a real table (theta 1e6), positions restarting per packed sequence.
        int tokens = 50, heads = 3, headDim = 64, half = headDim / 2, maxPos = 64;
        var cos = new float[maxPos * half]; var sin = new float[maxPos * half];
        for (int p = 0; p < maxPos; p++)
            for (int i = 0; i < half; i++)
            {
                double ang = p * Math.Pow(1e6, -2.0 * i / headDim);
                cos[p * half + i] = (float)Math.Cos(ang); sin[p * half + i] = (float)Math.Sin(ang);
            }
        var cosT = c.Pair(cos, [maxPos, half], DType.F32);
        var sinT = c.Pair(sin, [maxPos, half], DType.F32);
        var pos = c.IntPair(Enumerable.Range(0, tokens).Select(t => t < 30 ? t : t - 30).ToArray(), [tokens]);
        var q = c.Pair(c.Rand(tokens * heads * headDim), [tokens, heads * headDim]);
        ms = c.Time(() => c.Gpu.Rope(q.Gpu, pos.Gpu, cosT.Gpu, sinT.Gpu, headDim, false));
        c.Cpu.Rope(q.Cpu, pos.Cpu, cosT.Cpu, sinT.Cpu, headDim, false);
        c.Compare("rope", "x", q, ms);
        ms = c.Time(() => c.Gpu.Rope(q.Gpu, pos.Gpu, cosT.Gpu, sinT.Gpu, headDim, true));
        c.Cpu.Rope(q.Cpu, pos.Cpu, cosT.Cpu, sinT.Cpu, headDim, true);
        c.Compare("rope inverse", "x", q, ms);
        if (c.Act == DType.BF16) RopeVectorBits(c, cosT.Gpu, sinT.Gpu, maxPos, headDim);
    }

    /// <summary>
    /// rope_apply_v8 against the scalar rope_apply, bit for bit: the same bf16 rows once 16-byte aligned and once one
    /// element off (which takes the scalar kernel), forward then inverse; then the time of a qwen2.5-7b q at 8192 tokens.
    /// </summary>
    static void RopeVectorBits(Ctx c, Tensor cos, Tensor sin, int maxPos, int headDim)
    {
        int tokens = 77, heads = 5, width = heads * headDim;
        long n = (long)tokens * width;
        var values = c.Rand(n, 3f);
        var pos = c.IntPair([.. Enumerable.Range(0, tokens).Select(t => (t * 7) % maxPos)], [tokens]);
        var buf = c.Gpu.AllocateBuffer((2 * n + 16) * 2);
        c.Buffers.Add(buf);
        var whole = new Tensor(buf, 0, DType.BF16, [(int)(2 * n + 16)]);
        var aligned = whole.View(0, [tokens, width]);
        var offset = whole.View(n + 1, [tokens, width]);
        foreach (bool inverse in new[] { false, true })
        {
            c.Gpu.Upload(aligned, values);
            c.Gpu.Upload(offset, values);
            c.Gpu.Rope(aligned, pos.Gpu, cos, sin, headDim, inverse);
            c.Gpu.Rope(offset, pos.Gpu, cos, sin, headDim, inverse);
            c.Check($"rope_apply_v8 = rope_apply{(inverse ? " (inverse)" : "")}", "bits", c.Download(aligned).AsSpan().SequenceEqual(c.Download(offset)), 0);
        }
        int bigTokens = 8192, bigWidth = 3584; // qwen2.5-7b's q width
        var big = c.Gpu.AllocateBuffer((long)bigTokens * bigWidth * 2);
        c.Buffers.Add(big);
        var q = new Tensor(big, 0, DType.BF16, [bigTokens, bigWidth]);
        var bigPos = c.IntPair([.. Enumerable.Range(0, bigTokens).Select(t => t % maxPos)], [bigTokens]);
        c.Gpu.Rope(q, bigPos.Gpu, cos, sin, headDim, false);
        double ms = c.TimeRepeat(() => c.Gpu.Rope(q, bigPos.Gpu, cos, sin, headDim, false));
        Console.WriteLine($"     rope {bigTokens}x{bigWidth} bf16 (head_dim {headDim}): {ms:F3} ms ({(double)bigTokens * bigWidth * 4 / ms / 1e6:F0} GB/s)");
    }

    /// <summary>
    /// The generation engine's operations: K/V rows scattered into a paged cache, attention of a step that mixes a prompt
    /// chunk and decode tokens of several sequences through block tables (blocks of 16, out of order; GQA, head_dim 64 and
    /// 128), on the warp-per-head kernel and on the split-K kernel (decode tokens at long contexts: up to 4,000 keys), and
    /// the greedy argmax over a vocabulary row.
    /// </summary>
    static void Generation(Ctx c)
    {
        foreach (var (hq, hkv, d) in new[] { (4, 2, 64), (16, 8, 128) })
        {
            int bs = 16, width = 256, blocks = 3 * width + 1, kvd = hkv * d;
            // Table rows: 0 a chunk of 260 prompt tokens (positions 0..259), 1 a decode token at 40, 2 one at 3,999.
            // Blocks are handed out in a shuffled order so no sequence's blocks are contiguous.
            var pool = Enumerable.Range(1, blocks - 1).OrderBy(i => (i * 7919) % 1009).ToArray();
            var table = new int[3 * width];
            for (int i = 0; i < table.Length; i++) table[i] = pool[i];
            var tokenSeqs = Enumerable.Repeat(0, 260).Concat([1, 2]).ToArray();
            var tokenPos = Enumerable.Range(0, 260).Concat([40, 3999]).ToArray();
            int n = tokenSeqs.Length;
            var kc = c.Pair(c.Rand((long)blocks * bs * kvd), [blocks * bs, kvd]);
            var vc = c.Pair(c.Rand((long)blocks * bs * kvd), [blocks * bs, kvd]);
            var k = c.Pair(c.Rand(n * kvd), [n, kvd]);
            var v = c.Pair(c.Rand(n * kvd), [n, kvd]);
            var rows = c.IntPair(tokenSeqs.Select((s, i) => table[s * width + tokenPos[i] / bs] * bs + tokenPos[i] % bs).ToArray(), [n]);
            string tag = $"T{n} H{hq}/{hkv} D{d}";
            double ms = c.Time(() => { c.Gpu.ScatterRows(kc.Gpu, k.Gpu, rows.Gpu); c.Gpu.ScatterRows(vc.Gpu, v.Gpu, rows.Gpu); });
            c.Cpu.ScatterRows(kc.Cpu, k.Cpu, rows.Cpu);
            c.Cpu.ScatterRows(vc.Cpu, v.Cpu, rows.Cpu);
            c.Compare($"scatter_rows {tag}", "k_cache", kc, ms);
            c.Compare($"scatter_rows {tag}", "v_cache", vc, ms);
            var tb = c.IntPair(table, [table.Length]);
            var q = c.Pair(c.Rand(n * hq * d), [n, hq * d]);
            var o = c.Zeros([n, hq * d]);
            var sl = c.IntPair(tokenSeqs, [n]);
            var ps = c.IntPair(tokenPos, [n]);
            var shape = new CachedAttentionShape(n, blocks, bs, width, hq, hkv, d);
            c.Gpu.UseSplitKAttention = false;
            c.Gpu.CachedAttention(o.Gpu, q.Gpu, kc.Gpu, vc.Gpu, sl.Gpu, ps.Gpu, tb.Gpu, shape);
            ms = c.TimeRepeat(() => c.Gpu.CachedAttention(o.Gpu, q.Gpu, kc.Gpu, vc.Gpu, sl.Gpu, ps.Gpu, tb.Gpu, shape));
            c.Cpu.CachedAttention(o.Cpu, q.Cpu, kc.Cpu, vc.Cpu, sl.Cpu, ps.Cpu, tb.Cpu, shape);
            c.Compare($"cached_attention paged {tag}", "out", o, ms);
            c.Gpu.UseSplitKAttention = true;
            c.Gpu.CachedAttention(o.Gpu, q.Gpu, kc.Gpu, vc.Gpu, sl.Gpu, ps.Gpu, tb.Gpu, shape);
            ms = c.TimeRepeat(() => c.Gpu.CachedAttention(o.Gpu, q.Gpu, kc.Gpu, vc.Gpu, sl.Gpu, ps.Gpu, tb.Gpu, shape));
            c.Compare($"cached_attention split-k {tag}", "out", o, ms);

            // Decode only (what split-K is for): 8 sequences, one token each, at 1 … 3,999 keys, split-K vs the warp kernel.
            int[] decodePos = [0, 15, 16, 100, 1000, 2047, 3000, 3999];
            var dq = c.Pair(c.Rand(decodePos.Length * hq * d), [decodePos.Length, hq * d]);
            var dsl = c.IntPair([.. Enumerable.Range(0, decodePos.Length).Select(i => i % 3)], [decodePos.Length]);
            var dps = c.IntPair(decodePos, [decodePos.Length]);
            var warpOut = c.Zeros([decodePos.Length, hq * d]);
            var splitOut = c.Zeros([decodePos.Length, hq * d]);
            var dshape = shape with { Tokens = decodePos.Length };
            c.Gpu.UseSplitKAttention = false;
            double warpMs = c.TimeRepeat(() => c.Gpu.CachedAttention(warpOut.Gpu, dq.Gpu, kc.Gpu, vc.Gpu, dsl.Gpu, dps.Gpu, tb.Gpu, dshape));
            c.Gpu.UseSplitKAttention = true;
            double splitMs = c.TimeRepeat(() => c.Gpu.CachedAttention(splitOut.Gpu, dq.Gpu, kc.Gpu, vc.Gpu, dsl.Gpu, dps.Gpu, tb.Gpu, dshape));
            c.Cpu.CachedAttention(warpOut.Cpu, dq.Cpu, kc.Cpu, vc.Cpu, dsl.Cpu, dps.Cpu, tb.Cpu, dshape);
            c.Cpu.CachedAttention(splitOut.Cpu, dq.Cpu, kc.Cpu, vc.Cpu, dsl.Cpu, dps.Cpu, tb.Cpu, dshape);
            c.Compare($"cached_attention decode warp {tag}", "out", warpOut, warpMs);
            c.Compare($"cached_attention decode split-k {tag}", "out", splitOut, splitMs);
            Console.WriteLine($"     decode attention {tag}: warp kernel {warpMs:F3} ms, split-K {splitMs:F3} ms");
        }
        int vocab = 151936;
        ArgMaxCheck(c, 5, vocab);
        try { Sampling(c, vocab); }
        catch (Exception e) when (e is CudaException or ArgumentException)
        {
            // A failed launch must not hide the checks after it: one failed row with the message.
            c.Check($"sample_rows {vocab}: {e.GetType().Name}: {e.Message}", "tokens", false, 0);
        }
    }

    /// <summary>
    /// SampleRows on the GPU against the CPU backend (TokenSampling, the reference) for fixed uniforms: greedy with a
    /// repetition penalty, temperature with top-k / top-p, a tie at the top, and top_k 0 (the candidate limit: the GPU
    /// either gives the CPU's token or −1, which the engine hands to the host). Logits in F32 on both sides, so both
    /// backends see the same values.
    /// </summary>
    static void Sampling(Ctx c, int vocab)
    {
        var settings = new List<SamplingRow>();
        var seen = new List<int>();
        var rng = new Random(77);
        (bool Sample, double T, int K, double P, double Pen)[] kinds =
        [
            (false, 1, 0, 1, 1.3), (true, 0.7, 50, 0.9, 1), (true, 1.0, 20, 1, 1), (true, 0.95, 50, 0.7, 1.1),
            (true, 1.0, 1, 1, 1), (true, 0.6, 1000, 0.95, 1), (true, 1.0, 0, 0.8, 1), (true, 1.0, 0, 1, 1), (true, 0.8, 4000, 0.9, 1.2),
        ];
        foreach (var kind in kinds)
            foreach (double u in new[] { 0.0, 0.31, 0.5, 0.77, 0.999 })
            {
                int start = seen.Count, count = kind.Pen != 1 ? 40 : 0;
                for (int i = 0; i < count; i++) seen.Add(i * 37 % vocab);
                settings.Add(new SamplingRow(kind.Sample, kind.T, kind.K, kind.P, kind.Pen, u, start, count));
            }
        int rows = settings.Count;
        var logits = new float[(long)rows * vocab];
        for (int r = 0; r < rows; r++)
        {
            // A peaked row: noise, then 30 tokens well above it (so the nucleus of top_k 0 stays within the GPU's candidates).
            for (int i = 0; i < vocab; i++) logits[(long)r * vocab + i] = (float)(rng.NextDouble() * 4 - 2);
            for (int j = 0; j < 30; j++) logits[(long)r * vocab + (j * 4099 + r * 13) % vocab] = 12f + j * 0.25f;
            if (r % 3 == 0) logits[(long)r * vocab + 5] = logits[(long)r * vocab + 9] = 30f; // a tie at the top
        }
        var packed = new int[rows * SamplingRow.Ints];
        for (int r = 0; r < rows; r++) settings[r].Write(packed.AsSpan(r * SamplingRow.Ints, SamplingRow.Ints));
        var x = c.Pair(logits, [rows, vocab], DType.F32);
        var prm = c.IntPair(packed, [packed.Length]);
        var sn = c.IntPair([.. seen], [seen.Count]);
        var outT = c.IntPair(new int[rows], [rows]);
        var scratch = c.Zeros([rows, vocab], DType.F32);
        double ms = c.TimeRepeat(() => c.Gpu.SampleRows(x.Gpu, prm.Gpu, sn.Gpu, outT.Gpu, scratch.Gpu));
        c.Cpu.SampleRows(x.Cpu, prm.Cpu, sn.Cpu, outT.Cpu, scratch.Cpu);
        var want = new int[rows];
        var got = new int[rows];
        c.Cpu.Download(outT.Cpu, want);
        c.Gpu.Download(outT.Gpu, got);
        int equal = 0, deferred = 0, wrong = 0;
        for (int r = 0; r < rows; r++)
        {
            bool limit = settings[r].DoSample && (settings[r].TopK == 0 || settings[r].TopK > 1024);
            if (got[r] == want[r]) equal++;
            else if (got[r] == -1 && limit) deferred++;
            else { wrong++; Console.WriteLine($"     sample row {r} ({settings[r]}): gpu {got[r]}, cpu {want[r]}"); }
        }
        Console.WriteLine($"     sample_rows: {equal} equal, {deferred} left to the host, {wrong} different");
        c.Check($"sample_rows {rows}x{vocab}", "tokens", wrong == 0, ms);
        // The logits are left as they were (the host fallback re-reads them).
        c.Compare($"sample_rows {rows}x{vocab}", "logits kept", x, 0);
    }

    static void Attention(Ctx c)
    {
        var shapes = new List<(int B, int T, int Hq, int Hkv, int D)> { (2, 77, 4, 2, 64), (1, 130, 2, 1, 128), (2, 300, 8, 2, 128) };
        if (c.Act == DType.BF16) shapes.Add((1, 2048, 16, 8, 128));
        var variants = c.Act == DType.BF16 ? new[] { ("flash", true), ("simple", false) } : new[] { ("simple", false) };
        foreach (var (variant, flash) in variants)
            foreach (var (batch, t, hq, hkv, d) in shapes)
            {
                if (!flash && t > 1000) continue;
                c.Gpu.UseFlashAttention = flash;
                var s = AttentionShape.Training(batch, t, hq, hkv, d);
                var q = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
                var k = c.Pair(c.Rand(batch * t * hkv * d), [batch * t, hkv * d]);
                var v = c.Pair(c.Rand(batch * t * hkv * d), [batch * t, hkv * d]);
                // Packed: sequence 0 has segments of 30, 40 and the rest (padding); others one segment each.
                var seg = new int[batch * t];
                for (int b = 0; b < batch; b++)
                    for (int i = 0; i < t; i++) seg[b * t + i] = b == 0 && t < 1000 ? (i < 30 ? 0 : i < 70 ? 1 : 2) : 0;
                var segT = c.IntPair(seg, [batch, t]);
                var o = c.Zeros([batch * t, hq * d]);
                var lse = c.Zeros([batch, hq, t], DType.F32);
                string tag = $"{variant} B{batch} T{t} H{hq}/{hkv} D{d}";
                c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s); // warm-up (compile, load)
                double ms = c.TimeRepeat(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                c.Compare($"attention {tag}", "out", o, ms);
                c.Compare($"attention {tag}", "lse", lse, ms);
                if (flash) ForwardShapesBitEqual(c, $"attention {tag}", s, o, lse, q, k, v, segT);
                var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
                var dq = c.Zeros([batch * t, hq * d]); var dk = c.Zeros([batch * t, hkv * d]); var dv = c.Zeros([batch * t, hkv * d]);
                c.Cpu.AttentionBackward(dq.Cpu, dk.Cpu, dv.Cpu, dout.Cpu, o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                // The flash path checks every instantiated backward tile shape; outputs are poisoned with NaN first,
                // so an element a kernel fails to write fails the check.
                foreach (var tiles in variant == "flash" ? FlashBench.Variants.Cast<FlashBackwardTiles?>() : [null])
                {
                    c.Gpu.FlashTiles = tiles;
                    string tileTag = tiles is null ? "" : $" dq{tiles.DqWarps}x{tiles.DqKeys} kv{tiles.DkvWarps}x{tiles.DkvQueries}";
                    foreach (var g in new[] { dq.Gpu, dk.Gpu, dv.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
                    c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
                    var first = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(g => c.Download(g)).ToArray();
                    ms = c.TimeRepeat(() => c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                    c.Compare($"attention_backward {tag}{tileTag}", "dq", dq, ms);
                    c.Compare($"attention_backward {tag}{tileTag}", "dk", dk, ms);
                    c.Compare($"attention_backward {tag}{tileTag}", "dv", dv, ms);
                    // Deterministic: the sixth run's bits equal the first run's.
                    bool same = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select((g, i) => c.Download(g).AsSpan().SequenceEqual(first[i])).All(x => x);
                    c.Check($"attention_backward {tag}{tileTag}", "bit-repeat", same, ms);
                }
                c.Gpu.FlashTiles = null;
            }
        // Decoding shape: 3 new queries against 20 cached keys in a cache of 32.
        foreach (bool flash in c.Act == DType.BF16 ? new[] { true, false } : new[] { false })
        {
            c.Gpu.UseFlashAttention = flash;
            int batch = 2, ql = 3, kl = 20, cap = 32, hq = 4, hkv = 1, d = 64;
            var s = new AttentionShape(batch, ql, kl, cap, hq, hkv, d);
            var q = c.Pair(c.Rand(batch * ql * hq * d), [batch * ql, hq * d]);
            var k = c.Pair(c.Rand(batch * cap * hkv * d), [batch * cap, hkv * d]);
            var v = c.Pair(c.Rand(batch * cap * hkv * d), [batch * cap, hkv * d]);
            var segT = c.IntPair(new int[batch * cap], [batch, cap]);
            var o = c.Zeros([batch * ql, hq * d]);
            var lse = c.Zeros([batch, hq, ql], DType.F32);
            double ms = c.Time(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
            c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            c.Compare($"attention kv-cache {(flash ? "flash" : "simple")} Q3 K20/32", "out", o, ms);
            c.Compare($"attention kv-cache {(flash ? "flash" : "simple")} Q3 K20/32", "lse", lse, ms);
        }
        c.Gpu.UseFlashAttention = true;
        if (c.Act == DType.BF16) CudnnAttentionRows(c);
    }

    /// <summary>
    /// Every other instantiated forward tile shape (FlashForwardTiles) on the same inputs: out and lse the same bits as
    /// the default shape's (already in <paramref name="o"/>, <paramref name="lse"/>), each after NaN poisoning, with its time.
    /// </summary>
    static void ForwardShapesBitEqual(Ctx c, string tag, AttentionShape s, (Tensor Cpu, Tensor Gpu) o, (Tensor Cpu, Tensor Gpu) lse,
        (Tensor Cpu, Tensor Gpu) q, (Tensor Cpu, Tensor Gpu) k, (Tensor Cpu, Tensor Gpu) v, (Tensor Cpu, Tensor Gpu) seg)
    {
        var baseTiles = FlashForwardTiles.For(s.HeadDim, c.Gpu.FlashForward);
        var refOut = c.Download(o.Gpu); var refLse = c.Download(lse.Gpu);
        foreach (var tiles in FlashForwardTiles.Instantiated(s.HeadDim).Where(x => x != baseTiles))
        {
            c.Gpu.FlashForward = tiles;
            foreach (var g in new[] { o.Gpu, lse.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
            c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, seg.Gpu, s);
            double ms = c.TimeRepeat(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, seg.Gpu, s));
            bool same = c.Download(o.Gpu).AsSpan().SequenceEqual(refOut) && c.Download(lse.Gpu).AsSpan().SequenceEqual(refLse);
            c.Check($"{tag} forward {tiles} vs {baseTiles}", "bits", same, ms);
        }
        c.Gpu.FlashForward = null;
        // Leave the default shape's outputs in place for the backward that follows.
        c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, seg.Gpu, s);
    }

    static void Loss(Ctx c)
    {
        // 5003: the scalar kernels; 5008 (a multiple of 8): the bf16 rows' eight-wide kernels (xent_row_v8).
        foreach (int vocab in new[] { 5003, 5008 }) Loss(c, vocab);
        if (c.Act == DType.BF16) LossBandwidth(c, 256, 152064);
    }

    /// <summary>
    /// Time of the loss over one LM-head chunk of bf16 logits (TrainingSetup.LogitsChunkRows rows of Qwen2's vocabulary):
    /// forward only (one read of the logits) and with the gradient (two reads, one write), as GB/s.
    /// </summary>
    static void LossBandwidth(Ctx c, int rows, int vocab)
    {
        long n = (long)rows * vocab;
        var buf = c.Gpu.AllocateBuffer(n * 2);
        c.Buffers.Add(buf);
        var logits = new Tensor(buf, 0, DType.BF16, [rows, vocab]);
        var values = new float[n];
        for (long i = 0; i < n; i++) values[i] = (float)(c.Rng.NextDouble() * 16 - 8);
        c.Gpu.Upload(logits, values);
        var lab = c.IntPair([.. Enumerable.Range(0, rows).Select(i => c.Rng.Next(vocab))], [rows]);
        var loss = c.Zeros([1], DType.F32);
        c.Gpu.CrossEntropy(logits, lab.Gpu, loss.Gpu, 1f, false);
        double forward = c.TimeRepeat(() => c.Gpu.CrossEntropy(logits, lab.Gpu, loss.Gpu, 1f, false));
        double withGrad = c.Time(() => c.Gpu.CrossEntropy(logits, lab.Gpu, loss.Gpu, 1f, true));
        Console.WriteLine($"     cross_entropy {rows}x{vocab} bf16: forward {forward:F3} ms ({n * 2 / forward / 1e6:F0} GB/s), " +
                          $"with gradient {withGrad:F3} ms ({n * 6 / withGrad / 1e6:F0} GB/s)");
    }

    static void Loss(Ctx c, int vocab)
    {
        int n = 37;
        var labels = Enumerable.Range(0, n).Select(i => i % 7 == 3 ? -100 : c.Rng.Next(vocab)).ToArray();
        var lab = c.IntPair(labels, [n]);
        // Logits live in F32 on both paths' GPU side here (the model computes them with an F32 output GEMM).
        foreach (var lt in c.Act == DType.BF16 ? new[] { DType.F32, DType.BF16 } : new[] { DType.F32 })
        {
            var logits = c.Pair(c.Rand(n * vocab, 8f), [n, vocab], lt);
            var loss = c.Zeros([1], DType.F32);
            double ms = c.Time(() => c.Gpu.CrossEntropy(logits.Gpu, lab.Gpu, loss.Gpu, 1f / 31, true));
            c.Cpu.CrossEntropy(logits.Cpu, lab.Cpu, loss.Cpu, 1f / 31, true);
            c.Compare($"cross_entropy logits {lt} V={vocab}", "loss", loss, ms);
            c.Compare($"cross_entropy logits {lt} V={vocab}", "dlogits", logits, ms);
        }
        // LabelLogProbs (the preference objectives' head): per-row log p(label) forward only, then with per-row
        // gradient scales of both signs as BackwardSequences passes them (−∂L/∂logp), which also writes the gradient.
        var scales = c.Pair(c.Rand(n, 2f), [n], DType.F32);
        foreach (var lt in c.Act == DType.BF16 ? new[] { DType.F32, DType.BF16 } : new[] { DType.F32 })
        {
            float[] values = c.Rand(n * vocab, 8f);
            var forward = c.Pair(values, [n, vocab], lt);
            var logp = c.Zeros([n], DType.F32);
            double ms = c.Time(() => c.Gpu.LabelLogProbs(forward.Gpu, lab.Gpu, logp.Gpu, null));
            c.Cpu.LabelLogProbs(forward.Cpu, lab.Cpu, logp.Cpu, null);
            c.Compare($"label_log_probs logits {lt} V={vocab}", "logp", logp, ms);
            var logits = c.Pair(values, [n, vocab], lt);
            var logpGrad = c.Zeros([n], DType.F32);
            ms = c.Time(() => c.Gpu.LabelLogProbs(logits.Gpu, lab.Gpu, logpGrad.Gpu, scales.Gpu));
            c.Cpu.LabelLogProbs(logits.Cpu, lab.Cpu, logpGrad.Cpu, scales.Cpu);
            c.Compare($"label_log_probs logits {lt} V={vocab} scaled", "logp", logpGrad, ms);
            c.Compare($"label_log_probs logits {lt} V={vocab} scaled", "dlogits", logits, ms);
        }
    }

    static void Optimizer(Ctx c)
    {
        int n = 10_007;
        var g = c.Pair(c.Rand(n, 3f), [n], DType.F32);
        var acc = c.Pair([0.25f], [1], DType.F32);
        double ms = c.Time(() => c.Gpu.SumOfSquares(g.Gpu, acc.Gpu));
        c.Cpu.SumOfSquares(g.Cpu, acc.Cpu);
        c.Compare("sum_of_squares", "acc", acc, ms);
        var p = c.Pair(c.Rand(n), [n], DType.F32);
        var m = c.Pair(c.Rand(n, 0.01f), [n], DType.F32);
        var v = c.Pair(c.Rand(n, 0.01f).Select(Math.Abs).ToArray(), [n], DType.F32);
        var copy = c.Zeros([n]);
        var step = new AdamWStep(1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3, GradScale: 0.5f, MaxGradNorm: 1f);
        ms = c.Time(() => c.Gpu.AdamW(p.Gpu, g.Gpu, m.Gpu, v.Gpu, copy.Gpu, acc.Gpu, step));
        c.Cpu.AdamW(p.Cpu, g.Cpu, m.Cpu, v.Cpu, copy.Cpu, acc.Cpu, step);
        c.Compare("adamw (clipped)", "param", p, ms);
        c.Compare("adamw (clipped)", "m", m, ms);
        c.Compare("adamw (clipped)", "v", v, ms);
        c.Compare("adamw (clipped)", "copy", copy, ms);
        MultiTensorOptimizer(c);
    }

    /// <summary>
    /// SumOfSquaresMany and AdamWMany (one launch for the list) against the per-tensor calls, bit for bit, on 51 F32
    /// gradients of random odd lengths (one past the block cap, so its blocks stride); AdamW with and without a compute
    /// copy (the path's dtype), with and without clipping, each tensor with its own rate and decay. Prints both timings.
    /// </summary>
    static void MultiTensorOptimizer(Ctx c)
    {
        // Lengths from a generator of their own: every pass (the allocator's steady-state pass too) uses the same ones.
        var sizes = new Random(51);
        int[] lengths = [.. Enumerable.Range(0, 50).Select(_ => 2 * sizes.Next(0, 10_000) + 1), 600_001];
        var grads = lengths.Select(n => c.Pair(c.Rand(n, 3f), [n], DType.F32).Gpu).ToArray();
        var perTensor = c.Pair([0.25f], [1], DType.F32).Gpu;
        var many = c.Pair([0.25f], [1], DType.F32).Gpu;
        double loopMs = c.Time(() => { foreach (var g in grads) c.Gpu.SumOfSquares(g, perTensor); });
        double manyMs = c.Time(() => c.Gpu.SumOfSquaresMany(grads, many));
        c.Check("sum_of_squares_many = per-tensor", "acc bits", Bits(c.Download(many)).SequenceEqual(Bits(c.Download(perTensor))), manyMs);
        Console.WriteLine($"     {lengths.Length} tensors: sum_of_squares per-tensor {loopMs:F3} ms, many {manyMs:F3} ms " +
            $"(again: {c.Time(() => c.Gpu.SumOfSquaresMany(grads, many)):F3} ms)");

        // The norm the clipped updates read: large enough that min(1, max_norm/‖g‖) scales.
        var norm = c.Pair([c.Download(perTensor)[0]], [1], DType.F32).Gpu;
        AdamWStep Step(int i, bool clip) => new(i % 3 == 0 ? 2e-3f : 1e-3f, 0.9f, 0.999f, 1e-8f, i % 2 == 0 ? 0.01f : 0f, 5,
            GradScale: 0.5f, MaxGradNorm: clip ? 1f : 0f);
        foreach (bool withCopy in new[] { false, true })
            foreach (bool clip in new[] { false, true })
            {
                AdamWTensors[] States() => [.. lengths.Select((n, i) => new AdamWTensors(
                    c.Pair(c.Rand(n), [n], DType.F32).Gpu, grads[i], c.Pair(c.Rand(n, 0.01f), [n], DType.F32).Gpu,
                    c.Pair([.. c.Rand(n, 0.01f).Select(Math.Abs)], [n], DType.F32).Gpu, withCopy ? c.Zeros([n]).Gpu : null))];
                var loop = States();
                var fused = States();
                foreach (var (t, i) in fused.Select((t, i) => (t, i)))
                    foreach (var (dst, src) in new[] { (t.Param, loop[i].Param), (t.M, loop[i].M), (t.V, loop[i].V) }) c.Gpu.Copy(dst, src);
                var steps = lengths.Select((_, i) => Step(i, clip)).ToArray();
                loopMs = c.Time(() => { for (int i = 0; i < loop.Length; i++) { var t = loop[i]; c.Gpu.AdamW(t.Param, t.Grad, t.M, t.V, t.ComputeCopy, norm, steps[i]); } });
                manyMs = c.Time(() => c.Gpu.AdamWMany(fused, steps, norm));
                bool same = true;
                for (int i = 0; i < loop.Length && same; i++)
                    same = Bits(c.Download(loop[i].Param)).SequenceEqual(Bits(c.Download(fused[i].Param)))
                        && Bits(c.Download(loop[i].M)).SequenceEqual(Bits(c.Download(fused[i].M)))
                        && Bits(c.Download(loop[i].V)).SequenceEqual(Bits(c.Download(fused[i].V)))
                        && (!withCopy || Bits(c.Download(loop[i].ComputeCopy!)).SequenceEqual(Bits(c.Download(fused[i].ComputeCopy!))));
                string name = $"adamw_many = per-tensor{(withCopy ? $" ({c.Path} copy)" : "")}{(clip ? " (clipped)" : "")}";
                c.Check(name, "p, m, v bits", same, manyMs);
                Console.WriteLine($"     {lengths.Length} tensors: adamw per-tensor {loopMs:F3} ms, many {manyMs:F3} ms " +
                    $"(again: {c.Time(() => c.Gpu.AdamWMany(fused, steps, norm)):F3} ms)");
            }

        static int[] Bits(float[] a) => [.. a.Select(BitConverter.SingleToInt32Bits)];
    }
}
