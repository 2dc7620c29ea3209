using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

// Mixture of experts: router, its backward with the load-balancing term, statistics, the expert sort, the grouped
// products (both orientations, accumulate, the weight gradient; an expert without rows), combine and the backwards.
public static partial class OpChecks
{
    static void Experts(Ctx c)
    {
        foreach (var (n, e, k, normalize) in new[] { (300, 16, 2, true), (257, 128, 8, false) })
            ExpertChecks(c, n, e, k, normalize);
        foreach (var (n, e, k) in new[] { (1537, 128, 8), (5001, 3, 1) })
            MoeSortPasses(c, n, e, k);
        GroupedGemmChecks(c);
    }

    /// <summary>
    /// moe_sort over more choices than one pass of moe_place covers (1024 threads × 4 choices): 12,296 choices (three
    /// passes, the last partial, each token's k experts distinct) and 5,001 choices over 3 experts (thousands of matches
    /// per expert, runs of 4 that hit several times); offsets, sorted tokens and rows against the CPU's stable sort.
    /// </summary>
    static void MoeSortPasses(Ctx c, int n, int e, int k)
    {
        var rng = new Random(n);
        var chosen = new int[n * k];
        for (int t = 0; t < n; t++)
        {
            var experts = Enumerable.Range(0, e).OrderBy(_ => rng.Next()).Take(k).ToArray();
            experts.CopyTo(chosen, t * k);
        }
        CheckMoeSort(c, chosen, n, k, e, $"T{n} E{e} k{k} (several moe_place passes)");
    }

    /// <summary>
    /// moe_sort of <paramref name="chosen"/> ([n, k] expert ids) on both backends: offsets, sorted tokens and rows must be
    /// equal. Returns the pairs (the grouped-product checks go on from them).
    /// </summary>
    static ((Tensor Cpu, Tensor Gpu) Offsets, (Tensor Cpu, Tensor Gpu) Sorted, (Tensor Cpu, Tensor Gpu) RowOf) CheckMoeSort(
        Ctx c, int[] chosen, int n, int k, int e, string tag)
    {
        var ids = c.IntPair(chosen, [n, k]);
        var offsets = c.IntPair(new int[e + 1], [e + 1]);
        var sorted = c.IntPair(new int[n * k], [n * k]);
        var rowOf = c.IntPair(new int[n * k], [n * k]);
        double ms = c.Time(() => c.Gpu.MoeSort(ids.Gpu, offsets.Gpu, sorted.Gpu, rowOf.Gpu));
        c.Cpu.MoeSort(ids.Cpu, offsets.Cpu, sorted.Cpu, rowOf.Cpu);
        bool same = true;
        foreach (var t in new[] { offsets, sorted, rowOf })
        {
            var a = new int[t.Cpu.Length];
            var b = new int[t.Gpu.Length];
            c.Cpu.Download(t.Cpu, a);
            c.Gpu.Download(t.Gpu, b);
            same &= a.SequenceEqual(b);
        }
        c.Check($"moe_sort {tag}", "order", same, ms);
        return (offsets, sorted, rowOf);
    }

