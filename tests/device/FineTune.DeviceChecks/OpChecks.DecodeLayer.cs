using System.Runtime.InteropServices;
using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

// A one-token decode layer as one persistent launch (decode.cu's decode_layer, CudaBackend.UsePersistentLayer) against
// the three fused operations it replaces (IBackend.DecodeLayer's composition on CUDA): every output's bits — q/k/v,
// q/k after norms and RoPE, the caches' new rows, the attention, mid, gate/up/h, y, every ln and rstd — at several FIFO
// depths, twice in a row (the grid barrier and the attention's counters re-armed), as a dependent launch too; y against
// the CPU's composition; and the times of both forms.
public static partial class OpChecks
{
    static void DecodeLayerCheck(Ctx c, int hidden, int inter, int d, int hq, int hkv, bool normed, int position)
    {
        int maxPos = 1100, bs = 16, width = 72, blocks = width + 1, kvd = hkv * d, qd = hq * d;
        var (cos, sin) = RopeTables(c, maxPos, d);
        var (tb, pos, seqs, rows) = OneTokenStep(c, width, bs, position);
        var x = c.Pair(c.Rand(hidden, 2f), [1, hidden]);
        var nw1 = c.Pair(c.Rand(hidden), [hidden]);
        var nw2 = c.Pair(c.Rand(hidden), [hidden]);
        var wq = c.Pair(c.Rand((long)qd * hidden, 0.05f), [qd, hidden]);
        var wk = c.Pair(c.Rand((long)kvd * hidden, 0.05f), [kvd, hidden]);
        var wv = c.Pair(c.Rand((long)kvd * hidden, 0.05f), [kvd, hidden]);
        var wo = c.Pair(c.Rand((long)hidden * qd, 0.05f), [hidden, qd]);
        var wg = c.Pair(c.Rand((long)inter * hidden, 0.05f), [inter, hidden]);
        var wu = c.Pair(c.Rand((long)inter * hidden, 0.05f), [inter, hidden]);
        var wd = c.Pair(c.Rand((long)hidden * inter, 0.05f), [hidden, inter]);
        var qn = c.Pair(c.Rand(d), [d]);
        var kn = c.Pair(c.Rand(d), [d]);
        var kcBase = c.Rand((long)blocks * bs * kvd);
        var vcBase = c.Rand((long)blocks * bs * kvd);
        var shape = new CachedAttentionShape(1, blocks, bs, width, hq, hkv, d);
        string[] names = ["y", "mid", "h", "gate", "up", "ln1", "rstd1", "ln2", "rstd2", "qIn", "kIn", "v", "q", "k", "qrstd", "krstd", "att", "kcache", "vcache"];
        (Tensor Cpu, Tensor Gpu)[] Set() =>
        [
            c.Zeros([1, hidden]), c.Zeros([1, hidden]), c.Zeros([1, inter]), c.Zeros([1, inter]), c.Zeros([1, inter]), c.Zeros([1, hidden]),
            c.Zeros([1], DType.F32), c.Zeros([1, hidden]), c.Zeros([1], DType.F32), c.Zeros([1, qd]), c.Zeros([1, kvd]), c.Zeros([1, kvd]),
            c.Zeros([1, qd]), c.Zeros([1, kvd]), c.Zeros([hq], DType.F32), c.Zeros([hkv], DType.F32), c.Zeros([1, qd]),
            c.Pair(kcBase, [blocks * bs, kvd]), c.Pair(vcBase, [blocks * bs, kvd]),
        ];
        DecodeLayerTensors Tensors((Tensor Cpu, Tensor Gpu)[] s, bool gpu)
        {
            Tensor T(int i) => gpu ? s[i].Gpu : s[i].Cpu;
            Tensor X((Tensor Cpu, Tensor Gpu) t) => gpu ? t.Gpu : t.Cpu;
            return new DecodeLayerTensors
            {
                X = X(x), Y = T(0), Eps = 1e-6f, Ln1 = T(5), Rstd1 = T(6), InputNorm = X(nw1), QIn = T(9), KIn = T(10), V = T(11),
                QWeight = X(wq), KWeight = X(wk), VWeight = X(wv),
                Q = normed ? T(12) : T(9), K = normed ? T(13) : T(10), QNorm = normed ? X(qn) : null, KNorm = normed ? X(kn) : null,
                QRstd = normed ? T(14) : null, KRstd = normed ? T(15) : null,
                Positions = X(pos), Cos = X(cos), Sin = X(sin), HeadDim = d, KCache = T(17), VCache = T(18), CacheRows = X(rows), Sequences = X(seqs),
                BlockTables = X(tb), Shape = shape, Att = T(16),
                OWeight = X(wo), Mid = T(1), Ln2 = T(7), Rstd2 = T(8), PostNorm = X(nw2), Gate = T(3), Up = T(4), H = T(2),
                GateWeight = X(wg), UpWeight = X(wu), DownWeight = X(wd),
            };
        }
        bool persistent = c.Gpu.UsePersistentLayer, pdl = c.Gpu.UseDependentLaunch;
        var layerShape = c.Gpu.PersistentLayerShape;
        void Op((Tensor Cpu, Tensor Gpu)[] s, bool one, bool asDependent = false, int depth = 0)
        {
            c.Gpu.UsePersistentLayer = one;
            c.Gpu.UseDependentLaunch = asDependent;
            c.Gpu.PersistentLayerShape = layerShape with { Depth = depth };
            c.Gpu.DecodeLayer(Tensors(s, gpu: true));
            c.Gpu.UsePersistentLayer = persistent;
            c.Gpu.UseDependentLaunch = pdl;
            c.Gpu.PersistentLayerShape = layerShape;
        }
        string name = $"decode layer H{hidden} I{inter} Hq{hq}/{hkv} D{d}{(normed ? " qk-norm" : "")} p{position}";
        var (one, three) = (Set(), Set());
        c.Gpu.Device.BeginProfile();
        Op(one, true);
        string? refusal = c.Gpu.PersistentLayerRefusal;
        var marks = c.Gpu.Device.EndProfile();
        bool ran = marks.ContainsKey("decode_layer");
        c.Check($"{name} launches decode_layer", "kernel", ran && refusal is null, 0);
        if (!ran) Console.WriteLine($"     {name}: not launched ({refusal ?? "no refusal"}; marks: {string.Join(", ", marks.Keys)})");
        Op(three, false);
        var reference = names.Select((_, i) => c.Download(three[i].Gpu)).ToArray();
        void Same(string label, (Tensor Cpu, Tensor Gpu)[] s)
        {
            for (int i = 0; i < names.Length; i++)
                c.Check($"{name} {label}", names[i] + " bits", c.Download(s[i].Gpu).SequenceEqual(reference[i]), 0);
        }
        Same("one launch = three operations", one);
        var again = Set();
        Op(again, true);
        Op(again, true); // the second launch into the same set: the barrier and counters re-armed, the same values
        Same("one launch, again", again);
        var dependent = Set();
        Op(dependent, true, asDependent: true);
        Same("one launch, dependent (PDL)", dependent);
        foreach (int depth in new[] { 2, 3, 5 })
        {
            var set = Set();
            Op(set, true, depth: depth);
            Same($"one launch, FIFO depth {depth}", set);
        }
        double oneMs = c.TimeRepeat(() => Op(again, true));
        double threeMs = c.TimeRepeat(() => Op(again, false));
        DecodeComposition.DecodeLayer(c.Cpu, Tensors(one, gpu: false));
        c.Compare(name, "y", one[0], oneMs);
        long bytes = 2L * hidden * (qd + 2L * kvd + qd + 3L * inter);
        Console.WriteLine($"     {name}: one launch {oneMs:F4} ms ({bytes / oneMs / 1e6:F0} GB/s), three operations {threeMs:F4} ms ({bytes / threeMs / 1e6:F0} GB/s)");
        if (ran) LayerTrace(c, name, () => Op(again, true));
    }

