using FineTune.Engine;

namespace FineTune.DeviceChecks;

// Mixture of experts: router, its backward with the load-balancing term, statistics, the expert sort, the grouped
// products (both orientations, accumulate, the weight gradient; an expert without rows), combine and the backwards.
public static partial class OpChecks
{
    static void Experts(Ctx c)
    {
        foreach (var (n, e, k, normalize) in new[] { (300, 16, 2, true), (257, 128, 8, false) })
            ExpertChecks(c, n, e, k, normalize);
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
        var ids = c.IntPair(chosen, [n, k]);
        var offsets = c.IntPair(new int[e + 1], [e + 1]);
        var sorted = c.IntPair(new int[n * k], [n * k]);
        var rowOf = c.IntPair(new int[n * k], [n * k]);
        ms = c.Time(() => c.Gpu.MoeSort(ids.Gpu, offsets.Gpu, sorted.Gpu, rowOf.Gpu));
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
    }
}