    /// <summary>
    /// The grouped product's kernels against the CPU on ragged groups: an empty expert, a 1-row expert, 300 rows (three
    /// 128-row tiles, the last of 44), 128 and 129 rows (a tile edge), 37 rows; N 200 and K 264 end inside a column tile
    /// and a k-step. Both layouts, c written (the path's dtype: bf16 on the BF16 path) and c f32 accumulated. On the BF16 path each case runs the 128×128
    /// grouped_gemm_mma variants and the 64×64 grouped_gemm_tc; on the F32 path the fp32 tile kernel.
    /// </summary>
    static void GroupedGemmChecks(Ctx c)
    {
        int[] sizes = [0, 1, 300, 128, 129, 37];
        int e = sizes.Length, rows = sizes.Sum(), n = 200, k = 264;
        var offs = new int[e + 1];
        for (int x = 0; x < e; x++) offs[x + 1] = offs[x] + sizes[x];
        var offsets = c.IntPair(offs, [e + 1]);
        var a = c.Pair(c.Rand((long)rows * k), [rows, k]);
        var wT = c.Pair(c.Rand((long)e * n * k, 0.2f), [e, n, k]);   // trans_w: w_x [N, K]
        var wN = c.Pair(c.Rand((long)e * k * n, 0.2f), [e, k, n]);   // w_x [K, N]
        var init = c.Rand((long)rows * n);
        var prior = c.Gpu.GroupedGemm;
        foreach (var kernel in c.Act == DType.BF16 ? Enum.GetValues<GroupedGemmKernel>() : [prior])
        {
            c.Gpu.GroupedGemm = kernel;
            string name = c.Act != DType.BF16 ? "grouped_gemm" : KernelName(kernel);
            foreach (bool transW in new[] { true, false })
            {
                var w = transW ? wT : wN;
                string tag = $"{name} {(transW ? "x·Wᵀ" : "dy·W")} groups 0,1,300,128,129,37 N{n} K{k}";
                var written = c.Pair(c.Rand((long)rows * n), [rows, n]);   // the path's dtype: bf16 on the BF16 path
                double ms = c.Time(() => c.Gpu.GroupedMatMul(written.Gpu, a.Gpu, w.Gpu, transW, offsets.Gpu));
                c.Cpu.GroupedMatMul(written.Cpu, a.Cpu, w.Cpu, transW, offsets.Cpu);
                c.Compare($"{tag} c {(c.Act == DType.BF16 ? "bf16" : "f32")}", "c", written, ms);
                var summed = c.Pair(init, [rows, n], DType.F32);
                ms = c.Time(() => c.Gpu.GroupedMatMul(summed.Gpu, a.Gpu, w.Gpu, transW, offsets.Gpu, accumulate: true));
                c.Cpu.GroupedMatMul(summed.Cpu, a.Cpu, w.Cpu, transW, offsets.Cpu, accumulate: true);
                c.Compare($"{tag} c f32 +=", "c", summed, ms);
            }
            // The weight gradient of the first layout: dw_x [N, K] += dc_xᵀ·a_x (Tile64: grouped_gemm_weight_grad_tc,
            // the others grouped_gemm_weight_grad_mma).
            var dc = c.Pair(c.Rand((long)rows * n), [rows, n]);
            var dw = c.Pair(c.Rand((long)e * n * k, 0.1f), [e, n, k], DType.F32);
            string wname = c.Act != DType.BF16 ? "grouped_gemm_weight_grad" : kernel == GroupedGemmKernel.Tile64 ? "grouped_gemm_weight_grad_tc" : "grouped_gemm_weight_grad_mma";
            double wms = c.Time(() => c.Gpu.GroupedMatMulWeightGrad(dw.Gpu, dc.Gpu, a.Gpu, offsets.Gpu));
            c.Cpu.GroupedMatMulWeightGrad(dw.Cpu, dc.Cpu, a.Cpu, offsets.Cpu);
            c.Compare($"{wname} ({name}) groups 0,1,300,128,129,37 N{n} K{k}", "dw", dw, wms);
        }
        c.Gpu.GroupedGemm = prior;
    }

    static string KernelName(GroupedGemmKernel kernel) => kernel switch
    {
        GroupedGemmKernel.Tile64 => "grouped_gemm_tc",
        GroupedGemmKernel.Tile128K64Stages3 => "grouped_gemm_mma_k64s3",
        GroupedGemmKernel.Tile128K32Stages3 => "grouped_gemm_mma_k32s3",
        _ => "grouped_gemm_mma_k32s4",
    };

