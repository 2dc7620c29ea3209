using System.Runtime.InteropServices;
using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

/// <summary>
/// FP8 frozen weights (fp8: true), CUDA against the CPU emulation (Engine/Fp8.cs): the device cast (amax → scale → PTX
/// cvt.rn.satfinite) bit for bit in E4M3 and E5M2 from F32 and BF16 inputs, the weight's dequantization bit for bit, and
/// cuBLASLt's FP8 products (forward E4M3·E4M3, input gradient E5M2·E4M3, with and without accumulation) against the CPU
/// product of the same dequantized operands. Those differ only by f32 summation order and the bf16 rounding of the output:
/// tolerance 4e-3 relative (bf16's half ulp is 2^-9 ≈ 2e-3). A report-only row gives the FP8 product's distance from the
/// unquantized bf16 product (the precision FP8 costs), tolerance 0.1. Delayed scaling (Fp8DelayedScale): a site not
/// yet advanced casts as current scaling (product bits equal), its recorded amax and the history advance equal the CPU's
/// bit for bit, a ready site's one-pass cast (saturating past the history's amax) gives the CPU emulation's product;
/// timings of a 7B-sized product with each scaling. Fused casts (SwiGluFp8, SwiGluBackwardFp8, Fp8MatMulCodes; RmsNormFp8,
/// ResidualRmsNormFp8, Fp8MatMulSharedCodes): the device's fused kernels against its own composition and against the
/// CPU's cast, and their time at a 7B MLP's and a 7B layer's [tokens, hidden] shapes.
/// </summary>
public static class Fp8Checks
{
    static int[] Words(ReadOnlySpan<byte> bytes)
    {
        var w = new int[QuantizedWeight.WordsFor(bytes.Length)];
        bytes.CopyTo(MemoryMarshal.AsBytes(w.AsSpan()));
        return w;
    }

    static Tensor Alloc(IBackend b, List<DeviceBuffer> owned, DType t, params int[] shape)
    {
        long n = 1; foreach (var d in shape) n *= d;
        var buf = b.AllocateBuffer(Math.Max(16, n * t.ByteSize()));
        owned.Add(buf);
        return new Tensor(buf, 0, t, shape);
    }

    static Tensor Put(IBackend b, List<DeviceBuffer> owned, DType t, float[] v, params int[] shape)
    {
        var x = Alloc(b, owned, t, shape);
        b.Upload(x, v);
        return x;
    }

    static void Row(List<CheckRow> rows, string op, string path, string output, long n, double err, double tol, double ms)
    {
        bool pass = double.IsFinite(err) && err <= tol;
        rows.Add(new CheckRow(op, path, output, n, err, tol, pass, ms));
        Console.WriteLine($"{(pass ? "ok  " : "FAIL")} {path,-5} {op,-44} {output,-12} n={n,-9} err={err:E2} (tol {tol:E0}) gpu {ms:F3} ms");
    }

