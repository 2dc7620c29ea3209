using System.Text.Json;
using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

/// <summary>
/// Times the flash-attention kernels alone at the attention shapes of the bench models (causal, one segment per
/// row; gemma's with their windows and soft-caps), for each backward tile shape: device ms per kernel (profile marks,
/// mean of 5 calls after a warm-up) and TFLOP/s, counting 4·D·Hq per visible (query, key) pair (the causal half of
/// T², less with a window) for the forward and 2.5 times that for the backward. Each
/// shape's gradients are compared with the default tiles' (relative L2), so a broken variant shows at full size.
/// One JSON line per (shape, tiles).
/// </summary>
public static class FlashBench
{
    /// <summary>Every tile shape instantiated in flash_attention.cu, the default first.</summary>
    public static readonly FlashBackwardTiles[] Variants = [FlashBackwardTiles.Default, new(4, 32, 4, 32)];

    static readonly (string Name, int B, int T, int Hq, int Hkv, int D, AttentionVariant V)[] Shapes =
    [
        ("llama3-8b", 1, 4096, 32, 8, 128, default), ("qwen2.5-7b", 1, 2048, 28, 4, 128, default), ("qwen3-0.6b", 1, 2048, 16, 8, 128, default),
        ("qwen2.5-0.5b", 4, 2048, 14, 2, 64, default),
        // gemma3-12b: five sliding layers (window 1024) to one global, head_dim 256, query_pre_attn_scalar 256.
        ("gemma3-12b local", 1, 2048, 16, 8, 256, new AttentionVariant(Window: 1024, QueryScale: 1f / 16f)),
        ("gemma3-12b global", 1, 2048, 16, 8, 256, new AttentionVariant(QueryScale: 1f / 16f)),
        // gemma2-9b: attn_logit_softcapping 50 on every layer, window 4096 on half (no effect at 2048).
        ("gemma2-9b", 1, 2048, 16, 8, 256, new AttentionVariant(Window: 4096, SoftCap: 50f, QueryScale: 1f / 16f)),
    ];

    public static int Run()
    {
        using var gpu = new CudaBackend(0);
        var rng = new Random(7);
        foreach (var (name, b, t, hq, hkv, d, variant) in Shapes)
        {
            var s = AttentionShape.Training(b, t, hq, hkv, d) with { Variant = variant };
            Tensor Rand(int rows, int cols)
            {
                var x = gpu.Allocate(DType.BF16, rows, cols);
                var v = new float[(long)rows * cols];
                for (long i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() * 2 - 1);
                gpu.Upload(x, v);
                return x;
            }
            var q = Rand(b * t, hq * d); var k = Rand(b * t, hkv * d); var v = Rand(b * t, hkv * d); var dout = Rand(b * t, hq * d);
            var seg = gpu.Allocate(DType.I32, b, t);
            gpu.Upload(seg, new int[b * t]);
            var o = gpu.Allocate(DType.BF16, b * t, hq * d);
            var lse = gpu.Allocate(DType.F32, b, hq, t);
            var dq = gpu.Allocate(DType.BF16, b * t, hq * d);
            var dk = gpu.Allocate(DType.BF16, b * t, hkv * d);
            var dv = gpu.Allocate(DType.BF16, b * t, hkv * d);
            // 4·D FLOPs per visible (query, key) pair and head: the causal half of T², or with a window W < T
            // W(W+1)/2 + (T − W)·W pairs.
            double pairs = variant.Window > 0 && variant.Window < t
                ? variant.Window * (variant.Window + 1.0) / 2 + (double)(t - variant.Window) * variant.Window
                : (double)t * t / 2;
            double flopsFwd = 4.0 * b * hq * pairs * d;
            // Every instantiated forward shape (FlashForwardTiles), the default last so its outputs feed the backward;
            // forward_tflops is the default's.
            string forwardKernel = FlashForwardTiles.For(d, null).Kernel(d, variant: !variant.IsPlain);
            var fwd = new Dictionary<string, double>();
            foreach (var ft in FlashForwardTiles.Instantiated(d).Reverse())
            {
                gpu.FlashForward = ft;
                gpu.Attention(o, lse, q, k, v, seg, s);
                foreach (var (key, ms) in Profile(gpu, () => gpu.Attention(o, lse, q, k, v, seg, s))) fwd[key] = ms;
            }
            gpu.FlashForward = null;

            float[]? refDq = null, refDk = null, refDv = null;
            // head_dim 256 has its own tile shapes (FlashBackwardTiles.HeadDim256Shapes).
            foreach (var tiles in d <= 128 ? (IEnumerable<FlashBackwardTiles>)Variants : FlashBackwardTiles.HeadDim256Shapes)
            {
                gpu.FlashTiles = tiles;
                void Backward() => gpu.AttentionBackward(dq, dk, dv, dout, o, lse, q, k, v, seg, s);
                Backward();
                var prof = Profile(gpu, Backward);
                var gq = Download(gpu, dq); var gk = Download(gpu, dk); var gv = Download(gpu, dv);
                if (refDq is null) { refDq = gq; refDk = gk; refDv = gv; }
                double bwd = prof.Values.Sum();
                var row = new
                {
                    shape = name, batch = b, seq = t, heads = $"{hq}/{hkv}", head_dim = d, window = variant.Window, softcap = variant.SoftCap,
                    tiles = $"dq w{tiles.DqWarps} n{tiles.DqKeys}, dkv w{tiles.DkvWarps} m{tiles.DkvQueries}",
                    forward_ms = fwd.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)),
                    forward_tflops = Math.Round(flopsFwd / (fwd[forwardKernel] * 1e9), 1),
                    forward_tflops_by_shape = fwd.ToDictionary(kv => kv.Key, kv => Math.Round(flopsFwd / (kv.Value * 1e9), 1)),
                    backward_ms = prof.ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 3)),
                    backward_tflops = Math.Round(2.5 * flopsFwd / (bwd * 1e9), 1),
                    rel_to_first = new { dq = Rel(gq, refDq), dk = Rel(gk, refDk!), dv = Rel(gv, refDv!) },
                };
                Console.WriteLine(JsonSerializer.Serialize(row));
            }
            gpu.FlashTiles = null;
            foreach (var x in new[] { q, k, v, dout, seg, o, lse, dq, dk, dv }) x.Buffer.Dispose();
        }
        return 0;
    }

    /// <summary>Device ms per call of <paramref name="work"/> by profile mark: the 5 calls' sums over 5.</summary>
    internal static Dictionary<string, double> Profile(CudaBackend gpu, Action work)
    {
        gpu.Synchronize();
        gpu.Device.BeginProfile();
        for (int i = 0; i < 5; i++) work();
        return gpu.Device.EndProfile().ToDictionary(kv => kv.Key, kv => kv.Value / 5);
    }

    internal static float[] Download(CudaBackend gpu, Tensor x)
    {
        var a = new float[x.Length];
        gpu.Download(x, a);
        return a;
    }

    /// <summary>‖a − r‖ / ‖r‖, rounded to 7 places (NaN when a is not finite).</summary>
    internal static double Rel(float[] a, float[] r)
    {
        double num = 0, den = 0;
        for (int i = 0; i < a.Length; i++) { double e = (double)a[i] - r[i]; num += e * e; den += (double)r[i] * r[i]; }
        return double.IsFinite(num) ? Math.Round(Math.Sqrt(num / Math.Max(den, 1e-30)), 7) : double.NaN;
    }
}