    /// <summary>
    /// grouped_gemm_tc (old) against each grouped_gemm_mma variant (new) at qwen3-30b-a3b's MoE shape: 16,384 routed rows over 128
    /// experts, 64 to 192 rows each (seeded), the products one layer runs (gate and up, down, the two input gradients)
    /// plus gate and up fused into one N 1536 product. Prints device ms (mean of 5 after a warm-up) and TFLOP/s
    /// (2·rows·N·K) for each kernel; each new output must match the old one (relative L2 within the bf16 tolerance).
    /// </summary>
    static void GroupedGemmTiming(Ctx c)
    {
        const int rows = 16_384, e = 128;
        var rng = new Random(30);
        var counts = Enumerable.Range(0, e).Select(_ => 64 + rng.Next(129)).ToArray();
        for (int x = 0, diff = rows - counts.Sum(); diff != 0; x = (x + 1) % e)
        {
            int step = Math.Sign(diff);
            if (counts[x] + step < 1) continue;
            counts[x] += step; diff -= step;
        }
        var offs = new int[e + 1];
        for (int x = 0; x < e; x++) offs[x + 1] = offs[x] + counts[x];
        var offsets = c.IntPair(offs, [e + 1]);
        Tensor Noise(int[] shape, ulong seed)
        {
            long len = shape.Aggregate(1L, (p, d) => p * d);
            var buf = c.Gpu.AllocateBuffer(len * 2);
            c.Buffers.Add(buf);
            var t = new Tensor(buf, 0, DType.BF16, shape);
            c.Gpu.Zero(t);
            c.Gpu.AddUniformNoise(t, 0.1f, seed);
            return t;
        }
        var prior = c.Gpu.GroupedGemm;
        foreach (var (label, n, k, transW, accumulate) in new[]
        {
            ("gate|up x·Wᵀ", 768, 2048, true, false), ("gate_up fused x·Wᵀ", 1536, 2048, true, false),
            ("down x·Wᵀ", 2048, 768, true, false), ("dact = dout·W_down", 768, 2048, false, false),
            ("dxs += dgate·W_gate", 2048, 768, false, true),
        })
        {
            var a = Noise([rows, k], 1);
            var w = Noise(transW ? [e, n, k] : [e, k, n], 2);
            double tflop = 2.0 * rows * n * k / 1e12;
            string op = $"grouped_gemm {label} rows {rows} E {e} N{n} K{k} trans_w {(transW ? 1 : 0)}";
            float[]? reference = null;
            double oldMs = 0;
            // Tile64 (the old kernel) first: its output is the reference for the others.
            foreach (var kernel in Enum.GetValues<GroupedGemmKernel>().OrderBy(x => x == GroupedGemmKernel.Tile64 ? 0 : 1))
            {
                c.Gpu.GroupedGemm = kernel;
                var y = Noise([rows, n], 3);
                c.Gpu.GroupedMatMul(y, a, w, transW, offsets.Gpu, accumulate); // warm-up (and compile)
                // Accumulating five times drifts c: time only, then one accumulate from the same start for the comparison.
                double ms = c.TimeRepeat(() => c.Gpu.GroupedMatMul(y, a, w, transW, offsets.Gpu, accumulate));
                if (accumulate)
                {
                    c.Gpu.Zero(y);
                    c.Gpu.AddUniformNoise(y, 0.1f, 3);
                    c.Gpu.GroupedMatMul(y, a, w, transW, offsets.Gpu, accumulate);
                }
                var got = c.Download(y);
                string name = KernelName(kernel);
                if (reference is null)
                {
                    reference = got;
                    oldMs = ms;
                    Console.WriteLine($"time {op}: {name} {ms:F3} ms ({tflop / (ms / 1e3):F1} TFLOP/s)");
                    continue;
                }
                double num = 0, den = 0;
                for (int i = 0; i < got.Length; i++) { double d = (double)got[i] - reference[i]; num += d * d; den += (double)reference[i] * reference[i]; }
                double rel = Math.Sqrt(num / Math.Max(den, 1e-30));
                Console.WriteLine($"time {op}: {name} {ms:F3} ms ({tflop / (ms / 1e3):F1} TFLOP/s), {oldMs / ms:F2}× grouped_gemm_tc, rel {rel:E2}");
                c.Rows.Add(new CheckRow($"{op} {name} = grouped_gemm_tc", c.Path, "c", got.Length, rel, c.Tol, double.IsFinite(rel) && rel <= c.Tol, ms));
            }
            c.Gpu.GroupedGemm = prior;
        }
        // The experts' weight gradient (full fine-tuning; not in the LoRA bench row): dW_gate [E, 768, 2048] f32 += dgateᵀ·xs.
        {
            const int n = 768, k = 2048;
            var dc = Noise([rows, n], 4);
            var a = Noise([rows, k], 5);
            double tflop = 2.0 * rows * n * k / 1e12;
            string op = $"grouped_gemm_weight_grad dW rows {rows} E {e} N{n} K{k}";
            var results = new List<(string Name, double Ms, float[] Dw)>();
            foreach (var kernel in new[] { GroupedGemmKernel.Tile64, GroupedGemmKernel.Tile128K64Stages3 })
            {
                c.Gpu.GroupedGemm = kernel;
                var buf = c.Gpu.AllocateBuffer((long)e * n * k * 4);
                c.Buffers.Add(buf);
                var dw = new Tensor(buf, 0, DType.F32, [e, n, k]);
                c.Gpu.Zero(dw);
                c.Gpu.GroupedMatMulWeightGrad(dw, dc, a, offsets.Gpu); // warm-up (and compile); dw grows, time only
                double ms = c.TimeRepeat(() => c.Gpu.GroupedMatMulWeightGrad(dw, dc, a, offsets.Gpu));
                c.Gpu.Zero(dw);
                c.Gpu.GroupedMatMulWeightGrad(dw, dc, a, offsets.Gpu);
                results.Add((kernel == GroupedGemmKernel.Tile64 ? "grouped_gemm_weight_grad_tc" : "grouped_gemm_weight_grad_mma", ms, c.Download(dw)));
            }
            c.Gpu.GroupedGemm = prior;
            var (oldName, oldMs, oldDw) = results[0];
            var (newName, newMs, newDw) = results[1];
            double num = 0, den = 0;
            for (int i = 0; i < oldDw.Length; i++) { double d = (double)newDw[i] - oldDw[i]; num += d * d; den += (double)oldDw[i] * oldDw[i]; }
            double rel = Math.Sqrt(num / Math.Max(den, 1e-30));
            Console.WriteLine($"time {op}: {oldName} {oldMs:F3} ms ({tflop / (oldMs / 1e3):F1} TFLOP/s), {newName} {newMs:F3} ms ({tflop / (newMs / 1e3):F1} TFLOP/s), {oldMs / newMs:F2}×, rel {rel:E2}");
            c.Rows.Add(new CheckRow($"{op} {newName} = {oldName}", c.Path, "dw", newDw.Length, rel, 1e-4, double.IsFinite(rel) && rel <= 1e-4, newMs));
        }
    }

