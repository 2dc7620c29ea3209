using FineTune.Engine.Sampling;

namespace FineTune.Engine.Tests;

/// <summary>
/// A line-by-line C# transcription of sample_rows in Cuda/Kernels/sampling.cu (1,024 threads per row): the radix select
/// of the C-th best order key, the compaction in id order that keeps the lowest ids of the threshold's ties, the
/// candidates' sort, the tail mass (per-thread ranges, then the same tree) when top_k is 0 or above 1,024, and the
/// one-thread double arithmetic. Tested against TokenSampling (the host's reference) so the kernel's algorithm is
/// checked here, on the CPU; tests/device OpChecks compares the kernel itself with the CPU backend.
/// </summary>
internal static class SamplingKernelMirror
{
    const int Threads = 1024, MaxCandidates = 1024;

    static uint Key(float f)
    {
        if (float.IsNaN(f)) return 0u;
        uint b = f == 0f ? 0u : BitConverter.SingleToUInt32Bits(f);
        return (b & 0x80000000u) != 0 ? ~b : b | 0x80000000u;
    }

    public static int Pick(ReadOnlySpan<float> logits, ReadOnlySpan<int> seen, SamplingRow o)
    {
        int v = logits.Length;
        var w = logits.ToArray();
        if (o.RepetitionPenalty != 1.0)
            foreach (int id in seen)
            {
                if ((uint)id >= (uint)v) continue;
                float l = w[id];
                w[id] = l < 0f ? (float)(l * o.RepetitionPenalty) : (float)(l / o.RepetitionPenalty);
            }
        if (!o.DoSample)
        {
            // The block reduction keeps (larger value, then lower index) from −inf / no index: NaN never wins.
            float best = float.NegativeInfinity;
            int at = int.MaxValue;
            for (int i = 0; i < v; i++)
                if (w[i] > best || (w[i] == best && i < at)) { best = w[i]; at = i; }
            return at == int.MaxValue ? 0 : at;
        }
        for (int i = 0; i < v; i++) w[i] = (float)(w[i] / o.Temperature);
        int k = o.TopK > 0 && o.TopK < v ? o.TopK : v;
        bool partial = k > MaxCandidates;
        int c = partial ? MaxCandidates : k;

        uint prefix = 0, mask = 0;
        int rem = c;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            var hist = new int[256];
            for (int i = 0; i < v; i++)
            {
                uint key = Key(w[i]);
                if ((key & mask) == prefix) hist[(key >> shift) & 255]++;
            }
            int acc = 0, d = 255;
            for (; d > 0; d--)
            {
                if (acc + hist[d] >= rem) break;
                acc += hist[d];
            }
            prefix |= (uint)d << shift;
            mask |= 255u << shift;
            rem -= acc;
        }
        uint t = prefix;
        int need = rem;

        int chunk = (v + Threads - 1) / Threads;
        var ck = new List<(uint Key, int Id)>();
        int eqSeen = 0, totalEq = 0;
        for (int i = 0; i < v; i++)
        {
            uint key = Key(w[i]);
            if (key > t) ck.Add((key, i));
            else if (key == t) { if (eqSeen++ < need) ck.Add((key, i)); totalEq++; }
        }
        ck.Sort((a, b) => a.Key != b.Key ? b.Key.CompareTo(a.Key) : a.Id.CompareTo(b.Id));
        double mx = w[ck[0].Id];
        double tailMass = 0;
        if (partial)
        {
            var red = new double[Threads];
            for (int th = 0; th < Threads; th++)
            {
                int lo = Math.Min(v, th * chunk), hi = Math.Min(v, lo + chunk);
                double tail = 0;
                for (int i = lo; i < hi; i++)
                    if (Key(w[i]) < t) tail += Math.Exp(w[i] - mx);
                red[th] = tail;
            }
            for (int s = Threads >> 1; s > 0; s >>= 1)
                for (int th = 0; th < s; th++) red[th] += red[th + s];
            tailMass = red[0];
            int leftEq = totalEq - need;
            if (leftEq > 0) tailMass += leftEq * Math.Exp(w[ck[c - 1].Id] - mx);
        }
        var probs = new double[c];
        double sum = 0;
        for (int i = 0; i < c; i++) sum += probs[i] = Math.Exp(w[ck[i].Id] - mx);
        double total = sum + tailMass;
        int keep = c;
        if (o.TopP < 1.0)
        {
            double acc = 0;
            int cut = -1;
            for (int i = 0; i < c; i++)
            {
                acc += probs[i] / total;
                if (acc >= o.TopP) { cut = i + 1; break; }
            }
            if (cut < 0)
            {
                if (partial) return -1;
                cut = c;
            }
            keep = Math.Max(1, cut);
            sum = 0;
            for (int i = 0; i < keep; i++) sum += probs[i];
        }
        else sum = total;
        double u = o.Uniform * sum;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return ck[i].Id;
        }
        return partial && o.TopP >= 1.0 ? -1 : ck[keep - 1].Id;
    }
}
