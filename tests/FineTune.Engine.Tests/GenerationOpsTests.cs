using FineTune.Engine.Cpu;

namespace FineTune.Engine.Tests;

/// <summary>The CPU backend's generation operations against the packed-sequence attention they stand in for.</summary>
public sealed class GenerationOpsTests
{
    [Fact]
    public void CachedAttentionOverSlotsEqualsPackedAttentionOfEachSequence()
    {
        var b = new CpuBackend(2);
        int hq = 4, hkv = 2, d = 8, kvd = hkv * d, cap = 12, slots = 3;
        // Two sequences of 7 and 5 tokens in slots 2 and 0; the step holds the last 3 tokens of the first (a chunk) and the
        // last token of the second (a decode), the earlier keys already in the cache.
        int[] lens = [7, 5], slotOf = [2, 0];
        var (q, k, v) = Sequences(lens, hq * d, kvd);
        var kc = new float[slots * cap * kvd];
        var vc = new float[slots * cap * kvd];
        for (int s = 0; s < 2; s++)
        {
            Array.Copy(k[s], 0, kc, slotOf[s] * cap * kvd, lens[s] * kvd);
            Array.Copy(v[s], 0, vc, slotOf[s] * cap * kvd, lens[s] * kvd);
        }
        (int Seq, int Pos)[] tokens = [(0, 4), (0, 5), (0, 6), (1, 4)];
        var qs = tokens.SelectMany(t => q[t.Seq].Skip(t.Pos * hq * d).Take(hq * d)).ToArray();
        var output = b.F32(new float[qs.Length], tokens.Length, hq * d);
        // Whole-length slots are blocks of the full capacity, one per table row.
        b.CachedAttention(output, b.F32(qs, tokens.Length, hq * d), b.F32(kc, slots * cap, kvd), b.F32(vc, slots * cap, kvd),
            b.I32(tokens.Select(t => slotOf[t.Seq]).ToArray(), tokens.Length), b.I32(tokens.Select(t => t.Pos).ToArray(), tokens.Length),
            b.I32([0, 1, 2], 3), new CachedAttentionShape(tokens.Length, slots, cap, 1, hq, hkv, d));
        AssertEqualsPackedAttention(b, b.Read(output), tokens, q, k, v, hq, hkv, d);
    }

    [Fact]
    public void CachedAttentionThroughScatteredBlocksEqualsPackedAttentionOfEachSequence()
    {
        var b = new CpuBackend(2);
        int hq = 4, hkv = 2, d = 8, kvd = hkv * d, bs = 3, blocks = 9, width = 4;
        // Sequences of 7 and 5 tokens in blocks of 3 positions, their blocks out of order and interleaved in the pool:
        // sequence 0 in blocks 5, 1, 7; sequence 1 in blocks 8, 2 (block 0 unused, as the engine's scratch block).
        int[] lens = [7, 5];
        int[][] tables = [[5, 1, 7], [8, 2]];
        var (q, k, v) = Sequences(lens, hq * d, kvd);
        var kc = new float[blocks * bs * kvd];
        var vc = new float[blocks * bs * kvd];
        for (int s = 0; s < 2; s++)
        {
            for (int p = 0; p < lens[s]; p++)
            {
                int row = tables[s][p / bs] * bs + p % bs;
                Array.Copy(k[s], p * kvd, kc, row * kvd, kvd);
                Array.Copy(v[s], p * kvd, vc, row * kvd, kvd);
            }
        }
        var table = new int[2 * width];
        for (int s = 0; s < 2; s++) tables[s].CopyTo(table, s * width);
        (int Seq, int Pos)[] tokens = [(1, 4), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6)];
        var qs = tokens.SelectMany(t => q[t.Seq].Skip(t.Pos * hq * d).Take(hq * d)).ToArray();
        var output = b.F32(new float[qs.Length], tokens.Length, hq * d);
        b.CachedAttention(output, b.F32(qs, tokens.Length, hq * d), b.F32(kc, blocks * bs, kvd), b.F32(vc, blocks * bs, kvd),
            b.I32(tokens.Select(t => t.Seq).ToArray(), tokens.Length), b.I32(tokens.Select(t => t.Pos).ToArray(), tokens.Length),
            b.I32(table, 2 * width), new CachedAttentionShape(tokens.Length, blocks, bs, width, hq, hkv, d));
        AssertEqualsPackedAttention(b, b.Read(output), tokens, q, k, v, hq, hkv, d);
    }

    /// <summary>Random queries, keys and values of each sequence (seeds 10 + s, 20 + s, 30 + s).</summary>
    private static (List<float[]> Q, List<float[]> K, List<float[]> V) Sequences(int[] lens, int queryWidth, int kvWidth) =>
        (lens.Select((n, s) => TestTensors.Random(n * queryWidth, 10 + s)).ToList(),
         lens.Select((n, s) => TestTensors.Random(n * kvWidth, 20 + s)).ToList(),
         lens.Select((n, s) => TestTensors.Random(n * kvWidth, 30 + s)).ToList());

    /// <summary>Each step token's output row equals its position's row of packed causal attention over its whole sequence.</summary>
    private static void AssertEqualsPackedAttention(CpuBackend b, float[] got, (int Seq, int Pos)[] tokens,
        List<float[]> q, List<float[]> k, List<float[]> v, int hq, int hkv, int d)
    {
        int kvd = hkv * d;
        for (int s = 0; s < q.Count; s++)
        {
            int n = k[s].Length / kvd;
            var o = b.F32(new float[n * hq * d], n, hq * d);
            b.Attention(o, b.F32(new float[n * hq], n * hq), b.F32(q[s], n, hq * d), b.F32(k[s], n, kvd), b.F32(v[s], n, kvd),
                b.I32(new int[n], n), AttentionShape.Training(1, n, hq, hkv, d));
            var want = b.Read(o);
            for (int t = 0; t < tokens.Length; t++)
                if (tokens[t].Seq == s)
                    Assert.Equal(want.Skip(tokens[t].Pos * hq * d).Take(hq * d), got.Skip(t * hq * d).Take(hq * d));
        }
    }

    [Fact]
    public void CachedAttentionRefusesABlockOutsideThePool()
    {
        var b = new CpuBackend(1);
        int d = 4;
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => b.CachedAttention(b.F32(new float[d], 1, d), b.F32(new float[d], 1, d),
            b.F32(new float[4 * 2 * d], 8, d), b.F32(new float[4 * 2 * d], 8, d), b.I32([0], 1), b.I32([3], 1), b.I32([1, 4], 2),
            new CachedAttentionShape(1, 4, 2, 2, 1, 1, d)));
        Assert.Contains("block 4 at table row 0, entry 1 is outside the pool of 4", ex.Message);
    }

    [Fact]
    public void ScatterRowsWritesEachRowWhereItsIndexSays()
    {
        var b = new CpuBackend(1);
        var dst = b.F32(new float[8], 4, 2);
        b.ScatterRows(dst, b.F32([1, 2, 3, 4], 2, 2), b.I32([3, 0], 2));
        Assert.Equal([3f, 4, 0, 0, 0, 0, 1, 2], b.Read(dst));
    }

    [Fact]
    public void ArgMaxTakesTheFirstOfEqualMaxima()
    {
        var b = new CpuBackend(1);
        var picks = b.I32(new int[2], 2);
        b.ArgMax(b.F32([1, 5, 5, 2, -1, float.NaN, -0.5f, -0.5f], 2, 4), picks);
        var host = new int[2];
        b.Download(picks, host);
        Assert.Equal([1, 2], host);
    }
}
