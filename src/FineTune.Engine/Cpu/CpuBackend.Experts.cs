namespace FineTune.Engine.Cpu;

// Mixture of experts on the CPU: the reference the CUDA kernels (experts.cu) are checked against. The grouped
// products loop over experts here (each a blocked MatMul on the expert's rows); the CUDA backend has no such loop.
public sealed unsafe partial class CpuBackend
{
    public void MoeRoute(Tensor logits, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize)
    {
        int n = logits.Rows, e = logits.Cols, k = topIdx.Cols;
        CheckRouter(n, e, k, probs, topIdx, topWeight);
        float* pl = F(logits), pp = F(probs), pw = F(topWeight);
        int* pi = I(topIdx);
        For(n, t =>
        {
            float* l = pl + (long)t * e, p = pp + (long)t * e;
            float max = float.NegativeInfinity;
            for (int j = 0; j < e; j++) max = MathF.Max(max, l[j]);
            float sum = 0;
            for (int j = 0; j < e; j++) { p[j] = MathF.Exp(l[j] - max); sum += p[j]; }
            for (int j = 0; j < e; j++) p[j] /= sum;
            // k passes of "largest not yet taken", the lower index winning ties (strictly greater replaces).
            int* idx = pi + (long)t * k;
            float* w = pw + (long)t * k;
            float chosen = 0;
            for (int s = 0; s < k; s++)
            {
                int best = -1;
                for (int j = 0; j < e; j++)
                {
                    bool taken = false;
                    for (int q = 0; q < s; q++) taken |= idx[q] == j;
                    if (!taken && (best < 0 || p[j] > p[best])) best = j;
                }
                idx[s] = best;
                w[s] = p[best];
                chosen += p[best];
            }
            if (normalize) for (int s = 0; s < k; s++) w[s] /= chosen;
        });
    }

    public void MoeRouteBackward(Tensor dlogits, Tensor dTopWeight, Tensor probs, Tensor topIdx, Tensor topWeight, bool normalize,
        Tensor? auxGrad, Tensor? tokenMask, float auxScale)
    {
        int n = probs.Rows, e = probs.Cols, k = topIdx.Cols;
        CheckRouter(n, e, k, probs, topIdx, topWeight);
        float* pd = F(dlogits), pp = F(probs), pw = F(topWeight), pdw = F(dTopWeight);
        float* pa = auxGrad is null ? null : F(auxGrad), pm = tokenMask is null ? null : F(tokenMask);
        int* pi = I(topIdx);
        For(n, t =>
        {
            float* p = pp + (long)t * e, d = pd + (long)t * e, w = pw + (long)t * k, dw = pdw + (long)t * k;
            int* idx = pi + (long)t * k;
            // dp over the experts (in dlogits' row as scratch).
            float aux = pa is null ? 0 : auxScale * (pm is null ? 1 : pm[t]);
            for (int j = 0; j < e; j++) d[j] = pa is null ? 0 : aux * pa[j];
            float chosen = 0, dot = 0;
            for (int s = 0; s < k; s++) { chosen += p[idx[s]]; dot += dw[s] * w[s]; }
            // w_s = p_s / S ⇒ ∂/∂p_i = (dw_i − Σ_s dw_s·w_s) / S for chosen i.
            for (int s = 0; s < k; s++) d[idx[s]] += normalize ? (dw[s] - dot) / chosen : dw[s];
            float pdp = 0;
            for (int j = 0; j < e; j++) pdp += p[j] * d[j];
            for (int j = 0; j < e; j++) d[j] = p[j] * (d[j] - pdp);
        });
    }