    /// <summary>Values that exercise the cast: random magnitudes over the format's range, midways, sub-normals, saturation.</summary>
    static float[] CastInputs(Fp8Format f, int n, int seed)
    {
        var rng = new Random(seed);
        float max = Fp8.Max(f);
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, -rng.NextDouble() * 24));
        // amax = max makes s = 1 exactly, so the special values below reach the cast unchanged (saturation: SaturationInputs).
        v[0] = max;
        var codes = Enumerable.Range(0, 256).Select(c => Fp8.Decode((byte)c, f)).Where(float.IsFinite).ToArray();
        int at = 1;
        foreach (float c in codes)
        {
            if (at + 3 >= n) break;
            v[at++] = c;
            if (MathF.Abs(c) == max) continue; // past the largest value lies saturation, which would move amax
            v[at++] = c * (1 + MathF.ScaleB(1f, f == Fp8Format.E4M3 ? -4 : -3)); // the midway above c
            v[at++] = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(c) + 1);
        }
        return v;
    }

    /// <summary>An infinite amax leaves s = 1, so values past the format's largest reach the cast and must saturate.</summary>
    static float[] SaturationInputs(Fp8Format f)
    {
        float max = Fp8.Max(f);
        return [float.PositiveInfinity, float.NegativeInfinity, max, -max, max * 1.03f, max * 1.0625f, max * 1.2f, -max * 1.5f, 1e30f, -3e38f, 1f, -0.5f, 0f, -0f, 1e-30f, 7f, 500f, 464f, 65536f, 61440f];
    }

    public static void Run(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows)
    {
        if (gpu.Fp8Refusal is { } why) { Console.WriteLine($"skip fp8 checks: {why}"); return; }
        var owned = new List<DeviceBuffer>();
        try
        {
            Casts(cpu, gpu, rows, owned);
            Products(cpu, gpu, rows, owned);
            Delayed(cpu, gpu, rows, owned);
            Fused(cpu, gpu, rows, owned);
            FusedNorms(cpu, gpu, rows, owned);
        }
        finally { foreach (var b in owned) b.Dispose(); }
    }

    static void Casts(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows, List<DeviceBuffer> owned)
    {
        foreach (var f in new[] { Fp8Format.E4M3, Fp8Format.E5M2 })
            // bf16 at 100,000 values takes the eight-wide kernels (fp8_amax_v8, fp8_quantize_v8), at 100,003 the scalar ones.
            foreach (var (dt, saturation, count) in new[] { (DType.F32, false, 100_003), (DType.BF16, false, 100_003), (DType.BF16, false, 100_000), (DType.F32, true, 0) })
            {
                var v = saturation ? SaturationInputs(f) : CastInputs(f, count, 11);
                string wide = dt == DType.BF16 && count % 8 == 0 ? " v8" : "";
                int n = v.Length;
                if (dt == DType.BF16) v = v.Select(x => Bf16.ToFloat(Bf16.FromFloat(x))).ToArray();
                var xc = Put(cpu, owned, DType.F32, v, n);
                var xg = Put(gpu, owned, dt, v, n);
                int words = QuantizedWeight.WordsFor(n);
                var qc = Alloc(cpu, owned, DType.I32, words); var sc = Alloc(cpu, owned, DType.F32, 1);
                var qg = Alloc(gpu, owned, DType.I32, words); var sg = Alloc(gpu, owned, DType.F32, 1);
                cpu.QuantizeFp8(qc, sc, xc, f);
                gpu.Synchronize();
                using (var timer = gpu.Device.StartTimer())
                {
                    gpu.QuantizeFp8(qg, sg, xg, f);
                    double ms = timer.StopMs();
                    var a = new int[words]; var b = new int[words];
                    cpu.Download(qc, a); gpu.Download(qg, b);
                    var ab = MemoryMarshal.AsBytes(a.AsSpan())[..n]; var bb = MemoryMarshal.AsBytes(b.AsSpan())[..n];
                    int differ = 0, first = -1;
                    for (int i = 0; i < n; i++) if (ab[i] != bb[i]) { differ++; if (first < 0) first = i; }
                    if (first >= 0) Console.WriteLine($"     first difference at {first}: x={v[first]:R} cpu 0x{ab[first]:X2} gpu 0x{bb[first]:X2}");
                    var s1 = new float[1]; var s2 = new float[1];
                    cpu.Download(sc, s1); gpu.Download(sg, s2);
                    bool scaleSame = BitConverter.SingleToInt32Bits(s1[0]) == BitConverter.SingleToInt32Bits(s2[0]);
                    Row(rows, $"fp8 quantize{wide} {f}{(saturation ? " saturating" : "")} (codes bit for bit)", dt == DType.BF16 ? "bf16" : "f32", "codes differing", n, differ, 0, ms);
                    Row(rows, $"fp8 quantize{wide} {f}{(saturation ? " saturating" : "")} (scale inverse)", dt == DType.BF16 ? "bf16" : "f32", "bits differ", 1, scaleSame ? 0 : 1, 0, 0);
                }
            }

        // The weight's dequantization: codes made on the host, read back on the device bit for bit.
        const int r = 896, c = 4864;
        var w = new float[r * c];
        new FineTune.Models.RandomWeights(3, 0.02f).Read("w", [r, c], w);
        var (codes, transposed, inv) = Fp8.QuantizeWeight(w, r, c);
        foreach (var dt in new[] { DType.F32, DType.BF16 })
        {
            var wc = UploadWeight(cpu, owned, codes, transposed, inv, r, c);
            var wg = UploadWeight(gpu, owned, codes, transposed, inv, r, c);
            var oc = Alloc(cpu, owned, DType.F32, r, c);
            var og = Alloc(gpu, owned, dt, r, c);
            cpu.Dequantize(oc, wc);
            gpu.Synchronize();
            using var timer = gpu.Device.StartTimer();
            gpu.Dequantize(og, wg);
            double ms = timer.StopMs();
            var want = new float[r * c]; var got = new float[r * c];
            cpu.Download(oc, want); gpu.Download(og, got);
            if (dt == DType.BF16) want = want.Select(x => Bf16.ToFloat(Bf16.FromFloat(x))).ToArray();
            int differ = 0;
            for (int i = 0; i < want.Length; i++) if (BitConverter.SingleToInt32Bits(want[i]) != BitConverter.SingleToInt32Bits(got[i])) differ++;
            Row(rows, "fp8 dequantize E4M3 weight (bit for bit)", dt == DType.BF16 ? "bf16" : "f32", "values differ", r * c, differ, 0, ms);
        }
    }

    public static QuantizedWeight UploadWeight(IBackend b, List<DeviceBuffer> owned, byte[] codes, byte[] transposed, float inverse, int rows, int cols)
    {
        var cw = Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(codes.Length));
        var tw = Alloc(b, owned, DType.I32, QuantizedWeight.WordsFor(transposed.Length));
        var sw = Alloc(b, owned, DType.F32, 1);
        b.Upload(cw, Words(codes)); b.Upload(tw, Words(transposed)); b.Upload(sw, [inverse]);
        return new QuantizedWeight(QuantFormat.Fp8E4M3, rows, cols, cw, sw, Transposed: tw);
    }

    static double Rel(float[] got, float[] want)
    {
        double num = 0, den = 0;
        for (int i = 0; i < got.Length; i++) { double d = (double)got[i] - want[i]; num += d * d; den += (double)want[i] * want[i]; }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }

    static int BitsDiffer(float[] a, float[] b)
    {
        int d = 0;
        for (int i = 0; i < a.Length; i++) if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i])) d++;
        return d;
    }

    static float[] Read(IBackend b, Tensor t)
    {
        var v = new float[t.Length];
        b.Download(t, v);
        return v;
    }

    static void Delayed(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows, List<DeviceBuffer> owned)
    {
        var rng = new Random(33);
        float[] Rand(int n, float s) => Enumerable.Range(0, n).Select(_ => Bf16.ToFloat(Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1) * s))).ToArray();
        const int history = 4, sites = 3;
        int stride = Fp8DelayedScale.Stride(history);
        // m·k = 77·256 (bf16: the eight-wide kernels) and f32 (the scalar ones); site 0 forward, 1 output gradient.
        int m = 77, n = 192, k = 256;
        var w = Rand(n * k, 0.05f);
        var (codes, transposed, inv) = Fp8.QuantizeWeight(w, n, k);
        var wc = UploadWeight(cpu, owned, codes, transposed, inv, n, k);
        var wg = UploadWeight(gpu, owned, codes, transposed, inv, n, k);
        foreach (var dt in new[] { DType.BF16, DType.F32 })
        {
            string path = dt == DType.BF16 ? "bf16" : "f32";
            var sc = Put(cpu, owned, DType.F32, new float[sites * stride], sites * stride);
            var sg = Put(gpu, owned, DType.F32, new float[sites * stride], sites * stride);
            Fp8DelayedScale Site(Tensor arena, int i, bool ready) => new(arena.View((long)i * stride, [stride]), ready);
            for (int pass = 0; pass < 6; pass++)
            {
                bool ready = pass > 0;
                // Inputs whose amax moves from pass to pass (pass 3 past the history's: its large values saturate).
                float scale = pass == 3 ? 4f : 1f + 0.25f * pass;
                foreach (bool grad in new[] { false, true })
                {
                    var a = Rand(m * (grad ? n : k), grad ? 1e-3f * scale : scale);
                    int cols = grad ? k : n;
                    var ac = Put(cpu, owned, DType.F32, a, m, grad ? n : k);
                    var ag = Put(gpu, owned, dt, a, m, grad ? n : k);
                    var cc = Alloc(cpu, owned, DType.F32, m, cols);
                    var cg = Alloc(gpu, owned, DType.BF16, m, cols);
                    int site = grad ? 1 : 0;
                    cpu.Fp8MatMul(cc, ac, wc, grad, delayed: Site(sc, site, ready));
                    gpu.Fp8MatMul(cg, ag, wg, grad, delayed: Site(sg, site, ready));
                    string op = $"fp8 delayed {(grad ? "dx (E5M2)" : "y (E4M3)")} pass {pass}{(ready ? "" : " (not yet advanced)")}";
                    if (!ready)
                    {
                        var cur = Alloc(gpu, owned, DType.BF16, m, cols);
                        gpu.Fp8MatMul(cur, ag, wg, grad);
                        Row(rows, op, path, "vs current (bits)", m * cols, BitsDiffer(Read(gpu, cg), Read(gpu, cur)), 0, 0);
                    }
                    else Row(rows, op, path, "vs cpu emulation", m * cols, Rel(Read(gpu, cg), Read(cpu, cc).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray()), 4e-3, 0);
                }
                Row(rows, $"fp8 delayed sites after pass {pass}'s casts", path, "bits differ", sites * stride, BitsDiffer(Read(gpu, sg), Read(cpu, sc)), 0, 0);
                cpu.Fp8AdvanceHistories(sc, sites, history);
                gpu.Fp8AdvanceHistories(sg, sites, history);
                Row(rows, $"fp8 history advance after pass {pass}", path, "bits differ", sites * stride, BitsDiffer(Read(gpu, sg), Read(cpu, sc)), 0, 0);
            }
        }

        // The cost of each scaling at a 7B shape (4×2048 tokens into a 4096×4096 weight, bf16): current casts in two
        // passes over x, delayed in one. Report only (tolerance: the two products agree within FP8's scale choice).
        {
            int M = 8192, N = 4096, K = 4096;
            var wBig = new float[N * K];
            new FineTune.Models.RandomWeights(5, 0.02f).Read("w", [N, K], wBig);
            var q = Fp8.QuantizeWeight(wBig, N, K);
            var wb = UploadWeight(gpu, owned, q.Codes, q.Transposed, q.ScaleInverse, N, K);
            var x = Alloc(gpu, owned, DType.BF16, M, K);
            gpu.Upload(x, Rand(M * K, 1f));
            var y1 = Alloc(gpu, owned, DType.BF16, M, N);
            var y2 = Alloc(gpu, owned, DType.BF16, M, N);
            var st = Put(gpu, owned, DType.F32, new float[stride], stride);
            gpu.Fp8MatMul(y2, x, wb, false, delayed: new Fp8DelayedScale(st, false));
            gpu.Fp8AdvanceHistories(st, 1, history);
            double Time(Action op)
            {
                op();
                gpu.Synchronize();
                using var timer = gpu.Device.StartTimer();
                for (int i = 0; i < 10; i++) op();
                return timer.StopMs() / 10;
            }
            double current = Time(() => gpu.Fp8MatMul(y1, x, wb, false));
            double delayed = Time(() => gpu.Fp8MatMul(y2, x, wb, false, delayed: new Fp8DelayedScale(st, true)));
            Console.WriteLine($"     fp8 product {M}x{N}x{K} with its cast: current scaling {current:F3} ms, delayed {delayed:F3} ms");
            Row(rows, $"fp8 delayed vs current {M}x{N}x{K} (same amax)", "bf16", "vs current", (long)M * N, Rel(Read(gpu, y2), Read(gpu, y1)), 1e-6, delayed);
        }
    }

    static byte[] CodeBytes(IBackend b, Tensor codes, long count)
    {
        var words = new int[codes.Length];
        b.Download(codes, words);
        return MemoryMarshal.AsBytes(words.AsSpan())[..checked((int)count)].ToArray();
    }

    static int BytesDiffer(byte[] a, byte[] b)
    {
        int d = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) d++;
        return d;
    }

    /// <summary>
    /// SwiGLU with its outputs' FP8 casts fused in (fp8_scaling: delayed), from ready sites with a non-trivial history
    /// (the history's amax under the pass's own, so values saturate; a pass amax recorded already). Against the device's
    /// composition (SwiGlu / SwiGluBackward, then Fp8MatMul's delayed cast): the outputs, the sites and the products from
    /// the codes bit for bit. Against the CPU: the codes, scale inverses and sites bit for bit (the CPU's delayed cast of
    /// the device's stored outputs: what a separate cast reads), the outputs within bf16 rounding of the CPU's f32 ones.
    /// bf16 77×192 and 2048×18944 take the fused kernels, f32 the composition they fall back to. Then the time of each at
    /// 8192×18944 (a 7B step's [tokens, intermediate]).
    /// </summary>
    /// <remarks>Any backend as <paramref name="gpu"/> (the timing runs on CUDA only), so the checks themselves can be tried on the CPU.</remarks>
    static void Fused(CpuBackend cpu, IBackend gpu, List<CheckRow> rows, List<DeviceBuffer> owned, (DType, int, int)[]? shapes = null)
    {
        var f = new FusedCastFixture(gpu, owned, rows, seed: 47);
        const int n = 256;
        int stride = f.Stride;
        var products = f.Products;

        foreach (var (dt, m, cols) in shapes ?? [(DType.BF16, 77, 192), (DType.BF16, 2048, 18944), (DType.F32, 77, 192)])
        {
            string path = dt == DType.BF16 ? "bf16" : "f32", shape = $"{m}x{cols}";
            long count = (long)m * cols;
            float[] g = f.Rand(count, 4f), u = f.Rand(count, 2f), d = f.Rand(count, 1e-2f);
            var gate = Put(gpu, owned, dt, g, m, cols);
            var up = Put(gpu, owned, dt, u, m, cols);
            var dh = Put(gpu, owned, dt, d, m, cols);
            var gc = Put(cpu, owned, DType.F32, g, m, cols);
            var uc = Put(cpu, owned, DType.F32, u, m, cols);
            var dhc = Put(cpu, owned, DType.F32, d, m, cols);

            // Forward: act and down_proj's product (E4M3) from its codes.
            var down = f.Weight(n, cols);
            float[] actSite = f.SiteValues(1f, 0.5f);
            var (h, hSeparate) = (Alloc(gpu, owned, dt, m, cols), Alloc(gpu, owned, dt, m, cols));
            var (site, siteSeparate) = (f.Site(actSite), f.Site(actSite));
            var hCodes = f.Operand(count);
            gpu.SwiGluFp8(h, gate, up, hCodes, site);
            gpu.SwiGlu(hSeparate, gate, up);
            var (y, ySeparate) = (Alloc(gpu, owned, products, m, n), Alloc(gpu, owned, products, m, n));
            gpu.Fp8MatMulCodes(y, hCodes, down, inputGradient: false);
            gpu.Fp8MatMul(ySeparate, hSeparate, down, inputGradient: false, delayed: siteSeparate);
            string op = $"swiglu fp8 fused cast {shape}";
            Row(rows, op, path, "h vs swiglu (bits)", count, BitsDiffer(Read(gpu, h), Read(gpu, hSeparate)), 0, 0);
            Row(rows, op, path, "y vs delayed (bits)", (long)m * n, BitsDiffer(Read(gpu, y), Read(gpu, ySeparate)), 0, 0);
            Row(rows, op, path, "site vs delayed (bits)", stride, BitsDiffer(Read(gpu, site.State), Read(gpu, siteSeparate.State)), 0, 0);
            f.VsCpuCast(op, path, h, hCodes, site, actSite, Fp8Format.E4M3);
            var hc = Alloc(cpu, owned, DType.F32, m, cols);
            cpu.SwiGlu(hc, gc, uc);
            Row(rows, op, path, "h vs cpu", count, Rel(Read(gpu, h), Read(cpu, hc)), 4e-3, 0);

            // Backward, in place as the training MLP runs it (dgate over a copy of gate, dup over one of up), and the
            // gate's and up's input-gradient products (E5M2) from the codes.
            var inputGradient = f.Weight(cols, n);
            float[] gateSiteValues = f.SiteValues(0.01f, 1e-3f), upSiteValues = f.SiteValues(0.02f, 0.05f);
            var (dgate, dup) = (Put(gpu, owned, dt, g, m, cols), Put(gpu, owned, dt, u, m, cols));
            var (dgateSeparate, dupSeparate) = (Alloc(gpu, owned, dt, m, cols), Alloc(gpu, owned, dt, m, cols));
            var (gateSite, upSite) = (f.Site(gateSiteValues), f.Site(upSiteValues));
            var (gateSiteSeparate, upSiteSeparate) = (f.Site(gateSiteValues), f.Site(upSiteValues));
            var (gateCodes, upCodes) = (f.Operand(count), f.Operand(count));
            gpu.SwiGluBackwardFp8(dgate, dup, dh, dgate, dup, gateCodes, gateSite, upCodes, upSite);
            gpu.SwiGluBackward(dgateSeparate, dupSeparate, dh, gate, up);
            op = $"swiglu_backward fp8 fused casts {shape}";
            foreach (var (name, x, xSeparate, codes, s1, s2, v) in new[]
            {
                ("dgate", dgate, dgateSeparate, gateCodes, gateSite, gateSiteSeparate, gateSiteValues),
                ("dup", dup, dupSeparate, upCodes, upSite, upSiteSeparate, upSiteValues),
            })
            {
                var (dx, dxSeparate) = (Alloc(gpu, owned, products, m, n), Alloc(gpu, owned, products, m, n));
                gpu.Fp8MatMulCodes(dx, codes, inputGradient, inputGradient: true);
                gpu.Fp8MatMul(dxSeparate, xSeparate, inputGradient, inputGradient: true, delayed: s2);
                Row(rows, $"{op} {name}", path, "vs backward (bits)", count, BitsDiffer(Read(gpu, x), Read(gpu, xSeparate)), 0, 0);
                Row(rows, $"{op} {name}", path, "dx vs delayed (bits)", (long)m * n, BitsDiffer(Read(gpu, dx), Read(gpu, dxSeparate)), 0, 0);
                Row(rows, $"{op} {name}", path, "site vs delayed (bits)", stride, BitsDiffer(Read(gpu, s1.State), Read(gpu, s2.State)), 0, 0);
                f.VsCpuCast($"{op} {name}", path, x, codes, s1, v, Fp8Format.E5M2);
            }
            var (dgc, duc) = (Alloc(cpu, owned, DType.F32, m, cols), Alloc(cpu, owned, DType.F32, m, cols));
            cpu.SwiGluBackward(dgc, duc, dhc, gc, uc);
            Row(rows, $"{op} dgate", path, "vs cpu", count, Rel(Read(gpu, dgate), Read(cpu, dgc)), 4e-3, 0);
            Row(rows, $"{op} dup", path, "vs cpu", count, Rel(Read(gpu, dup), Read(cpu, duc)), 4e-3, 0);
        }

        // The time of each at a 7B MLP's [tokens, intermediate] (bf16, out of place), with a 16-column product after it
        // (the products read the codes either way; the fused side skips the cast's read of the output).
        if (gpu is CudaBackend cuda)
        {
            int M = 8192, C = 18944, N = 16;
            long count = (long)M * C;
            var gate = Alloc(gpu, owned, DType.BF16, M, C);
            var up = Alloc(gpu, owned, DType.BF16, M, C);
            var dh = Alloc(gpu, owned, DType.BF16, M, C);
            var h = Alloc(gpu, owned, DType.BF16, M, C);
            var dup = Alloc(gpu, owned, DType.BF16, M, C);
            // A random block repeated (the time does not depend on the values, and 3 × 155 M draws would take seconds).
            float[] Tiled(float scale)
            {
                var block = f.Rand(1 << 20, scale);
                var v = new float[count];
                for (long i = 0; i < count; i += block.Length) block.AsSpan(0, (int)Math.Min(block.Length, count - i)).CopyTo(v.AsSpan((int)i));
                return v;
            }
            foreach (var (t, scale) in new[] { (gate, 4f), (up, 2f), (dh, 1e-2f) }) gpu.Upload(t, Tiled(scale));
            var down = f.Weight(N, C);
            var inputGradient = f.Weight(C, N);
            var (hCodes, upCodes) = (f.Operand(count), f.Operand(count));
            var (actSite, gateSite, upSite) = (f.Site(f.SiteValues(8f, 0f)), f.Site(f.SiteValues(0.02f, 0f)), f.Site(f.SiteValues(0.04f, 0f)));
            var (y, dx) = (Alloc(gpu, owned, DType.BF16, M, N), Alloc(gpu, owned, DType.BF16, M, N));
            double Time(Action op)
            {
                op();
                gpu.Synchronize();
                using var timer = cuda.Device.StartTimer();
                for (int i = 0; i < 10; i++) op();
                return timer.StopMs() / 10;
            }
            double forwardFused = Time(() => { gpu.SwiGluFp8(h, gate, up, hCodes, actSite); gpu.Fp8MatMulCodes(y, hCodes, down, false); });
            double forwardSeparate = Time(() => { gpu.SwiGlu(h, gate, up); gpu.Fp8MatMul(y, h, down, false, delayed: actSite); });
            // dgate into h's buffer: gate and up stay the inputs from call to call.
            double backwardFused = Time(() =>
            {
                gpu.SwiGluBackwardFp8(h, dup, dh, gate, up, hCodes, gateSite, upCodes, upSite);
                gpu.Fp8MatMulCodes(dx, hCodes, inputGradient, true);
                gpu.Fp8MatMulCodes(dx, upCodes, inputGradient, true, accumulate: true);
            });
            double backwardSeparate = Time(() =>
            {
                gpu.SwiGluBackward(h, dup, dh, gate, up);
                gpu.Fp8MatMul(dx, h, inputGradient, true, delayed: gateSite);
                gpu.Fp8MatMul(dx, dup, inputGradient, true, accumulate: true, delayed: upSite);
            });
            Console.WriteLine($"     swiglu fused cast vs composition ms ({M}x{C} bf16, with a {N}-column product): forward {forwardFused:F3} vs {forwardSeparate:F3}, backward {backwardFused:F3} vs {backwardSeparate:F3}");
        }
    }

    /// <summary>
    /// The pre-norms with ln1's and ln2's FP8 casts fused in (RmsNormFp8, ResidualRmsNormFp8 in place as LayerTail runs it)
    /// and the shared products from their codes (Fp8MatMulSharedCodes, two weights as q/k/v's and gate/up's), from ready
    /// sites whose history amax is under the pass's own (values saturate) with a pass amax recorded already. Against the
    /// device's composition (RmsNorm / ResidualRmsNorm, then Fp8MatMulShared's delayed cast): y, rstd, resid, the sites and
    /// the products bit for bit. Against the CPU: the codes, scale inverse and site bit for bit (the CPU's delayed cast of
    /// the device's stored y), y and resid within bf16 rounding of the CPU's f32 ones, rstd within f32 summation order.
    /// bf16 77×192 (also with gemma's 1 + w) and 2048×3584 take the fused kernels, f32 the composition they fall back to.
    /// Then the time of each at 8192×3584 (a 7B step's [tokens, hidden]) with a 16-column product pair after it.
    /// </summary>
    /// <remarks>Any backend as <paramref name="gpu"/> (the timing runs on CUDA only), so the checks themselves can be tried on the CPU.</remarks>
    internal static void FusedNorms(CpuBackend cpu, IBackend gpu, List<CheckRow> rows, List<DeviceBuffer> owned, (DType, int, int, float)[]? shapes = null)
    {
        var f = new FusedCastFixture(gpu, owned, rows, seed: 53);
        const int n = 256;
        const float eps = 1e-6f;
        int stride = f.Stride;
        var products = f.Products;
        // The products after the norm: two outputs of one input, from the codes and from the composition's own cast.
        void SharedProducts(string op, string path, int m, int cols, Tensor y, Tensor ySeparate, Fp8Operand codes, Fp8DelayedScale site,
            Fp8DelayedScale siteSeparate)
        {
            QuantizedWeight[] ws = [f.Weight(n, cols), f.Weight(n / 2, cols)];
            Tensor[] fused = [Alloc(gpu, owned, products, m, n), Alloc(gpu, owned, products, m, n / 2)];
            Tensor[] separate = [Alloc(gpu, owned, products, m, n), Alloc(gpu, owned, products, m, n / 2)];
            gpu.Fp8MatMulSharedCodes(fused, codes, ws);
            gpu.Fp8MatMulShared(separate, ySeparate, ws, delayed: siteSeparate);
            for (int i = 0; i < 2; i++)
                Row(rows, op, path, $"c{i} vs shared (bits)", fused[i].Length, BitsDiffer(Read(gpu, fused[i]), Read(gpu, separate[i])), 0, 0);
            Row(rows, op, path, "site vs shared (bits)", stride, BitsDiffer(Read(gpu, site.State), Read(gpu, siteSeparate.State)), 0, 0);
        }
        void VsCpuCast(string op, string path, Tensor y, Fp8Operand codes, Fp8DelayedScale site, float[] v)
        {
            var want = f.VsCpuCast(op, path, y, codes, site, v, Fp8Format.E4M3);
            // Some values lie past the history's amax (saturating at ±448): the check covers the clamp.
            Row(rows, op, path, "saturated codes", want.Length, want.Any(c => (c & 0x7F) == 0x7E) ? 0 : 1, 0, 0);
        }

        foreach (var (dt, m, cols, off) in shapes ?? [(DType.BF16, 77, 192, 0f), (DType.BF16, 77, 192, 1f), (DType.BF16, 2048, 3584, 0f), (DType.F32, 77, 192, 0f)])
        {
            string path = dt == DType.BF16 ? "bf16" : "f32", shape = $"{m}x{cols}{(off != 0f ? " (1 + w)" : "")}";
            long count = (long)m * cols;
            float[] xv = f.Rand(count, 2f), bv = f.Rand(count, 1f), wv = off != 0f ? f.Rand(cols, 0.25f) : f.Rand(cols, 0.5f, 1f);
            var x = Put(gpu, owned, dt, xv, m, cols);
            var b = Put(gpu, owned, dt, bv, m, cols);
            var w = Put(gpu, owned, dt, wv, cols);
            var (xc, bc, wc) = (Put(cpu, owned, DType.F32, xv, m, cols), Put(cpu, owned, DType.F32, bv, m, cols), Put(cpu, owned, DType.F32, wv, cols));
            float[] siteValues = f.SiteValues(1f, 0.5f);

            // ln1 = rmsnorm(x) and its codes.
            var (y, ySeparate) = (Alloc(gpu, owned, dt, m, cols), Alloc(gpu, owned, dt, m, cols));
            var (rstd, rstdSeparate) = (Alloc(gpu, owned, DType.F32, m), Alloc(gpu, owned, DType.F32, m));
            var (site, siteSeparate) = (f.Site(siteValues), f.Site(siteValues));
            var codes = f.Operand(count);
            gpu.RmsNormFp8(y, rstd, x, w, eps, off, codes, site);
            gpu.RmsNorm(ySeparate, rstdSeparate, x, w, eps, off);
            string op = $"rmsnorm fp8 fused cast {shape}";
            Row(rows, op, path, "y vs rmsnorm (bits)", count, BitsDiffer(Read(gpu, y), Read(gpu, ySeparate)), 0, 0);
            Row(rows, op, path, "rstd vs rmsnorm (bits)", m, BitsDiffer(Read(gpu, rstd), Read(gpu, rstdSeparate)), 0, 0);
            VsCpuCast(op, path, y, codes, site, siteValues);
            SharedProducts(op, path, m, cols, y, ySeparate, codes, site, siteSeparate);
            var (yc, rc) = (Alloc(cpu, owned, DType.F32, m, cols), Alloc(cpu, owned, DType.F32, m));
            cpu.RmsNorm(yc, rc, xc, wc, eps, off);
            Row(rows, op, path, "y vs cpu", count, Rel(Read(gpu, y), Read(cpu, yc)), 4e-3, 0);
            Row(rows, op, path, "rstd vs cpu", m, Rel(Read(gpu, rstd), Read(cpu, rc)), 1e-5, 0);

            // ln2: resid = resid + b in place (LayerTail's resMid += x), y = rmsnorm(resid) and its codes.
            var resid = Put(gpu, owned, dt, xv, m, cols);
            var residSeparate = Alloc(gpu, owned, dt, m, cols);
            (site, siteSeparate) = (f.Site(siteValues), f.Site(siteValues));
            codes = f.Operand(count);
            gpu.ResidualRmsNormFp8(resid, y, rstd, resid, b, w, eps, off, codes, site);
            gpu.ResidualRmsNorm(residSeparate, ySeparate, rstdSeparate, x, b, w, eps, off);
            op = $"residual_rmsnorm fp8 fused cast {shape}";
            Row(rows, op, path, "resid vs residual (bits)", count, BitsDiffer(Read(gpu, resid), Read(gpu, residSeparate)), 0, 0);
            Row(rows, op, path, "y vs residual (bits)", count, BitsDiffer(Read(gpu, y), Read(gpu, ySeparate)), 0, 0);
            Row(rows, op, path, "rstd vs residual (bits)", m, BitsDiffer(Read(gpu, rstd), Read(gpu, rstdSeparate)), 0, 0);
            VsCpuCast(op, path, y, codes, site, siteValues);
            SharedProducts(op, path, m, cols, y, ySeparate, codes, site, siteSeparate);
            var residc = Alloc(cpu, owned, DType.F32, m, cols);
            cpu.ResidualRmsNorm(residc, yc, rc, xc, bc, wc, eps, off);
            Row(rows, op, path, "resid vs cpu", count, Rel(Read(gpu, resid), Read(cpu, residc)), 4e-3, 0);
            Row(rows, op, path, "y vs cpu", count, Rel(Read(gpu, y), Read(cpu, yc)), 4e-3, 0);
        }

        // The time of each at a 7B layer's [tokens, hidden] (bf16), with two 16-column products after it (both read
        // codes; the fused side skips the cast's read of y).
        if (gpu is CudaBackend cuda)
        {
            int M = 8192, C = 3584, N = 16;
            var x = Put(gpu, owned, DType.BF16, f.Rand((long)M * C, 2f), M, C);
            var b = Put(gpu, owned, DType.BF16, f.Rand((long)M * C, 1f), M, C);
            var w = Put(gpu, owned, DType.BF16, f.Rand(C, 0.5f, 1f), C);
            var (y, resid, rstd) = (Alloc(gpu, owned, DType.BF16, M, C), Alloc(gpu, owned, DType.BF16, M, C), Alloc(gpu, owned, DType.F32, M));
            QuantizedWeight[] ws = [f.Weight(N, C), f.Weight(N, C)];
            Tensor[] cs = [Alloc(gpu, owned, DType.BF16, M, N), Alloc(gpu, owned, DType.BF16, M, N)];
            var codes = f.Operand((long)M * C);
            var site = f.Site(f.SiteValues(4f, 0f));
            double Time(Action op)
            {
                op();
                gpu.Synchronize();
                using var timer = cuda.Device.StartTimer();
                for (int i = 0; i < 10; i++) op();
                return timer.StopMs() / 10;
            }
            double normFused = Time(() => { gpu.RmsNormFp8(y, rstd, x, w, eps, 0f, codes, site); gpu.Fp8MatMulSharedCodes(cs, codes, ws); });
            double normSeparate = Time(() => { gpu.RmsNorm(y, rstd, x, w, eps); gpu.Fp8MatMulShared(cs, y, ws, delayed: site); });
            // Out of place (resid apart from x): x and b stay the inputs from call to call.
            double residualFused = Time(() => { gpu.ResidualRmsNormFp8(resid, y, rstd, x, b, w, eps, 0f, codes, site); gpu.Fp8MatMulSharedCodes(cs, codes, ws); });
            double residualSeparate = Time(() => { gpu.ResidualRmsNorm(resid, y, rstd, x, b, w, eps); gpu.Fp8MatMulShared(cs, y, ws, delayed: site); });
            Console.WriteLine($"     norm fused cast vs composition ms ({M}x{C} bf16, with two {N}-column products): rmsnorm {normFused:F3} vs {normSeparate:F3}, residual {residualFused:F3} vs {residualSeparate:F3}");
        }
    }

    static void Products(CpuBackend cpu, CudaBackend gpu, List<CheckRow> rows, List<DeviceBuffer> owned)
    {
        var rng = new Random(21);
        float[] Rand(int n, float s) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * s).ToArray();
        {
            // Fp8MatMulShared: q, k, v-like products of one input, x cast once; each must equal its own Fp8MatMul bit for bit.
            int m = 300, k = 512;
            int[] ns = [512, 128, 128];
            var x = Rand(m * k, 1f).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray();
            var xg = Put(gpu, owned, DType.BF16, x, m, k);
            var ws = ns.Select(n => { var w = Rand(n * k, 0.05f); var q = Fp8.QuantizeWeight(w, n, k); return UploadWeight(gpu, owned, q.Codes, q.Transposed, q.ScaleInverse, n, k); }).ToArray();
            var shared = ns.Select(n => Alloc(gpu, owned, DType.BF16, m, n)).ToArray();
            var single = ns.Select(n => Alloc(gpu, owned, DType.BF16, m, n)).ToArray();
            gpu.Synchronize();
            using var timer = gpu.Device.StartTimer();
            gpu.Fp8MatMulShared(shared, xg, ws);
            double ms = timer.StopMs();
            for (int i = 0; i < ns.Length; i++) gpu.Fp8MatMul(single[i], xg, ws[i], inputGradient: false);
            int differ = 0, total = 0;
            for (int i = 0; i < ns.Length; i++)
            {
                var a = new float[m * ns[i]]; var b = new float[m * ns[i]];
                gpu.Download(shared[i], a); gpu.Download(single[i], b);
                total += a.Length;
                for (int e = 0; e < a.Length; e++) if (BitConverter.SingleToInt32Bits(a[e]) != BitConverter.SingleToInt32Bits(b[e])) differ++;
            }
            Row(rows, "fp8 matmul shared input (3 weights, x cast once)", "bf16", "vs separate (bits)", total, differ, 0, ms);
        }
        foreach (var (m, n, k) in new[] { (77, 192, 256), (2048, 1024, 896) })
        {
            var w = Rand(n * k, 0.05f);
            var (codes, transposed, inv) = Fp8.QuantizeWeight(w, n, k);
            var wc = UploadWeight(cpu, owned, codes, transposed, inv, n, k);
            var wg = UploadWeight(gpu, owned, codes, transposed, inv, n, k);
            var x = Rand(m * k, 1f).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray();
            var dy = Rand(m * n, 1e-3f).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray();
            var start = Rand(m * n, 0.5f).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray();
            string shape = $"{m}x{n}x{k}";
            foreach (bool grad in new[] { false, true })
                foreach (bool acc in new[] { false, true })
                {
                    var a = grad ? dy : x;
                    int cols = grad ? k : n;
                    var init = grad ? Rand(m * k, 0.5f).Select(v => Bf16.ToFloat(Bf16.FromFloat(v))).ToArray() : start;
                    var ac = Put(cpu, owned, DType.F32, a, m, grad ? n : k);
                    var ag = Put(gpu, owned, DType.BF16, a, m, grad ? n : k);
                    var cc = Put(cpu, owned, DType.F32, init, m, cols);
                    var cg = Put(gpu, owned, DType.BF16, init, m, cols);
                    cpu.Fp8MatMul(cc, ac, wc, grad, acc);
                    gpu.Synchronize();
                    using var timer = gpu.Device.StartTimer();
                    gpu.Fp8MatMul(cg, ag, wg, grad, acc);
                    double ms = timer.StopMs();
                    var want = new float[m * cols]; var got = new float[m * cols];
                    cpu.Download(cc, want); gpu.Download(cg, got);
                    string op = $"fp8 matmul {(grad ? "dx = dy·W (E5M2·E4M3)" : "y = x·Wᵀ (E4M3·E4M3)")}{(acc ? " +=" : "")} {shape}";
                    Row(rows, op, "bf16", "vs cpu emulation", want.Length, Rel(got, want), 4e-3, ms);
                    if (acc) continue;
                    // The cost of FP8: the same product with the unquantized bf16 weight and input.
                    var wb = Put(gpu, owned, DType.BF16, w, n, k);
                    var cb = Alloc(gpu, owned, DType.BF16, m, cols);
                    gpu.MatMul(cb, ag, false, wb, !grad);
                    var plain = new float[m * cols];
                    gpu.Download(cb, plain);
                    Row(rows, op, "bf16", "vs bf16 product", want.Length, Rel(got, plain), 0.1, 0);
                }
        }
    }

    /// <summary>
    /// What the fused-cast checks (<see cref="Fused"/>, <see cref="FusedNorms"/>) build their cases from on the backend under
    /// test: bf16-exact random values, ready delayed-scaling sites with a non-trivial history of four, code buffers, FP8
    /// weights, and the CPU's delayed cast of a stored tensor compared bit for bit.
    /// </summary>
    sealed class FusedCastFixture(IBackend gpu, List<DeviceBuffer> owned, List<CheckRow> rows, int seed)
    {
        const int History = 4;
        readonly Random _rng = new(seed);

        public int Stride { get; } = Fp8DelayedScale.Stride(History);

        /// <summary>The products write bf16 as training's do (the CPU backend, trying these checks, holds F32 only).</summary>
        public DType Products { get; } = gpu is CudaBackend ? DType.BF16 : DType.F32;

        /// <summary>Values centre ± s, each exact in bf16.</summary>
        public float[] Rand(long count, float s, float centre = 0f)
        {
            var v = new float[count];
            for (long i = 0; i < count; i++)
            {
                float r = (float)(_rng.NextDouble() * 2 - 1) * s;
                v[i] = Bf16.ToFloat(Bf16.FromFloat(centre == 0f ? r : centre + r));
            }
            return v;
        }

        /// <summary>[history max, pass amax, pushes, ring]: six pushes into a ring of four.</summary>
        public float[] SiteValues(float historyMax, float passAmax) =>
            [historyMax, passAmax, BitConverter.Int32BitsToSingle(6), historyMax * 0.5f, historyMax, historyMax * 0.75f, historyMax * 0.25f];

        public Fp8DelayedScale Site(float[] v) => new(Put(gpu, owned, DType.F32, v, Stride), Ready: true);

        public Fp8Operand Operand(long count) => new(Alloc(gpu, owned, DType.I32, QuantizedWeight.WordsFor(count)), Alloc(gpu, owned, DType.F32, 1));

        public QuantizedWeight Weight(int r, int c)
        {
            var q = Fp8.QuantizeWeight(Rand((long)r * c, 0.05f), r, c);
            return UploadWeight(gpu, owned, q.Codes, q.Transposed, q.ScaleInverse, r, c);
        }

        /// <summary>
        /// The CPU's delayed cast of the device's stored tensor x from a site holding v: codes, scale inverse and site bit
        /// for bit. Returns the CPU's codes.
        /// </summary>
        public byte[] VsCpuCast(string op, string path, Tensor x, Fp8Operand codes, Fp8DelayedScale site, float[] v, Fp8Format format)
        {
            var stored = Read(gpu, x);
            var want = new byte[stored.Length];
            float inverse = Fp8.QuantizeWith(stored, want, format, v[0]);
            var wantSite = (float[])v.Clone();
            wantSite[1] = MathF.Max(v[1], Fp8.Amax(stored));
            Row(rows, op, path, "codes vs cpu cast", want.Length, BytesDiffer(CodeBytes(gpu, codes.Codes, want.Length), want), 0, 0);
            Row(rows, op, path, "scale inv vs cpu", 1, BitsDiffer(Read(gpu, codes.ScaleInverse), [inverse]), 0, 0);
            Row(rows, op, path, "site vs cpu", Stride, BitsDiffer(Read(gpu, site.State), wantSite), 0, 0);
            return want;
        }
    }
}
