using FineTune.Engine;

namespace FineTune.DeviceChecks;

// The operations and options gemma 2/3 add: (1 + w) RMSNorm (plain, fused residual, backward), GeGLU (tanh GELU)
// forward/backward, soft-capping forward/backward, and attention with a sliding window and/or logit soft-cap and a
// query_pre_attn_scalar scale (training forward and backward at head_dim 256 and 64 on the flash and the simple
// kernels, the flash kernels at training lengths in OpChecks.FlashVariants.cs, and the KV-cache path), each against
// the CPU reference.
public static partial class OpChecks
{
    static void GemmaOps(Ctx c)
    {
        foreach (var (rows, cols) in new[] { (37, 320), (5, 100) }) OffsetNorms(c, rows, cols);
        foreach (int m in new[] { 4099, 4096 }) GeGluChecks(c, m);
        SoftCapChecks(c);
        GemmaAttention(c);
        FlashVariantAttention(c);
        GemmaCachedAttention(c);
    }

    static void OffsetNorms(Ctx c, int rows, int cols)
    {
        string tag = $" (1+w) {rows}x{cols}";
        var x = c.Pair(c.Rand(rows * cols, 3f), [rows, cols]);
        var w = c.Pair(c.Rand(cols, 0.5f), [cols]);
        var y = c.Zeros([rows, cols]);
        var rstd = c.Zeros([rows], DType.F32);
        double ms = c.Time(() => c.Gpu.RmsNorm(y.Gpu, rstd.Gpu, x.Gpu, w.Gpu, 1e-6f, 1f));
        c.Cpu.RmsNorm(y.Cpu, rstd.Cpu, x.Cpu, w.Cpu, 1e-6f, 1f);
        c.Compare("rmsnorm" + tag, "y", y, ms);
        var dy = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var dx = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var dw = c.Pair(c.Rand(cols), [cols], DType.F32);
        ms = c.Time(() => c.Gpu.RmsNormBackward(dx.Gpu, dw.Gpu, dy.Gpu, x.Gpu, w.Gpu, rstd.Gpu, 1f));
        c.Cpu.RmsNormBackward(dx.Cpu, dw.Cpu, dy.Cpu, x.Cpu, w.Cpu, rstd.Cpu, 1f);
        c.Compare("rmsnorm_backward" + tag, "dx", dx, ms);
        c.Compare("rmsnorm_backward" + tag, "dweight", dw, ms);
        var a = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var b = c.Pair(c.Rand(rows * cols), [rows, cols]);
        var resid = c.Zeros([rows, cols]);
        var y2 = c.Zeros([rows, cols]);
        var r2 = c.Zeros([rows], DType.F32);
        ms = c.Time(() => c.Gpu.ResidualRmsNorm(resid.Gpu, y2.Gpu, r2.Gpu, a.Gpu, b.Gpu, w.Gpu, 1e-6f, 1f));
        c.Cpu.ResidualRmsNorm(resid.Cpu, y2.Cpu, r2.Cpu, a.Cpu, b.Cpu, w.Cpu, 1e-6f, 1f);
        c.Compare("residual_rmsnorm" + tag, "y", y2, ms);
    }

    static void GeGluChecks(Ctx c, int m)
    {
        float[] gHost = c.Rand(m, 4f), uHost = c.Rand(m, 2f);
        var g = c.Pair(gHost, [m]);
        var u = c.Pair(uHost, [m]);
        var h = c.Zeros([m]);
        double ms = c.Time(() => c.Gpu.GeGlu(h.Gpu, g.Gpu, u.Gpu));
        c.Cpu.GeGlu(h.Cpu, g.Cpu, u.Cpu);
        c.Compare($"geglu {m}", "h", h, ms);
        var dh = c.Pair(c.Rand(m), [m]);
        var dg = c.Zeros([m]); var du = c.Zeros([m]);
        ms = c.Time(() => c.Gpu.GeGluBackward(dg.Gpu, du.Gpu, dh.Gpu, g.Gpu, u.Gpu));
        c.Cpu.GeGluBackward(dg.Cpu, du.Cpu, dh.Cpu, g.Cpu, u.Cpu);
        c.Compare($"geglu_backward {m}", "dgate", dg, ms);
        c.Compare($"geglu_backward {m}", "dup", du, ms);
        InPlaceGluBits(c, $"geglu_backward {m}", c.Gpu.GeGluBackward, gHost, uHost, dh.Gpu, dg.Gpu, du.Gpu);
    }

    static void SoftCapChecks(Ctx c)
    {
        int rows = 7, vocab = 5000;
        var x = c.Pair(c.Rand(rows * vocab, 80f), [rows, vocab]);
        var y = c.Zeros([rows, vocab]);
        double ms = c.Time(() => c.Gpu.SoftCap(y.Gpu, x.Gpu, 30f));
        c.Cpu.SoftCap(y.Cpu, x.Cpu, 30f);
        c.Compare("softcap 30", "y", y, ms);
        var dx = c.Pair(c.Rand(rows * vocab), [rows, vocab]);
        ms = c.Time(() => c.Gpu.SoftCapBackward(dx.Gpu, y.Gpu, 30f));
        c.Cpu.SoftCapBackward(dx.Cpu, y.Cpu, 30f);
        c.Compare("softcap_backward 30", "dx", dx, ms);
    }

