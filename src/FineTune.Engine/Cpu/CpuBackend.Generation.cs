using System.Buffers;
using System.Numerics.Tensors;

namespace FineTune.Engine.Cpu;

// The decode-path operations: rows into the paged KV cache, attention that reads each token's keys through its block
// table, and the picks. Attention does per (run, head) what the packed-sequence Attention does per (batch, head): K and V of
// the slot transposed into [HeadDim, keys] scratch once, then every query of the run along contiguous key vectors,
// in the same order of operations, so a sequence decoded through the cache scores its keys as the training
// forward's attention does.
public sealed unsafe partial class CpuBackend
{
    public void ScatterRows(Tensor dst, Tensor src, Tensor rows)
    {
        int cols = src.Cols, n = (int)rows.Length;
        if (dst.Cols != cols || src.Rows != n) throw new ArgumentException($"scatter of {src} by {rows} into {dst}: shapes do not agree");
        float* pd = F(dst), ps = F(src);
        int* pr = I(rows);
        for (int i = 0; i < n; i++)
        {
            int r = pr[i];
            if ((uint)r >= (uint)dst.Rows) throw new ArgumentOutOfRangeException(nameof(rows), $"row {r} at {i} is outside {dst}");
            new ReadOnlySpan<float>(ps + (long)i * cols, cols).CopyTo(new Span<float>(pd + (long)r * cols, cols));
        }
    }

    public void CachedAttention(Tensor output, Tensor q, Tensor kCache, Tensor vCache, Tensor sequences, Tensor positions, Tensor blockTables, CachedAttentionShape s)
    {
        if (s.QueryHeads % s.KvHeads != 0) throw new ArgumentException($"{s.QueryHeads} query heads are not a multiple of {s.KvHeads} KV heads");
        if (q.Length != (long)s.Tokens * s.QueryHeads * s.HeadDim || output.Length != q.Length) throw new ArgumentException($"q {q} / output {output} do not match {s}");
        if (kCache.Length != (long)s.Blocks * s.BlockSize * s.KvHeads * s.HeadDim || vCache.Length != kCache.Length) throw new ArgumentException($"caches {kCache} {vCache} do not match {s}");
        if (sequences.Length < s.Tokens || positions.Length < s.Tokens) throw new ArgumentException($"sequences {sequences} / positions {positions} do not match {s}");
        if (blockTables.Length % s.TableWidth != 0) throw new ArgumentException($"block tables {blockTables} are not rows of {s.TableWidth}");
        float* po = F(output), pq = F(q), pk = F(kCache), pv = F(vCache);
        int* ps = I(sequences), pp = I(positions), pt = I(blockTables);
        int tableRows = (int)(blockTables.Length / s.TableWidth);
        // Runs: consecutive tokens of one sequence at consecutive positions (a prompt chunk, or one decode token).
        var runStart = new List<int>();
        for (int t = 0; t < s.Tokens; t++)
        {
            if ((uint)ps[t] >= (uint)tableRows || (uint)pp[t] >= (uint)s.MaxPositions)
                throw new ArgumentOutOfRangeException(nameof(sequences), $"token {t}: table row {ps[t]} position {pp[t]} is outside {s}");
            for (int j = 0; j <= pp[t] / s.BlockSize; j++)
                if ((uint)pt[(long)ps[t] * s.TableWidth + j] >= (uint)s.Blocks)
                    throw new ArgumentOutOfRangeException(nameof(blockTables), $"token {t}: block {pt[(long)ps[t] * s.TableWidth + j]} at table row {ps[t]}, entry {j} is outside the pool of {s.Blocks}");
            if (t == 0 || ps[t] != ps[t - 1] || pp[t] != pp[t - 1] + 1) runStart.Add(t);
        }
        runStart.Add(s.Tokens);
        int d = s.HeadDim, hq = s.QueryHeads, hkv = s.KvHeads, group = hq / hkv, runs = runStart.Count - 1, bs = s.BlockSize;
        float scale = s.Scale, cap = s.Variant.SoftCap;
        int window = s.Variant.Window;
        For(runs * hq, rh =>
        {
            int run = rh / hq, h = rh % hq, kh = h / group;
            int t0 = runStart[run], t1 = runStart[run + 1], len = pp[t1 - 1] + 1;
            int* table = pt + (long)ps[t0] * s.TableWidth;
            float[] buf = ArrayPool<float>.Shared.Rent(2 * d * len + len);
            try
            {
                var kt = buf.AsSpan(0, d * len);
                var vt = buf.AsSpan(d * len, d * len);
                // K and V of the sequence gathered through its block table, transposed to [HeadDim, keys].
                for (int j = 0; j < len; j++)
                {
                    long row = ((long)table[j / bs] * bs + j % bs) * hkv * d + (long)kh * d;
                    for (int c = 0; c < d; c++)
                    {
                        kt[c * len + j] = pk[row + c];
                        vt[c * len + j] = pv[row + c];
                    }
                }
                for (int t = t0; t < t1; t++)
                {
                    int start = VisibleStart(0, pp[t], window), count = pp[t] - start + 1;
                    float* qi = pq + ((long)t * hq + h) * d;
                    float* oi = po + ((long)t * hq + h) * d;
                    var scores = buf.AsSpan(2 * d * len, count);
                    scores.Clear();
                    for (int c = 0; c < d; c++) TensorPrimitives.MultiplyAdd(kt.Slice(c * len + start, count), qi[c] * scale, scores, scores);
                    if (cap > 0f) SoftCapScores(scores, cap, default);
                    float max = TensorPrimitives.Max(scores);
                    TensorPrimitives.Subtract(scores, max, scores);
                    TensorPrimitives.Exp(scores, scores);
                    float inv = 1f / TensorPrimitives.Sum(scores);
                    for (int c = 0; c < d; c++) oi[c] = TensorPrimitives.Dot(scores, vt.Slice(c * len + start, count)) * inv;
                }
            }
            finally { ArrayPool<float>.Shared.Return(buf); }
        });
    }