    static void ExpertChecks(Ctx c, int n, int e, int k, bool normalize)
    {
        string tag = $"T{n} E{e} k{k}{(normalize ? " norm" : "")}";
        double ms;
        // Router on F32 logits on both sides (bf16 rounding makes ties the CPU and GPU would each break by index alike,
        // but a near-tie one ulp apart after the softmax could pick differently).
        var logits = c.Pair(c.Rand((long)n * e, 3f), [n, e], DType.F32);
        var probs = c.Zeros([n, e], DType.F32);
        var topW = c.Zeros([n, k], DType.F32);
        var topIdx = c.IntPair(new int[n * k], [n, k]);
        ms = c.Time(() => c.Gpu.MoeRoute(logits.Gpu, probs.Gpu, topIdx.Gpu, topW.Gpu, normalize));
        c.Cpu.MoeRoute(logits.Cpu, probs.Cpu, topIdx.Cpu, topW.Cpu, normalize);
        c.Compare($"moe_route {tag}", "probs", probs, ms);
        c.Compare($"moe_route {tag}", "top_weight", topW, ms);
        var idxCpu = new int[n * k];
        var idxGpu = new int[n * k];
        c.Cpu.Download(topIdx.Cpu, idxCpu);
        c.Gpu.Download(topIdx.Gpu, idxGpu);
        c.Check($"moe_route {tag}", "top_idx", idxCpu.SequenceEqual(idxGpu), ms);
        // From here on both sides read the CPU's choices, so every later check is independent of the router's.
        var idx = c.IntPair(idxCpu, [n, k]);

        var mask = c.Pair(Enumerable.Range(0, n).Select(t => t % 7 == 6 ? 0f : 1f).ToArray(), [n], DType.F32);
        var counts = c.Zeros([e], DType.F32);
        var sums = c.Zeros([e], DType.F32);
        ms = c.Time(() => c.Gpu.MoeRouterStatistics(counts.Gpu, sums.Gpu, probs.Gpu, idx.Gpu, mask.Gpu));
        c.Cpu.MoeRouterStatistics(counts.Cpu, sums.Cpu, probs.Cpu, idx.Cpu, mask.Cpu);
        c.Compare($"moe_router_statistics {tag}", "counts", counts, ms);
        c.Compare($"moe_router_statistics {tag}", "prob_sums", sums, ms);

        var dTopW = c.Pair(c.Rand((long)n * k), [n, k], DType.F32);
        var dlogits = c.Zeros([n, e]);
        ms = c.Time(() => c.Gpu.MoeRouteBackward(dlogits.Gpu, dTopW.Gpu, probs.Gpu, idx.Gpu, topW.Gpu, normalize, counts.Gpu, mask.Gpu, 1e-3f));
        c.Cpu.MoeRouteBackward(dlogits.Cpu, dTopW.Cpu, probs.Cpu, idx.Cpu, topW.Cpu, normalize, counts.Cpu, mask.Cpu, 1e-3f);
        c.Compare($"moe_route_backward {tag}", "dlogits", dlogits, ms);

        // Expert 0 never chosen below: the grouped products must skip an empty group.
        var chosen = idxCpu.Select(x => x == 0 ? 1 : x).ToArray();
        var (offsets, sorted, rowOf) = CheckMoeSort(c, chosen, n, k, e, tag);

        int rows = n * k, hidden = 96, inter = 40;
        var xs = c.Pair(c.Rand((long)rows * hidden), [rows, hidden]);
        var wGate = c.Pair(c.Rand((long)e * inter * hidden, 0.2f), [e, inter, hidden]);
        var wDown = c.Pair(c.Rand((long)e * hidden * inter, 0.2f), [e, hidden, inter]);
        var g = c.Zeros([rows, inter]);
        ms = c.Time(() => c.Gpu.GroupedMatMul(g.Gpu, xs.Gpu, wGate.Gpu, true, offsets.Gpu));
        c.Cpu.GroupedMatMul(g.Cpu, xs.Cpu, wGate.Cpu, true, offsets.Cpu);
        c.Compare($"grouped_matmul x·Wᵀ {tag}", "c", g, ms);
        var back = c.Pair(c.Rand((long)rows * hidden), [rows, hidden]);
        ms = c.Time(() => c.Gpu.GroupedMatMul(back.Gpu, g.Gpu, wGate.Gpu, false, offsets.Gpu, accumulate: true));
        c.Cpu.GroupedMatMul(back.Cpu, g.Cpu, wGate.Cpu, false, offsets.Cpu, accumulate: true);
        c.Compare($"grouped_matmul dy·W accumulate {tag}", "c", back, ms);
        var dw = c.Pair(c.Rand((long)e * hidden * inter, 0.1f), [e, hidden, inter], DType.F32);
        ms = c.Time(() => c.Gpu.GroupedMatMulWeightGrad(dw.Gpu, xs.Gpu, g.Gpu, offsets.Gpu));
        c.Cpu.GroupedMatMulWeightGrad(dw.Cpu, xs.Cpu, g.Cpu, offsets.Cpu);
        c.Compare($"grouped_matmul_weight_grad {tag}", "dw", dw, ms);
        var outRows = c.Zeros([rows, hidden]);
        ms = c.Time(() => c.Gpu.GroupedMatMul(outRows.Gpu, g.Gpu, wDown.Gpu, true, offsets.Gpu));
        c.Cpu.GroupedMatMul(outRows.Cpu, g.Cpu, wDown.Cpu, true, offsets.Cpu);
        c.Compare($"grouped_matmul down {tag}", "c", outRows, ms);

        var y = c.Zeros([n, hidden]);
        ms = c.Time(() => c.Gpu.MoeCombine(y.Gpu, outRows.Gpu, topW.Gpu, rowOf.Gpu));
        c.Cpu.MoeCombine(y.Cpu, outRows.Cpu, topW.Cpu, rowOf.Cpu);
        c.Compare($"moe_combine {tag}", "y", y, ms);
        var dy = c.Pair(c.Rand((long)n * hidden), [n, hidden]);
        var drows = c.Zeros([rows, hidden]);
        var dw2 = c.Zeros([n, k], DType.F32);
        ms = c.Time(() => c.Gpu.MoeCombineBackward(drows.Gpu, dw2.Gpu, dy.Gpu, outRows.Gpu, topW.Gpu, rowOf.Gpu));
        c.Cpu.MoeCombineBackward(drows.Cpu, dw2.Cpu, dy.Cpu, outRows.Cpu, topW.Cpu, rowOf.Cpu);
        c.Compare($"moe_combine_backward {tag}", "drows", drows, ms);
        c.Compare($"moe_combine_backward {tag}", "dtop_weight", dw2, ms);
        var dx = c.Zeros([n, hidden]);
        ms = c.Time(() => c.Gpu.MoeGatherBackward(dx.Gpu, drows.Gpu, rowOf.Gpu));
        c.Cpu.MoeGatherBackward(dx.Cpu, drows.Cpu, rowOf.Cpu);
        c.Compare($"moe_gather_backward {tag}", "dx", dx, ms);

        // The combine's backward through the down product (the recompute-free path): h = dy gathered unscaled · W_down.
        var dyRows = c.Zeros([rows, hidden]);
        c.Gpu.Embedding(dyRows.Gpu, dy.Gpu, sorted.Gpu);
        c.Cpu.Embedding(dyRows.Cpu, dy.Cpu, sorted.Cpu);
        var h = c.Zeros([rows, inter]);
        c.Gpu.GroupedMatMul(h.Gpu, dyRows.Gpu, wDown.Gpu, false, offsets.Gpu);
        c.Cpu.GroupedMatMul(h.Cpu, dyRows.Cpu, wDown.Cpu, false, offsets.Cpu);
        var dact = c.Zeros([rows, inter]);
        var dw3 = c.Zeros([n, k], DType.F32);
        ms = c.Time(() => c.Gpu.MoeCombineDownBackward(dact.Gpu, dw3.Gpu, h.Gpu, g.Gpu, topW.Gpu, rowOf.Gpu));
        c.Cpu.MoeCombineDownBackward(dact.Cpu, dw3.Cpu, h.Cpu, g.Cpu, topW.Cpu, rowOf.Cpu);
        c.Compare($"moe_combine_down_backward {tag}", "dact", dact, ms);
        c.Compare($"moe_combine_down_backward {tag}", "dtop_weight", dw3, ms);
        // The same dtop_weight as through the expert outputs (GPU against the CPU's old formula).
        var viaOut = c.Zeros([n, k], DType.F32);
        c.Cpu.MoeCombineBackward(drows.Cpu, viaOut.Cpu, dy.Cpu, outRows.Cpu, topW.Cpu, rowOf.Cpu);
        c.Gpu.Copy(viaOut.Gpu, dw3.Gpu);
        c.Compare($"moe_combine_down_backward {tag}", "dtop_weight = dy·out", viaOut, ms);
        if (c.Act == DType.BF16) RowKernelBits(c, tag, n, k, hidden, inter, sorted.Gpu, rowOf.Gpu, topW.Gpu);
    }