    // Where one decode_layer launch's time goes: every block's clock at its stage ends and barrier releases
    // (CudaBackend.PersistentLayerTrace), as µs after the first block's entry — the first block to get there and the
    // last — the median of five launches.
    static void LayerTrace(Ctx c, string name, Action launch)
    {
        int sms = c.Gpu.Device.Info.Multiprocessors, stamps = CudaBackend.PersistentLayerStamps;
        var raw = new int[2 * stamps * sms];
        var trace = c.IntPair(raw, [raw.Length]).Gpu;
        var runs = new List<(double First, double Last)[]>();
        c.Gpu.PersistentLayerTrace = trace;
        try
        {
            for (int run = 0; run < 5; run++)
            {
                launch();
                c.Gpu.Download(trace, raw);
                var ns = MemoryMarshal.Cast<int, ulong>(raw).ToArray();
                ulong start = ulong.MaxValue;
                for (int b = 0; b < sms; b++) start = Math.Min(start, ns[b * stamps]);
                runs.Add([.. Enumerable.Range(0, stamps).Select(k =>
                {
                    var at = Enumerable.Range(0, sms).Select(b => (ns[b * stamps + k] - start) / 1000.0).ToArray();
                    return (at.Min(), at.Max());
                })]);
            }
        }
        finally { c.Gpu.PersistentLayerTrace = null; }
        string[] points = ["entry", "q/k/v done", "barrier", "attention done", "barrier", "o_proj done", "barrier", "gate/up done", "barrier", "down done"];
        double Median(Func<(double First, double Last)[], double> f) => runs.Select(f).OrderBy(v => v).ElementAt(runs.Count / 2);
        Console.WriteLine($"     {name}: trace, µs after the first entry (first block / last block): " + string.Join(", ",
            points.Select((p, k) => $"{p} {Median(r => r[k].First):F1}/{Median(r => r[k].Last):F1}")));
    }
}
