using System.Buffers;
using System.Numerics.Tensors;

namespace FineTune.Engine.Cpu;

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

    /// <summary>First key position of the segment that holds key position p (segments are contiguous).</summary>
    private static int SegmentStart(int* seg, int p)
    {
        int id = seg[p];
        int j = p;
        while (j > 0 && seg[j - 1] == id) j--;
        return j;
    }

    // Row by row: s_j = scale·q·k_j over allowed j, lse = log Σ exp(s_j), o = Σ softmax(s)_j v_j.
    public void Attention(Tensor output, Tensor lse, Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        CheckAttention(q, k, v, segmentIds, s);
        float* po = F(output), pl = F(lse), pq = F(q), pk = F(k), pv = F(v);
        int* pseg = I(segmentIds);
        int d = s.HeadDim, hq = s.QueryHeads, hkv = s.KvHeads, group = hq / hkv;
        float scale = s.Scale;
        For(s.Batch * hq, bh =>
        {
            int b = bh / hq, h = bh % hq, kh = h / group;
            float[] scoresArr = ArrayPool<float>.Shared.Rent(s.KeyLen);
            try
            {
                int* seg = pseg + (long)b * s.KvCapacity;
                for (int i = 0; i < s.QueryLen; i++)
                {
                    int p = s.KeyLen - s.QueryLen + i;
                    int start = SegmentStart(seg, p);
                    var qi = new ReadOnlySpan<float>(pq + (((long)b * s.QueryLen + i) * hq + h) * d, d);
                    var oi = new Span<float>(po + (((long)b * s.QueryLen + i) * hq + h) * d, d);
                    int count = p - start + 1;
                    var scores = new Span<float>(scoresArr, 0, count);
                    for (int j = start; j <= p; j++)
                        scores[j - start] = scale * TensorPrimitives.Dot(qi, new ReadOnlySpan<float>(pk + (((long)b * s.KvCapacity + j) * hkv + kh) * d, d));
                    float max = TensorPrimitives.Max(scores);
                    TensorPrimitives.Subtract(scores, max, scores);
                    TensorPrimitives.Exp(scores, scores);
                    float sum = TensorPrimitives.Sum(scores);
                    pl[((long)b * hq + h) * s.QueryLen + i] = max + MathF.Log(sum);
                    oi.Clear();
                    float inv = 1f / sum;
                    for (int j = start; j <= p; j++)
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(pv + (((long)b * s.KvCapacity + j) * hkv + kh) * d, d), scores[j - start] * inv, oi, oi);
                }
            }
            finally { ArrayPool<float>.Shared.Return(scoresArr); }
        });
    }

    // With P = exp(s − lse), dP_j = dO·v_j, D = dO·O, dS = P⊙(dP − D):
    // dq_i = scale·Σ_j dS_ij k_j, dk_j = scale·Σ_i dS_ij q_i, dv_j = Σ_i P_ij dO_i.
    // One task owns a (batch, KV head) pair and every query head of its group, so no two tasks write the same dk/dv.
    public void AttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor doutput, Tensor output, Tensor lse,
        Tensor q, Tensor k, Tensor v, Tensor segmentIds, AttentionShape s)
    {
        CheckAttention(q, k, v, segmentIds, s);
        if (s.QueryLen != s.KeyLen || s.KeyLen != s.KvCapacity) throw new ArgumentException($"attention backward needs QueryLen == KeyLen == KvCapacity: {s}");
        float* pdq = F(dq), pdk = F(dk), pdv = F(dv), pdo = F(doutput), po = F(output), pl = F(lse), pq = F(q), pk = F(k), pv = F(v);
        int* pseg = I(segmentIds);
        int d = s.HeadDim, hq = s.QueryHeads, hkv = s.KvHeads, group = hq / hkv, t = s.QueryLen;
        float scale = s.Scale;
        For(s.Batch * hkv, bkh =>
        {
            int b = bkh / hkv, kh = bkh % hkv;
            int* seg = pseg + (long)b * t;
            for (int j = 0; j < t; j++)
            {
                new Span<float>(pdk + (((long)b * t + j) * hkv + kh) * d, d).Clear();
                new Span<float>(pdv + (((long)b * t + j) * hkv + kh) * d, d).Clear();
            }
            for (int h = kh * group; h < (kh + 1) * group; h++)
                {
                    for (int i = 0; i < t; i++)
                    {
                        long qOff = (((long)b * t + i) * hq + h) * d;
                        var qi = new ReadOnlySpan<float>(pq + qOff, d);
                        var doi = new ReadOnlySpan<float>(pdo + qOff, d);
                        var dqi = new Span<float>(pdq + qOff, d);
                        dqi.Clear();
                        float dsum = TensorPrimitives.Dot(doi, new ReadOnlySpan<float>(po + qOff, d));
                        float l = pl[((long)b * hq + h) * t + i];
                        int start = SegmentStart(seg, i);
                        for (int j = start; j <= i; j++)
                        {
                            long kOff = (((long)b * t + j) * hkv + kh) * d;
                            var kj = new ReadOnlySpan<float>(pk + kOff, d);
                            float p = MathF.Exp(scale * TensorPrimitives.Dot(qi, kj) - l);
                            float dp = TensorPrimitives.Dot(doi, new ReadOnlySpan<float>(pv + kOff, d));
                            float ds = p * (dp - dsum) * scale;
                            var dvj = new Span<float>(pdv + kOff, d);
                            TensorPrimitives.MultiplyAdd(doi, p, dvj, dvj);
                            TensorPrimitives.MultiplyAdd(kj, ds, dqi, dqi);
                            var dkj = new Span<float>(pdk + kOff, d);
                            TensorPrimitives.MultiplyAdd(qi, ds, dkj, dkj);
                        }
                    }
                }
        });
    }
}
