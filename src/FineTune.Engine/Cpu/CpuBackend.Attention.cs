using System.Buffers;
using System.Numerics.Tensors;

namespace FineTune.Engine.Cpu;

// Attention works on one (batch, head) at a time with K and V transposed into [HeadDim, keys] scratch, so every
// inner loop runs along keys — long contiguous vectors even when head_dim is small: scores s = Σ_d q_d·Kᵀ[d, :],
// outputs o_d = p·Vᵀ[d, :]. Tasks never share outputs, and each sums in a fixed order.
public sealed unsafe partial class CpuBackend
{
    private static void CheckAttention(Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        if (s.QueryHeads % s.KvHeads != 0) throw new ArgumentException($"{s.QueryHeads} query heads are not a multiple of {s.KvHeads} KV heads");
        if (q.Length != (long)s.Batch * s.QueryLen * s.QueryHeads * s.HeadDim) throw new ArgumentException($"q {q} does not match {s}");
        if (k.Length < (long)s.Batch * s.KvCapacity * s.KvHeads * s.HeadDim || v.Length != k.Length) throw new ArgumentException($"k/v {k} {v} do not match {s}");
        if (segmentIds.Length < (long)s.Batch * s.KvCapacity) throw new ArgumentException($"segment ids {segmentIds} do not match {s}");
        if (s.KeyLen > s.KvCapacity || s.QueryLen > s.KeyLen) throw new ArgumentException($"invalid attention shape {s}");
    }

    /// <summary>starts[p] = first key position of the segment holding key p (segments are contiguous runs).</summary>
    private static void SegmentStarts(int* seg, int length, Span<int> starts)
    {
        for (int p = 0; p < length; p++) starts[p] = p > 0 && seg[p] == seg[p - 1] ? starts[p - 1] : p;
    }

    /// <summary>The first key a query at position p sees: its segment's start, and within the sliding window (p − j &lt; window).</summary>
    private static int VisibleStart(int segmentStart, int p, int window) => window > 0 ? Math.Max(segmentStart, p - window + 1) : segmentStart;

    /// <summary>scores ← cap·tanh(scores/cap) in place; <paramref name="derivative"/> (when given) ← 1 − tanh².</summary>
    private static void SoftCapScores(Span<float> scores, float cap, Span<float> derivative)
    {
        TensorPrimitives.Multiply(scores, 1f / cap, scores);
        TensorPrimitives.Tanh(scores, scores);
        if (!derivative.IsEmpty)
        {
            TensorPrimitives.Multiply(scores, scores, derivative);
            TensorPrimitives.Subtract(1f, derivative, derivative);
        }
        TensorPrimitives.Multiply(scores, cap, scores);
    }

    /// <summary>Copies keys [0, len) of one KV head from [.., KvCapacity, KvHeads, D] into [D, len].</summary>
    private static void Transpose(float* src, int stride, int len, int d, Span<float> dst)
    {
        for (int j = 0; j < len; j++)
        {
            float* row = src + (long)j * stride;
            for (int c = 0; c < d; c++) dst[c * len + j] = row[c];
        }
    }

    public void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        CheckAttention(q, k, v, segmentIds, s);
        float* po = F(output), pl = F(lse), pq = F(q), pk = F(k), pv = F(v);
        int* pseg = I(segmentIds);
        int d = s.HeadDim, hq = s.QueryHeads, hkv = s.KvHeads, group = hq / hkv, len = s.KeyLen;
        float scale = s.Scale, cap = s.Variant.SoftCap;
        int window = s.Variant.Window;
        For(s.Batch * hq, bh =>
        {
            int b = bh / hq, h = bh % hq, kh = h / group;
            float[] buf = ArrayPool<float>.Shared.Rent(2 * d * len + len);
            int[] startBuf = ArrayPool<int>.Shared.Rent(len);
            try
            {
                var kt = buf.AsSpan(0, d * len);
                var vt = buf.AsSpan(d * len, d * len);
                var starts = startBuf.AsSpan(0, len);
                long kvBase = ((long)b * s.KvCapacity * hkv + kh) * d;
                Transpose(pk + kvBase, hkv * d, len, d, kt);
                Transpose(pv + kvBase, hkv * d, len, d, vt);
                SegmentStarts(pseg + (long)b * s.KvCapacity, len, starts);
                for (int i = 0; i < s.QueryLen; i++)
                {
                    int p = len - s.QueryLen + i, start = VisibleStart(starts[p], p, window), count = p - start + 1;
                    float* qi = pq + (((long)b * s.QueryLen + i) * hq + h) * d;
                    float* oi = po + (((long)b * s.QueryLen + i) * hq + h) * d;
                    var scores = buf.AsSpan(2 * d * len, count);
                    scores.Clear();
                    for (int c = 0; c < d; c++) TensorPrimitives.MultiplyAdd(kt.Slice(c * len + start, count), qi[c] * scale, scores, scores);
                    if (cap > 0f) SoftCapScores(scores, cap, default);
                    float max = TensorPrimitives.Max(scores);
                    TensorPrimitives.Subtract(scores, max, scores);
                    TensorPrimitives.Exp(scores, scores);
                    float sum = TensorPrimitives.Sum(scores);
                    pl[((long)b * hq + h) * s.QueryLen + i] = max + MathF.Log(sum);
                    float inv = 1f / sum;
                    for (int c = 0; c < d; c++) oi[c] = TensorPrimitives.Dot(scores, vt.Slice(c * len + start, count)) * inv;
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(buf);
                ArrayPool<int>.Shared.Return(startBuf);
            }
        });
    }