    public void MoeRouterStatistics(Tensor counts, Tensor probSums, Tensor probs, Tensor topIdx, Tensor tokenMask)
    {
        int n = probs.Rows, e = probs.Cols, k = topIdx.Cols;
        if (counts.Length != e || probSums.Length != e || tokenMask.Length != n || topIdx.Rows != n)
            throw new ArgumentException($"router statistics: counts {counts}, probSums {probSums}, mask {tokenMask} do not match probs {probs} / {topIdx}");
        float* pc = F(counts), ps = F(probSums), pp = F(probs), pm = F(tokenMask);
        int* pi = I(topIdx);
        // Tokens in order, so the sums do not depend on the thread count.
        for (int t = 0; t < n; t++)
        {
            float m = pm[t];
            for (int s = 0; s < k; s++) pc[pi[(long)t * k + s]] += m;
            for (int j = 0; j < e; j++) ps[j] += m * pp[(long)t * e + j];
        }
    }

    public void MoeSort(Tensor topIdx, Tensor offsets, Tensor sortedToken, Tensor rowOf)
    {
        int choices = (int)topIdx.Length, k = topIdx.Cols, e = (int)offsets.Length - 1;
        if (sortedToken.Length != choices || rowOf.Length != choices || e < 1)
            throw new ArgumentException($"expert sort: {topIdx}, {offsets}, {sortedToken}, {rowOf} do not agree");
        int* pi = I(topIdx), po = I(offsets), ps = I(sortedToken), pr = I(rowOf);
        new Span<int>(po, e + 1).Clear();
        for (int c = 0; c < choices; c++)
        {
            int x = pi[c];
            if ((uint)x >= (uint)e) throw new ArgumentOutOfRangeException(nameof(topIdx), $"expert index {x} at choice {c} is outside 0 … {e - 1}");
            po[x + 1]++;
        }
        for (int x = 0; x < e; x++) po[x + 1] += po[x];
        var next = new int[e];
        for (int x = 0; x < e; x++) next[x] = po[x];
        for (int c = 0; c < choices; c++)
        {
            int row = next[pi[c]]++;
            ps[row] = c / k;
            pr[c] = row;
        }
    }

    public void GroupedMatMul(Tensor c, Tensor a, Tensor w, bool transW, Tensor offsets, bool accumulate = false)
    {
        int e = w.Dim(0), wr = w.Dim(1), wc = w.Dim(2);
        int outCols = transW ? wr : wc, inCols = transW ? wc : wr;
        if (w.Rank != 3 || a.Cols != inCols || c.Cols != outCols || a.Rows != c.Rows || offsets.Length != e + 1)
            throw new ArgumentException($"grouped product {c} = {a}·{(transW ? "ᵀ" : "")}{w} by {offsets}: shapes do not agree");
        int* po = I(offsets);
        for (int x = 0; x < e; x++)
        {
            int r0 = po[x], rows = po[x + 1] - r0;
            if (rows == 0) continue;
            MatMul(c.View((long)r0 * outCols, [rows, outCols]), a.View((long)r0 * inCols, [rows, inCols]), false,
                w.View((long)x * wr * wc, [wr, wc]), transW, 1f, accumulate);
        }
    }

    public void GroupedMatMulWeightGrad(Tensor dw, Tensor dc, Tensor a, Tensor offsets)
    {
        int e = dw.Dim(0), n = dw.Dim(1), k = dw.Dim(2);
        if (dw.Rank != 3 || dc.Cols != n || a.Cols != k || a.Rows != dc.Rows || offsets.Length != e + 1)
            throw new ArgumentException($"grouped weight gradient {dw} += {dc}ᵀ·{a} by {offsets}: shapes do not agree");
        int* po = I(offsets);
        for (int x = 0; x < e; x++)
        {
            int r0 = po[x], rows = po[x + 1] - r0;
            if (rows == 0) continue;
            MatMul(dw.View((long)x * n * k, [n, k]), dc.View((long)r0 * n, [rows, n]), true, a.View((long)r0 * k, [rows, k]), false, 1f, accumulate: true);
        }
    }

