using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

// The flash kernels with gemma's attention variants at training lengths: sliding windows (shorter and longer than the
// packed segments), soft-cap 50, both, and head_dim 256 plain and windowed, each against the CPU reference and against
// the simple CUDA kernels (UseFlashAttention = false) on the same inputs: forward outputs and lse, dq/dk/dv (poisoned
// with NaN first, so an element no block writes fails), the bits of a repeated backward, and every instantiated
// backward tile shape at head_dim 64/128. Also a KV-cache shaped forward (3 queries after 600 cached keys) with a window.
public static partial class OpChecks
{
    /// <summary>Only the attention checks of the BF16 path (plain, gemma's small shapes, the flash variants): `flash` command.</summary>
    public static List<CheckRow> RunFlash()
    {
        var rows = new List<CheckRow>();
        using var cpu = new FineTune.Engine.Cpu.CpuBackend();
        using var gpu = new CudaBackend(0);
        Console.WriteLine($"GPU: {gpu.Info.Name} ({gpu.Info.Architecture})");
        var ctx = new Ctx(cpu, gpu, DType.BF16, "bf16", 1e-2, rows);
        Attention(ctx);
        GemmaAttention(ctx);
        FlashVariantAttention(ctx);
        foreach (var b in ctx.Buffers) b.Dispose();
        int failed = rows.Count(r => !r.Pass);
        Console.WriteLine($"flash checks: {rows.Count - failed} passed, {failed} failed");
        return rows;
    }

