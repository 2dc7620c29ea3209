using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.DeviceChecks;

/// <summary>
/// `lora`: the time of each rank-sized LoRA product of a training step (CausalLM.Training.cs's SetForward /
/// SetBackward, grouped LoRA) at qwen2.5-7b's shapes and 8192 tokens, r = 8: per input set (q/k/v, o, gate/up, down)
/// and product, the device ms, the bytes of its large operand (the [tokens, features] tensor it reads or writes) and
/// the GB/s that makes — which products stream at the memory's bandwidth and which do not. Prints only; no check.
/// </summary>
public static class LoraTimes
{
    public static void Run(int tokens = 8192, int rank = 8)
    {
        using var gpu = new CudaBackend(0);
        var owned = new List<DeviceBuffer>();
        var rng = new Random(7);
        Tensor T(params int[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var buf = gpu.AllocateBuffer(n * 2);
            owned.Add(buf);
            var t = new Tensor(buf, 0, DType.BF16, shape);
            var host = new float[n];
            for (long i = 0; i < n; i++) host[i] = (float)(rng.NextDouble() - 0.5);
            gpu.Upload(t, host);
            return t;
        }
        double Ms(Action op)
        {
            op();
            gpu.Synchronize();
            using var timer = gpu.Device.StartTimer();
            for (int i = 0; i < 10; i++) op();
            return timer.StopMs() / 10;
        }
        void Line(string set, string product, double ms, long bytes) =>
            Console.WriteLine($"     lora {set,-8} {product,-34} {ms,8:F4} ms  {bytes / 1e6,8:F1} MB  {bytes / ms / 1e6,6:F0} GB/s");
        // The GPU's clocks ramp up under load: a second of products first, or the first lines read slow (a q/k/v xaT
        // measured 0.108 ms first and 0.020 ms later in the same process).
        {
            var wx = T(tokens, 3584);
            var wa = T(24, 3584);
            var wc = T(24, tokens);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (sw.ElapsedMilliseconds < 1000) { gpu.MatMul(wc, wa, false, wx, true); gpu.Synchronize(); }
        }
        // (set, K = the set's input features, the linears' output features)
        var sets = new (string Name, int K, int[] Outs)[] { ("q/k/v", 3584, [3584, 512, 512]), ("o", 3584, [3584]), ("gate/up", 3584, [18944, 18944]), ("down", 18944, [3584]) };
        double total = 0;
        foreach (var (name, k, outs) in sets)
        {
            int g = outs.Length, gr = g * rank, n = tokens;
            var x = T(n, k);
            var aGroup = T(gr, k);
            var xaT = T(gr, n);
            var dxaT = T(gr, n);
            var dA = T(gr, k);
            var dx = T(n, k);
            double ms = Ms(() => gpu.MatMul(xaT, aGroup, false, x, true));
            Line(name, "xaT = A·xᵀ (forward, recompute)", ms, (long)n * k * 2); total += ms * 2;
            for (int j = 0; j < g; j++)
            {
                int nOut = outs[j];
                var y = T(n, nOut);
                var b = T(nOut, rank);
                var dB = T(nOut, rank);
                var xaTj = xaT.View((long)j * rank * n, [rank, n]);
                var dxaTj = dxaT.View((long)j * rank * n, [rank, n]);
                ms = Ms(() => gpu.MatMul(y, xaTj, true, b, true, 0.5f)); Line(name, $"y{j} = s·xa·Bᵀ (expand)", ms, (long)n * nOut * 2); total += ms;
                ms = Ms(() => gpu.MatMul(dB, y, true, xaTj, true, 0.5f, accumulate: true)); Line(name, $"dB{j} += s·dyᵀ·xa", ms, (long)n * nOut * 2); total += ms;
                ms = Ms(() => gpu.MatMul(dxaTj, b, true, y, true, 0.5f)); Line(name, $"dxaT{j} = s·Bᵀ·dyᵀ", ms, (long)n * nOut * 2); total += ms;
            }
            ms = Ms(() => gpu.MatMul(dA, dxaT, false, x, false, 1f, accumulate: true)); Line(name, "dA += dxaT·x", ms, (long)n * k * 2); total += ms;
            ms = Ms(() => gpu.MatMul(dx, dxaT, true, aGroup, false)); Line(name, "dx = dxa·A (expand)", ms, (long)n * k * 2); total += ms;
        }
        Console.WriteLine($"     lora: one layer's products {total:F3} ms (xaT twice: forward and recompute), × 28 layers {total * 28:F1} ms");
        // xaT = A·xᵀ by the stacked rows m (g·r), K = 3584.
        var xs = T(tokens, 3584);
        foreach (int m in new[] { 8, 16, 24, 32, 48, 64 })
        {
            var a = T(m, 3584);
            var c = T(m, tokens);
            double one = Ms(() => gpu.MatMul(c, a, false, xs, true));
            Console.WriteLine($"     lora xaT = A·xᵀ, {m,2} rows: {one:F4} ms ({(long)tokens * 3584 * 2 / one / 1e6:F0} GB/s)");
        }
        foreach (var b in owned) b.Dispose();
    }
}