    public void MoeCombine(Tensor y, Tensor rows, Tensor topWeight, Tensor rowOf)
    {
        int n = y.Rows, cols = y.Cols, k = topWeight.Cols;
        if (rows.Cols != cols || topWeight.Rows != n || rowOf.Length != (long)n * k)
            throw new ArgumentException($"combine {y} from {rows} by {topWeight} / {rowOf}: shapes do not agree");
        float* py = F(y), pr = F(rows), pw = F(topWeight);
        int* po = I(rowOf);
        For(n, t =>
        {
            var dst = new Span<float>(py + (long)t * cols, cols);
            dst.Clear();
            // Slots in order j = 0 … k−1, as transformers adds each expert's weighted output.
            for (int j = 0; j < k; j++)
            {
                float wt = pw[(long)t * k + j];
                float* src = pr + (long)po[(long)t * k + j] * cols;
                for (int i = 0; i < cols; i++) dst[i] += wt * src[i];
            }
        });
    }

    public void MoeCombineBackward(Tensor drows, Tensor dTopWeight, Tensor dy, Tensor rows, Tensor topWeight, Tensor rowOf)
    {
        int n = dy.Rows, cols = dy.Cols, k = topWeight.Cols;
        if (rows.Cols != cols || drows.Cols != cols || topWeight.Rows != n || dTopWeight.Length != topWeight.Length || rowOf.Length != (long)n * k)
            throw new ArgumentException($"combine backward {drows}, {dTopWeight} from {dy}: shapes do not agree");
        float* pdr = F(drows), pdw = F(dTopWeight), pdy = F(dy), pr = F(rows), pw = F(topWeight);
        int* po = I(rowOf);
        For(n, t =>
        {
            float* g = pdy + (long)t * cols;
            for (int j = 0; j < k; j++)
            {
                long c = (long)t * k + j;
                float* src = pr + (long)po[c] * cols;
                float* dst = pdr + (long)po[c] * cols;
                float wt = pw[c], dot = 0;
                for (int i = 0; i < cols; i++) { dst[i] = wt * g[i]; dot += g[i] * src[i]; }
                pdw[c] = dot;
            }
        });
    }

    public void MoeCombineDownBackward(Tensor dact, Tensor dTopWeight, Tensor h, Tensor act, Tensor topWeight, Tensor rowOf)
    {
        int choices = checked((int)rowOf.Length), inter = h.Cols;
        if (act.Cols != inter || dact.Cols != inter || h.Rows != choices || act.Rows != choices || dact.Rows != choices
            || topWeight.Length != choices || dTopWeight.Length != choices)
            throw new ArgumentException($"combine backward through down {dact}, {dTopWeight} from {h}, {act} by {rowOf}: shapes do not agree");
        float* pda = F(dact), pdw = F(dTopWeight), ph = F(h), pa = F(act), pw = F(topWeight);
        int* po = I(rowOf);
        For(choices, c =>
        {
            long r = po[c];
            float* hr = ph + r * inter, ar = pa + r * inter, dr = pda + r * inter;
            float wt = pw[c], dot = 0;
            for (int i = 0; i < inter; i++) { dot += hr[i] * ar[i]; dr[i] = wt * hr[i]; }
            pdw[c] = dot;
        });
    }

    public void MoeGatherBackward(Tensor dx, Tensor drows, Tensor rowOf)
    {
        int n = dx.Rows, cols = dx.Cols, k = (int)(rowOf.Length / Math.Max(1, n));
        if (drows.Cols != cols || rowOf.Length != (long)n * k)
            throw new ArgumentException($"gather backward {dx} from {drows} by {rowOf}: shapes do not agree");
        float* px = F(dx), pd = F(drows);
        int* po = I(rowOf);
        For(n, t =>
        {
            var dst = new Span<float>(px + (long)t * cols, cols);
            dst.Clear();
            for (int j = 0; j < k; j++)
            {
                float* src = pd + (long)po[(long)t * k + j] * cols;
                for (int i = 0; i < cols; i++) dst[i] += src[i];
            }
        });
    }

    private static void CheckRouter(int n, int e, int k, Tensor probs, Tensor topIdx, Tensor topWeight)
    {
        if (probs.Rows != n || probs.Cols != e || topIdx.Rows != n || topWeight.Rows != n || topWeight.Cols != k || k > e || k < 1)
            throw new ArgumentException($"router: probs {probs}, topIdx {topIdx}, topWeight {topWeight} do not match {n} tokens × {e} experts");
    }
}
