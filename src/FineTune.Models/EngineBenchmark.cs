using System.Diagnostics;
using FineTune.Engine;

namespace FineTune.Models;

/// <summary>Result of timing LoRA SFT steps (forward + backward + AdamW) on random weights of a named shape.</summary>
public sealed record TrainStepBenchmark(string Device, string Shape, int Batch, int SeqLen, int LoraRank, bool GradientCheckpointing,
    int Steps, double StepMs, double TokensPerSecond, double CpuSecondsPerStep, long Parameters, long TrainableParameters, double ModelGflopPerToken, double AchievedGflops);

/// <summary>Result of timing one matrix product C[M,N] = A[M,K]·B[N,K]ᵀ.</summary>
public sealed record MatMulBenchmark(string Device, int M, int N, int K, int Repeats, double Ms, double Gflops);

/// <summary>Synthetic benchmarks of the engine: shapes of real models, random weights, random tokens.</summary>
public static class EngineBenchmark
{
    private static TransformerSpec Shape(string arch, int vocab, int hidden, int inter, int layers, int heads, int kv, int headDim, bool tied, double theta = 1e6) =>
        new()
        {
            Architecture = arch, VocabSize = vocab, HiddenSize = hidden, IntermediateSize = inter, NumLayers = layers,
            NumHeads = heads, NumKvHeads = kv, HeadDimOverride = headDim, TieWordEmbeddings = tied, RopeTheta = theta,
            MaxPositionEmbeddings = 32768, QkvBias = arch == "qwen2", QkNorm = arch == "qwen3",
        };

    /// <summary>Named shapes: the demo's scratch model, a small one, and real models' dimensions.</summary>
    public static IReadOnlyDictionary<string, TransformerSpec> Shapes { get; } = new Dictionary<string, TransformerSpec>
    {
        ["tiny"] = Shape("qwen3", 512, 64, 128, 2, 4, 2, 16, true),
        ["small"] = Shape("qwen3", 32000, 256, 768, 4, 8, 4, 32, true),
        ["qwen3-0.6b"] = Shape("qwen3", 151936, 1024, 3072, 28, 16, 8, 128, true),
        ["qwen2.5-0.5b"] = Shape("qwen2", 151936, 896, 4864, 24, 14, 2, 64, true),
        ["qwen2.5-7b"] = Shape("qwen2", 152064, 3584, 18944, 28, 28, 4, 128, false),
        ["llama3-8b"] = Shape("llama", 128256, 4096, 14336, 32, 32, 8, 128, false, 500000),
    };

    public static TransformerSpec ShapeOf(string name) => Shapes.TryGetValue(name, out var s) ? s
        : throw new ArgumentException($"unknown shape '{name}'; choose one of {string.Join(", ", Shapes.Keys)}");

    /// <summary>
    /// Times <paramref name="steps"/> LoRA steps (rank r on all seven projections, AdamW) after one warm-up step.
    /// Model FLOPs per token: 6·(matmul weights) + 6·(attention: 2·T·d per layer and head, causal half) — forward 2, backward 4.
    /// </summary>
    public static TrainStepBenchmark TrainSteps(IBackend backend, string shape, int batch, int seqLen, int loraRank, bool checkpointing, int steps, int seed = 0)
    {
        var spec = ShapeOf(shape);
        var setup = new TrainingSetup { LoraRank = loraRank, GradientCheckpointing = checkpointing, Seed = seed };
        using var model = CausalLM.Create(spec, backend, setup, new RandomWeights(seed, 0.02f));
        var rng = new Random(seed);
        int n = batch * seqLen;
        var ids = new int[n];
        var pos = new int[n];
        var seg = new int[n];
        for (int i = 0; i < n; i++) { ids[i] = rng.Next(spec.VocabSize); pos[i] = i % seqLen; }
        var labels = new int[n];
        for (int i = 0; i < n; i++) labels[i] = (i + 1) % seqLen == 0 ? -100 : ids[i + 1];
        var tb = new TokenBatch(batch, seqLen, ids, labels, pos, seg);
        var adam = new AdamWStep(1e-4f, 0.9f, 0.999f, 1e-8f, 0f, 1, 1f / n, 1f);
        void Step(int s)
        {
            model.ZeroGrad();
            model.ForwardBackward(tb, 1f);
            var norm = model.GradNormSquared();
            foreach (var p in model.TrainableParameters) p.Step(adam with { Step = s }, norm);
            backend.Synchronize();
        }
        Step(1);
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++) Step(s + 2);
        double seconds = sw.Elapsed.TotalSeconds;
        double cpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        double flopPerToken = ModelFlopsPerToken(spec, seqLen);
        double tokensPerSecond = n * steps / seconds;
        return new TrainStepBenchmark(backend.Name, shape, batch, seqLen, loraRank, checkpointing, steps, seconds * 1000 / steps,
            tokensPerSecond, cpuSeconds / steps, spec.ParameterCount, model.TrainableParameters.Sum(p => p.Length), flopPerToken / 1e9, flopPerToken * tokensPerSecond / 1e9);
    }

    /// <summary>6·N_matmul + 6·(layers·heads·head_dim·T) — the usual estimate (attention counted causally: T/2 keys on average, ×2 for QK and PV).</summary>
    public static double ModelFlopsPerToken(TransformerSpec s, int seqLen)
    {
        double c = s.HiddenSize;
        double perLayer = c * s.QDim + 2 * c * s.KvDim + s.QDim * c + 3 * c * s.IntermediateSize;
        double matmul = s.NumLayers * perLayer + (double)s.VocabSize * c;
        double attention = (double)s.NumLayers * s.NumHeads * s.HeadDim * seqLen; // 2·(T/2)·d·2 per head
        return 6 * matmul + 6 * attention;
    }

    /// <summary>Times C = A·Bᵀ (a linear layer's forward) of the given size.</summary>
    public static MatMulBenchmark MatMul(IBackend backend, int m, int n, int k, int repeats)
    {
        var rng = new Random(1);
        float[] Random(int len) { var a = new float[len]; for (int i = 0; i < len; i++) a[i] = (float)rng.NextDouble() - 0.5f; return a; }
        var a = backend.Allocate(DType.F32, m, k);
        var b = backend.Allocate(DType.F32, n, k);
        var c = backend.Allocate(DType.F32, m, n);
        backend.Upload(a, Random(m * k));
        backend.Upload(b, Random(n * k));
        backend.MatMul(c, a, false, b, true);
        backend.Synchronize();
        var sw = Stopwatch.StartNew();
        for (int r = 0; r < repeats; r++) backend.MatMul(c, a, false, b, true);
        backend.Synchronize();
        double s = sw.Elapsed.TotalSeconds;
        a.Buffer.Dispose(); b.Buffer.Dispose(); c.Buffer.Dispose();
        return new MatMulBenchmark(backend.Name, m, n, k, repeats, s * 1000 / repeats, 2.0 * m * n * k * repeats / s / 1e9);
    }
}