    // With P = exp(s − lse), dP_j = dO·v_j, D = dO·O, dS = P⊙(dP − D)·scale:
    // dq_i = Σ_j dS_ij k_j, dk_j = Σ_i dS_ij q_i, dv_j = Σ_i P_ij dO_i.
    // One task owns a (batch, KV head) pair and every query head of its group, so no two tasks write the same dk/dv.
    // It borrows no workspace, so it leaves the scratch alone.
    public void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s, Tensor? scratch = null)
    {
        CheckAttention(q, k, v, segmentIds, s);
        if (s.QueryLen != s.KeyLen || s.KeyLen != s.KvCapacity) throw new ArgumentException($"attention backward needs QueryLen == KeyLen == KvCapacity: {s}");
        float* pdq = F(dq), pdk = F(dk), pdv = F(dv), pdo = F(doutput), po = F(output), pl = F(lse), pq = F(q), pk = F(k), pv = F(v);
        int* pseg = I(segmentIds);
        int d = s.HeadDim, hq = s.QueryHeads, hkv = s.KvHeads, group = hq / hkv, t = s.QueryLen;
        float scale = s.Scale, cap = s.Variant.SoftCap;
        int window = s.Variant.Window;
        For(s.Batch * hkv, bkh =>
        {
            int b = bkh / hkv, kh = bkh % hkv;
            float[] buf = ArrayPool<float>.Shared.Rent(4 * d * t + 3 * t);
            int[] startBuf = ArrayPool<int>.Shared.Rent(t);
            try
            {
                var kt = buf.AsSpan(0, d * t);
                var vt = buf.AsSpan(d * t, d * t);
                var dkt = buf.AsSpan(2 * d * t, d * t);
                var dvt = buf.AsSpan(3 * d * t, d * t);
                dkt.Clear();
                dvt.Clear();
                var starts = startBuf.AsSpan(0, t);
                long kvBase = ((long)b * t * hkv + kh) * d;
                Transpose(pk + kvBase, hkv * d, t, d, kt);
                Transpose(pv + kvBase, hkv * d, t, d, vt);
                SegmentStarts(pseg + (long)b * t, t, starts);
                for (int h = kh * group; h < (kh + 1) * group; h++)
                {
                    for (int i = 0; i < t; i++)
                    {
                        int start = VisibleStart(starts[i], i, window), count = i - start + 1;
                        long qOff = (((long)b * t + i) * hq + h) * d;
                        float* qi = pq + qOff, doi = pdo + qOff, dqi = pdq + qOff;
                        float dsum = TensorPrimitives.Dot(new ReadOnlySpan<float>(doi, d), new ReadOnlySpan<float>(po + qOff, d));
                        float l = pl[((long)b * hq + h) * t + i];
                        var pRow = buf.AsSpan(4 * d * t, count);
                        var dpRow = buf.AsSpan(4 * d * t + t, count);
                        pRow.Clear();
                        dpRow.Clear();
                        for (int c = 0; c < d; c++)
                        {
                            TensorPrimitives.MultiplyAdd(kt.Slice(c * t + start, count), qi[c] * scale, pRow, pRow);
                            TensorPrimitives.MultiplyAdd(vt.Slice(c * t + start, count), doi[c], dpRow, dpRow);
                        }
                        // Soft-capped scores c = cap·tanh(s/cap): ∂c/∂s = 1 − tanh², kept in capGrad.
                        var capGrad = buf.AsSpan(4 * d * t + 2 * t, count);
                        if (cap > 0f) SoftCapScores(pRow, cap, capGrad);
                        TensorPrimitives.Subtract(pRow, l, pRow);
                        TensorPrimitives.Exp(pRow, pRow);
                        // dpRow ← dS = P ⊙ (dP − D) (⊙ ∂c/∂s) · scale
                        TensorPrimitives.Subtract(dpRow, dsum, dpRow);
                        TensorPrimitives.Multiply(dpRow, pRow, dpRow);
                        if (cap > 0f) TensorPrimitives.Multiply(dpRow, capGrad, dpRow);
                        TensorPrimitives.Multiply(dpRow, scale, dpRow);
                        for (int c = 0; c < d; c++)
                        {
                            var dvRow = dvt.Slice(c * t + start, count);
                            TensorPrimitives.MultiplyAdd(pRow, doi[c], dvRow, dvRow);
                            var dkRow = dkt.Slice(c * t + start, count);
                            TensorPrimitives.MultiplyAdd(dpRow, qi[c], dkRow, dkRow);
                            dqi[c] = TensorPrimitives.Dot(dpRow, kt.Slice(c * t + start, count));
                        }
                    }
                }
                for (int j = 0; j < t; j++)
                {
                    float* dkj = pdk + kvBase + (long)j * hkv * d, dvj = pdv + kvBase + (long)j * hkv * d;
                    for (int c = 0; c < d; c++)
                    {
                        dkj[c] = dkt[c * t + j];
                        dvj[c] = dvt[c * t + j];
                    }
                }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(buf);
                ArrayPool<int>.Shared.Return(startBuf);
            }
        });
    }
}