    static void FlashVariantAttention(Ctx c)
    {
        if (c.Act != DType.BF16) return; // the flash kernels take BF16 only
        var cases = new (int B, int T, int Hq, int Hkv, int D, AttentionVariant V, float Magnitude)[]
        {
            (2, 2048, 4, 2, 128, new AttentionVariant(Window: 512), 1f),
            (1, 2048, 4, 2, 128, new AttentionVariant(SoftCap: 50f), 5f),
            (2, 2048, 4, 2, 128, new AttentionVariant(Window: 512, SoftCap: 50f), 5f),
            (2, 300, 4, 2, 64, new AttentionVariant(Window: 100, SoftCap: 20f), 4f),
            (1, 2048, 4, 2, 256, default, 1f),
            (2, 2048, 4, 2, 256, new AttentionVariant(Window: 1024, QueryScale: 1f / 16f), 1f),
            (2, 2048, 4, 2, 256, new AttentionVariant(Window: 512, SoftCap: 50f, QueryScale: 1f / 16f), 5f),
        };
        foreach (var (batch, t, hq, hkv, d, variant, magnitude) in cases)
        {
            var s = AttentionShape.Training(batch, t, hq, hkv, d) with { Variant = variant };
            string tag = $"flash-var B{batch} T{t} H{hq}/{hkv} D{d} window {variant.Window} cap {variant.SoftCap}";
            var q = c.Pair(c.Rand((long)batch * t * hq * d, magnitude), [batch * t, hq * d]);
            var k = c.Pair(c.Rand((long)batch * t * hkv * d, magnitude), [batch * t, hkv * d]);
            var v = c.Pair(c.Rand((long)batch * t * hkv * d), [batch * t, hkv * d]);
            // Sequence 0 packs segments of 700, 1000 and the rest (the window crosses their starts); others one segment.
            var seg = new int[batch * t];
            for (int b = 0; b < batch; b++)
                for (int i = 0; i < t; i++) seg[b * t + i] = b == 0 ? (i < 7 * t / 20 ? 0 : i < 17 * t / 20 ? 1 : 2) : 0;
            var segT = c.IntPair(seg, [batch, t]);
            var o = c.Zeros([batch * t, hq * d]);
            var lse = c.Zeros([batch, hq, t], DType.F32);
            var dout = c.Pair(c.Rand((long)batch * t * hq * d), [batch * t, hq * d]);
            var dq = c.Zeros([batch * t, hq * d]); var dk = c.Zeros([batch * t, hkv * d]); var dv = c.Zeros([batch * t, hkv * d]);

            // The simple kernels first, on the flash path's inputs (their outputs are the second reference).
            c.Gpu.UseFlashAttention = false;
            c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            var simpleOut = c.Download(o.Gpu); var simpleLse = c.Download(lse.Gpu);
            c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
            var simpleGrads = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(c.Download).ToArray();
            c.Gpu.UseFlashAttention = true;

            c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s); // warm-up (compile, load)
            double ms = c.TimeRepeat(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
            c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            c.Compare($"attention {tag}", "out", o, ms);
            c.Compare($"attention {tag}", "lse", lse, ms);
            CompareToSimple(c, $"attention {tag} vs simple", "out", simpleOut, o.Gpu, ms);
            CompareToSimple(c, $"attention {tag} vs simple", "lse", simpleLse, lse.Gpu, ms);
            ForwardShapesBitEqual(c, $"attention {tag}", s, o, lse, q, k, v, segT);

            // Each backward takes its own forward's O and lse, as training does (the simple one took the simple kernels').
            c.Cpu.AttentionBackward(dq.Cpu, dk.Cpu, dv.Cpu, dout.Cpu, o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            foreach (var tiles in d <= 128 ? (IEnumerable<FlashBackwardTiles>)FlashBench.Variants : FlashBackwardTiles.HeadDim256Shapes)
            {
                c.Gpu.FlashTiles = tiles;
                string tileTag = $" dq{tiles.DqWarps}x{tiles.DqKeys} kv{tiles.DkvWarps}x{tiles.DkvQueries}";
                foreach (var g in new[] { dq.Gpu, dk.Gpu, dv.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
                c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
                var first = new[] { dq.Gpu, dk.Gpu, dv.Gpu }.Select(c.Download).ToArray();
                ms = c.TimeRepeat(() => c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Compare($"attention_backward {tag}{tileTag}", "dq", dq, ms);
                c.Compare($"attention_backward {tag}{tileTag}", "dk", dk, ms);
                c.Compare($"attention_backward {tag}{tileTag}", "dv", dv, ms);
                string[] names = ["dq", "dk", "dv"];
                var grads = new[] { dq.Gpu, dk.Gpu, dv.Gpu };
                for (int i = 0; i < 3; i++) CompareToSimple(c, $"attention_backward {tag}{tileTag} vs simple", names[i], simpleGrads[i], grads[i], ms);
                bool same = grads.Select((g, i) => c.Download(g).AsSpan().SequenceEqual(first[i])).All(x => x);
                c.Check($"attention_backward {tag}{tileTag}", "bit-repeat", same, ms);
            }
            c.Gpu.FlashTiles = null;
        }

        // KV-cache shaped forward: 3 queries at positions 597..599 of 600 keys in a cache of 640, window 256, head_dim 256.
        foreach (bool flash in new[] { true, false })
        {
            c.Gpu.UseFlashAttention = flash;
            int batch = 2, ql = 3, kl = 600, cap = 640, hq = 4, hkv = 2, d = 256;
            var s = new AttentionShape(batch, ql, kl, cap, hq, hkv, d) { Variant = new AttentionVariant(Window: 256, SoftCap: 50f, QueryScale: 1f / 16f) };
            var q = c.Pair(c.Rand(batch * ql * hq * d, 5f), [batch * ql, hq * d]);
            var k = c.Pair(c.Rand(batch * cap * hkv * d, 5f), [batch * cap, hkv * d]);
            var v = c.Pair(c.Rand(batch * cap * hkv * d), [batch * cap, hkv * d]);
            var segT = c.IntPair(new int[batch * cap], [batch, cap]);
            var o = c.Zeros([batch * ql, hq * d]);
            var lse = c.Zeros([batch, hq, ql], DType.F32);
            double ms = c.Time(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
            c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
            string tag = $"attention kv-cache {(flash ? "flash" : "simple")} Q3 K600/640 D256 window 256 cap 50";
            c.Compare(tag, "out", o, ms);
            c.Compare(tag, "lse", lse, ms);
        }
        c.Gpu.UseFlashAttention = true;
    }

    /// <summary>‖flash − simple‖ / ‖simple‖ of one output, both computed by the GPU, as a check row.</summary>
    static void CompareToSimple(Ctx c, string op, string output, float[] simple, Tensor flash, double ms)
    {
        var reference = c.Pair(simple, [simple.Length], DType.F32).Cpu;
        c.Compare(op, output, (reference, flash), ms);
    }
}