    /// <summary>
    /// bf16: the *_v8 row kernels (16-byte aligned operands) against the scalar ones (the same values one element off
    /// alignment): the gather, combine, combine backward's rows and the gather backward bit for bit; the dot products
    /// (dtop_weight) within 1e-5 relative (lane partials and a warp tree against a block-wide sum).
    /// </summary>
    static void RowKernelBits(Ctx c, string tag, int n, int k, int hidden, int inter, Tensor sorted, Tensor rowOf, Tensor topW)
    {
        int rows = n * k;
        // Returns an aligned tensor and a misaligned (offset one element) one holding the same bf16 values.
        (Tensor Aligned, Tensor Odd) Twin(int r, int cols, float[]? values = null)
        {
            long len = (long)r * cols;
            var buf = c.Gpu.AllocateBuffer((len + 8) * 2);
            var odd = c.Gpu.AllocateBuffer((len + 8) * 2);
            c.Buffers.Add(buf); c.Buffers.Add(odd);
            var a = new Tensor(buf, 0, DType.BF16, [r, cols]);
            var o = new Tensor(odd, 1, DType.BF16, [r, cols]);
            c.Gpu.Upload(a, values ?? c.Rand(len));
            c.Gpu.Copy(o, a);
            return (a, o);
        }
        void Same(string op, string output, Tensor a, Tensor b, double gpuMs)
        {
            var x = c.Download(a);
            var y = c.Download(b);
            c.Check($"{op} v8 = scalar {tag}", output, x.AsSpan().SequenceEqual(y), gpuMs);
        }
        var table = Twin(n, hidden);
        var xs = Twin(rows, hidden);
        double ms = c.Time(() => c.Gpu.Embedding(xs.Aligned, table.Aligned, sorted));
        c.Gpu.Embedding(xs.Odd, table.Odd, sorted);
        Same("embedding (row gather)", "out", xs.Aligned, xs.Odd, ms);
        var y = Twin(n, hidden);
        ms = c.Time(() => c.Gpu.MoeCombine(y.Aligned, xs.Aligned, topW, rowOf));
        c.Gpu.MoeCombine(y.Odd, xs.Odd, topW, rowOf);
        Same("moe_combine", "y", y.Aligned, y.Odd, ms);
        var drows = Twin(rows, hidden);
        var dwV8 = c.Zeros([n, k], DType.F32);
        var dwScalar = c.Zeros([n, k], DType.F32);
        ms = c.Time(() => c.Gpu.MoeCombineBackward(drows.Aligned, dwV8.Gpu, table.Aligned, xs.Aligned, topW, rowOf));
        c.Gpu.MoeCombineBackward(drows.Odd, dwScalar.Gpu, table.Odd, xs.Odd, topW, rowOf);
        Same("moe_combine_backward", "drows", drows.Aligned, drows.Odd, ms);
        CompareGpu(c, $"moe_combine_backward v8 ≈ scalar {tag}", "dtop_weight", dwV8.Gpu, dwScalar.Gpu, ms, 1e-5);
        var dx = Twin(n, hidden);
        ms = c.Time(() => c.Gpu.MoeGatherBackward(dx.Aligned, drows.Aligned, rowOf));
        c.Gpu.MoeGatherBackward(dx.Odd, drows.Odd, rowOf);
        Same("moe_gather_backward", "dx", dx.Aligned, dx.Odd, ms);
        var h = Twin(rows, inter);
        var act = Twin(rows, inter);
        var dact = Twin(rows, inter);
        ms = c.Time(() => c.Gpu.MoeCombineDownBackward(dact.Aligned, dwV8.Gpu, h.Aligned, act.Aligned, topW, rowOf));
        c.Gpu.MoeCombineDownBackward(dact.Odd, dwScalar.Gpu, h.Odd, act.Odd, topW, rowOf);
        Same("moe_combine_down_backward", "dact", dact.Aligned, dact.Odd, ms);
        CompareGpu(c, $"moe_combine_down_backward v8 ≈ scalar {tag}", "dtop_weight", dwV8.Gpu, dwScalar.Gpu, ms, 1e-5);
    }

    /// <summary>Relative L2 error of one GPU tensor against another (two kernels for the same result).</summary>
    static void CompareGpu(Ctx c, string op, string output, Tensor got, Tensor reference, double gpuMs, double tol)
    {
        var a = c.Download(reference);
        var b = c.Download(got);
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { double d = (double)b[i] - a[i]; num += d * d; den += (double)a[i] * a[i]; }
        double rel = Math.Sqrt(num / Math.Max(den, 1e-30));
        bool pass = double.IsFinite(rel) && rel <= tol;
        c.Rows.Add(new CheckRow(op, c.Path, output, a.Length, rel, tol, pass, gpuMs));
        Console.WriteLine($"{(pass ? "ok  " : "FAIL")} {c.Path,-5} {op,-44} {output,-12} n={a.Length,-9} rel={rel:E2} (tol {tol:E0}) gpu {gpuMs:F3} ms");
    }
}