    public void ArgMax(Tensor x, Tensor output)
    {
        int rows = x.Rows, cols = x.Cols;
        if (output.Length != rows) throw new ArgumentException($"argmax of {x} into {output}: one output per row");
        float* px = F(x);
        int* po = I(output);
        for (int r = 0; r < rows; r++)
        {
            float* row = px + (long)r * cols;
            int best = 0;
            for (int i = 1; i < cols; i++) if (row[i] > row[best]) best = i;
            po[r] = best;
        }
    }

    public void SampleRows(Tensor logits, Tensor parameters, Tensor seen, Tensor output, Tensor scratch)
    {
        int rows = logits.Rows, v = logits.Cols;
        if (output.Length != rows || parameters.Length < (long)rows * Sampling.SamplingRow.Ints || scratch.Length < (long)rows * v)
            throw new ArgumentException($"sampling of {logits} with {parameters} into {output} (scratch {scratch}): one parameter row and one output per logit row");
        float* px = F(logits), pw = F(scratch);
        int* pp = I(parameters), po = I(output), pseen = I(seen);
        for (int r = 0; r < rows; r++)
        {
            var row = Sampling.SamplingRow.Read(new ReadOnlySpan<int>(pp + (long)r * Sampling.SamplingRow.Ints, Sampling.SamplingRow.Ints));
            if (row.SeenStart < 0 || (long)row.SeenStart + row.SeenCount > seen.Length)
                throw new ArgumentOutOfRangeException(nameof(parameters), $"row {r}: seen ids [{row.SeenStart}, +{row.SeenCount}) are outside {seen}");
            var work = new Span<float>(pw + (long)r * v, v);
            new ReadOnlySpan<float>(px + (long)r * v, v).CopyTo(work);
            po[r] = Sampling.TokenSampling.Pick(work, new ReadOnlySpan<int>(pseen + row.SeenStart, row.SeenCount), row);
        }
    }
}