    static void GemmaAttention(Ctx c)
    {
        var cases = new List<(int B, int T, int Hq, int Hkv, int D, AttentionVariant V)>
        {
            (2, 77, 4, 2, 64, new AttentionVariant(Window: 16)),
            (2, 77, 4, 2, 64, new AttentionVariant(SoftCap: 2f)),
            (1, 130, 4, 2, 256, new AttentionVariant(Window: 48, SoftCap: 3f, QueryScale: 1f / MathF.Sqrt(144f))),
            (1, 130, 2, 1, 256, new AttentionVariant(QueryScale: 1f / MathF.Sqrt(200f))),
        };
        foreach (bool flash in c.Act == DType.BF16 ? new[] { true, false } : new[] { false })
            foreach (var (batch, t, hq, hkv, d, variant) in cases)
            {
                c.Gpu.UseFlashAttention = flash;
                var s = AttentionShape.Training(batch, t, hq, hkv, d) with { Variant = variant };
                // Scores of a few units: the soft-cap bends them (q, k of magnitude 2 give |q·k·scale| up to ~8).
                var q = c.Pair(c.Rand(batch * t * hq * d, 2f), [batch * t, hq * d]);
                var k = c.Pair(c.Rand(batch * t * hkv * d, 2f), [batch * t, hkv * d]);
                var v = c.Pair(c.Rand(batch * t * hkv * d), [batch * t, hkv * d]);
                var seg = new int[batch * t];
                for (int b = 0; b < batch; b++)
                    for (int i = 0; i < t; i++) seg[b * t + i] = b == 0 ? (i < 30 ? 0 : i < 70 ? 1 : 2) : 0;
                var segT = c.IntPair(seg, [batch, t]);
                var o = c.Zeros([batch * t, hq * d]);
                var lse = c.Zeros([batch, hq, t], DType.F32);
                string tag = $"{(flash ? "flash-on" : "simple")} B{batch} T{t} H{hq}/{hkv} D{d} window {variant.Window} cap {variant.SoftCap}";
                c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s);
                double ms = c.TimeRepeat(() => c.Gpu.Attention(o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Cpu.Attention(o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                c.Compare($"attention {tag}", "out", o, ms);
                c.Compare($"attention {tag}", "lse", lse, ms);
                var dout = c.Pair(c.Rand(batch * t * hq * d), [batch * t, hq * d]);
                var dq = c.Zeros([batch * t, hq * d]); var dk = c.Zeros([batch * t, hkv * d]); var dv = c.Zeros([batch * t, hkv * d]);
                c.Cpu.AttentionBackward(dq.Cpu, dk.Cpu, dv.Cpu, dout.Cpu, o.Cpu, lse.Cpu, q.Cpu, k.Cpu, v.Cpu, segT.Cpu, s);
                foreach (var g in new[] { dq.Gpu, dk.Gpu, dv.Gpu }) c.Gpu.Upload(g, Enumerable.Repeat(float.NaN, (int)g.Length).ToArray());
                ms = c.Time(() => c.Gpu.AttentionBackward(dq.Gpu, dk.Gpu, dv.Gpu, dout.Gpu, o.Gpu, lse.Gpu, q.Gpu, k.Gpu, v.Gpu, segT.Gpu, s));
                c.Compare($"attention_backward {tag}", "dq", dq, ms);
                c.Compare($"attention_backward {tag}", "dk", dk, ms);
                c.Compare($"attention_backward {tag}", "dv", dv, ms);
            }
        c.Gpu.UseFlashAttention = true;
    }

    static void GemmaCachedAttention(Ctx c)
    {
        foreach (var (hq, hkv, d, variant) in new[]
        {
            (4, 2, 64, new AttentionVariant(Window: 32)),
            (4, 2, 256, new AttentionVariant(Window: 100, SoftCap: 3f, QueryScale: 1f / MathF.Sqrt(144f))),
        })
        {
          // A prompt chunk with two decode tokens (the warp kernel), and the two decode tokens alone (split-K where it applies).
          foreach (bool decodeOnly in new[] { false, true })
          {
            int slots = 3, cap = 300, kvd = hkv * d;
            var tokenSlots = (decodeOnly ? [] : Enumerable.Repeat(2, 260)).Concat([0, 1]).ToArray();
            var tokenPos = (decodeOnly ? [] : Enumerable.Range(0, 260)).Concat([40, 299]).ToArray();
            int n = tokenSlots.Length;
            var kc = c.Pair(c.Rand(slots * cap * kvd, 2f), [slots * cap, kvd]);
            var vc = c.Pair(c.Rand(slots * cap * kvd), [slots * cap, kvd]);
            var q = c.Pair(c.Rand(n * hq * d, 2f), [n, hq * d]);
            var o = c.Zeros([n, hq * d]);
            var sl = c.IntPair(tokenSlots, [n]);
            var ps = c.IntPair(tokenPos, [n]);
            // Whole-length slots: one block of cap positions per sequence, table row s = [s].
            var tables = c.IntPair([0, 1, 2], [slots]);
            var shape = new CachedAttentionShape(n, slots, cap, 1, hq, hkv, d) { Variant = variant };
            double ms = c.Time(() => c.Gpu.CachedAttention(o.Gpu, q.Gpu, kc.Gpu, vc.Gpu, sl.Gpu, ps.Gpu, tables.Gpu, shape));
            c.Cpu.CachedAttention(o.Cpu, q.Cpu, kc.Cpu, vc.Cpu, sl.Cpu, ps.Cpu, tables.Cpu, shape);
            c.Compare($"cached_attention T{n} H{hq}/{hkv} D{d} window {variant.Window} cap {variant.SoftCap}", "out", o, ms);
          }
        }
    }
}
