namespace FineTune.Engine.Sampling;

/// <summary>
/// One row's decoding settings as <see cref="IBackend.SampleRows"/> reads them, with Hugging Face generate()'s
/// meanings: repetition penalty, then greedy argmax, or temperature → top-k → top-p → a draw. <see cref="Uniform"/>
/// is the draw in [0, 1), taken on the host from the request's own generator, so every backend picks the same token
/// for a seed. Seen ids are [SeenStart, SeenStart + SeenCount) of the step's seen list (distinct ids).
/// </summary>
public readonly record struct SamplingRow(bool DoSample, double Temperature, int TopK, double TopP, double RepetitionPenalty,
    double Uniform, int SeenStart, int SeenCount)
{
    /// <summary>I32 values per row in the parameter tensor.</summary>
    public const int Ints = 12;

    /// <summary>
    /// The row as 12 ints: flags, top_k, seen start, seen count, then temperature, top_p, penalty and the uniform as
    /// the low and high halves of their doubles (kept in double so the device divides exactly as the host does).
    /// </summary>
    public void Write(Span<int> dst)
    {
        dst[0] = DoSample ? 1 : 0;
        dst[1] = TopK;
        dst[2] = SeenStart;
        dst[3] = SeenCount;
        WriteDouble(dst[4..], Temperature);
        WriteDouble(dst[6..], TopP);
        WriteDouble(dst[8..], RepetitionPenalty);
        WriteDouble(dst[10..], Uniform);
    }

    public static SamplingRow Read(ReadOnlySpan<int> src) =>
        new(src[0] != 0, ReadDouble(src[4..]), src[1], ReadDouble(src[6..]), ReadDouble(src[8..]), ReadDouble(src[10..]), src[2], src[3]);

    static void WriteDouble(Span<int> dst, double v)
    {
        long bits = BitConverter.DoubleToInt64Bits(v);
        dst[0] = (int)bits;
        dst[1] = (int)(bits >> 32);
    }

    static double ReadDouble(ReadOnlySpan<int> src) => BitConverter.Int64BitsToDouble((long)(uint)src[0] | ((long)src[1] << 32));
}

/// <summary>
/// The reference pick of one row of logits (what the CPU backend runs, and what the CUDA kernel in sampling.cu
/// reproduces): repetition penalty (CTRL: logit/p if positive, logit·p if negative), then greedy argmax, or
/// temperature → top-k → top-p → the token where the running mass in order passes u·(kept mass). The kept tokens are
/// ordered by descending scaled logit with ties to the lower id (NaN below everything), and every sum runs in that
/// order in double, so a uniform reproduces the same token on every machine.
/// </summary>
public static class TokenSampling
{
    public static int Pick(Span<float> logits, ReadOnlySpan<int> seen, SamplingRow o)
    {
        if (o.RepetitionPenalty != 1.0)
            foreach (int id in seen)
            {
                if ((uint)id >= (uint)logits.Length) continue;
                logits[id] = logits[id] < 0 ? (float)(logits[id] * o.RepetitionPenalty) : (float)(logits[id] / o.RepetitionPenalty);
            }
        if (!o.DoSample) return ArgMax(logits);
        if (o.Temperature <= 0) throw new ArgumentException($"temperature must be positive when sampling, got {o.Temperature}");
        int v = logits.Length;
        float[] scaled = new float[v];
        for (int i = 0; i < v; i++) scaled[i] = (float)(logits[i] / o.Temperature);
        int[] order = o.TopK > 0 && o.TopK < v ? TopK(scaled, o.TopK) : SortedDescending(scaled);
        int keep = order.Length;
        double max = scaled[order[0]];
        var probs = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) sum += probs[i] = Math.Exp(scaled[order[i]] - max);
        if (o.TopP < 1.0)
        {
            // Smallest prefix whose mass reaches top_p (at least one token).
            double acc = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++)
            {
                acc += probs[i] / sum;
                if (acc >= o.TopP) { cut = i + 1; break; }
            }
            keep = Math.Max(1, cut);
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        double u = o.Uniform * sum;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return order[i];
        }
        return order[keep - 1];
    }

    /// <summary>The first index of the largest value (NaN never wins).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>x before y: larger value (float.CompareTo: NaN below everything), then lower id.</summary>
    internal static bool Before(float[] s, int x, int y) => s[x].CompareTo(s[y]) is var c && c != 0 ? c > 0 : x < y;

    /// <summary>
    /// The k best ids in order, through a heap of the k best seen so far (root = the worst kept): O(V log k) instead of
    /// a sort of the whole vocabulary, with exactly the order the sort gives.
    /// </summary>
    internal static int[] TopK(float[] s, int k)
    {
        var heap = new int[k];
        for (int i = 0; i < k; i++)
        {
            heap[i] = i;
            for (int c = i; c > 0;)
            {
                int p = (c - 1) / 2;
                if (!Before(s, heap[p], heap[c])) break;
                (heap[p], heap[c]) = (heap[c], heap[p]);
                c = p;
            }
        }
        for (int i = k; i < s.Length; i++)
        {
            if (!Before(s, i, heap[0])) continue;
            heap[0] = i;
            for (int p = 0; ;)
            {
                int l = 2 * p + 1, r = l + 1, worst = p;
                if (l < k && Before(s, heap[worst], heap[l])) worst = l;
                if (r < k && Before(s, heap[worst], heap[r])) worst = r;
                if (worst == p) break;
                (heap[p], heap[worst]) = (heap[worst], heap[p]);
                p = worst;
            }
        }
        Array.Sort(heap, (x, y) => x == y ? 0 : Before(s, x, y) ? -1 : 1);
        return heap;
    }

    /// <summary>Every id in order: a primitive-key sort (ascending, NaN first), reversed, then each run of equal values by id.</summary>
    internal static int[] SortedDescending(float[] s)
    {
        int v = s.Length;
        var keys = (float[])s.Clone();
        var order = new int[v];
        for (int i = 0; i < v; i++) order[i] = i;
        Array.Sort(keys, order);
        Array.Reverse(keys);
        Array.Reverse(order);
        for (int i = 0; i < v;)
        {
            int j = i + 1;
            while (j < v && keys[j].CompareTo(keys[i]) == 0) j++;
            if (j - i > 1) Array.Sort(order, i, j - i);
            i = j;
        }
        return order;
    }
}
