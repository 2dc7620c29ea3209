using System.Diagnostics;
using System.Text.Json;
using FineTune.Engine;
using FineTune.Engine.Cuda;
using FineTune.Models;

namespace FineTune.DeviceChecks;

/// <summary>
/// Synthetic LoRA SFT steps on random weights of real shapes, the settings of ../shared/bench/hf_peft_bench.py:
/// LoRA r=8, alpha=16, dropout 0 on q,k,v,o,gate,up,down; bf16 weights, fp32 adapters; AdamW (lr 1e-4,
/// weight decay 0.01) with clipping at 1.0; labels = input ids shifted by one. Prints one JSON line per row.
/// </summary>
public static class Bench
{
    public static TransformerSpec Shape(string name) => name switch
    {
        "qwen3-0.6b" => new TransformerSpec
        {
            Architecture = "qwen3", HiddenSize = 1024, IntermediateSize = 3072, NumLayers = 28, NumHeads = 16, NumKvHeads = 8,
            HeadDimOverride = 128, VocabSize = 151936, TieWordEmbeddings = true, RopeTheta = 1e6, RmsNormEps = 1e-6,
            MaxPositionEmbeddings = 40960, QkNorm = true,
        },
        "qwen2.5-0.5b" => new TransformerSpec
        {
            Architecture = "qwen2", HiddenSize = 896, IntermediateSize = 4864, NumLayers = 24, NumHeads = 14, NumKvHeads = 2,
            VocabSize = 151936, TieWordEmbeddings = true, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true,
        },
        "qwen2.5-7b" => new TransformerSpec
        {
            Architecture = "qwen2", HiddenSize = 3584, IntermediateSize = 18944, NumLayers = 28, NumHeads = 28, NumKvHeads = 4,
            VocabSize = 152064, TieWordEmbeddings = false, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true,
        },
        "llama3-8b" => new TransformerSpec
        {
            Architecture = "llama", HiddenSize = 4096, IntermediateSize = 14336, NumLayers = 32, NumHeads = 32, NumKvHeads = 8,
            VocabSize = 128256, TieWordEmbeddings = false, RopeTheta = 5e5, RmsNormEps = 1e-5, MaxPositionEmbeddings = 8192,
        },
        _ => throw new ArgumentException($"unknown bench shape '{name}': use qwen3-0.6b, qwen2.5-0.5b, qwen2.5-7b or llama3-8b"),
    };

    /// <summary>
    /// Model FLOPs per trained token of a LoRA step (the MFU convention: recomputation not counted):
    /// frozen linears forward 2N + input-gradient 2N, LM head the same, attention forward 2·S·D·H per layer
    /// (causal half of 4·S·D·H) and backward twice that.
    /// </summary>
    public static double FlopsPerToken(TransformerSpec s, int seq)
    {
        double c = s.HiddenSize;
        double linear = s.NumLayers * (c * s.QDim * 2 + c * s.KvDim * 2 + 3.0 * c * s.IntermediateSize);
        double head = (double)s.VocabSize * c;
        double attention = 2.0 * seq * s.HeadDim * s.NumHeads * s.NumLayers;
        return 4 * linear + 4 * head + 3 * attention;
    }

    /// <summary>Uniform random weights with the std of normal(0, 0.02), norm weights 1, filled on all cores.</summary>
    sealed class FastRandomWeights(ulong seed) : IWeightSource
    {
        public bool Contains(string name) => true;

        public unsafe void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) { destination.Fill(1f); return; }
            ulong s = Seeds.Mix(seed, Seeds.Hash(name));
            const float Amp = 0.02f * 1.7320508f; // uniform(−a, a) has std a/√3
            int n = destination.Length;
            fixed (float* p = destination)
            {
                float* d = p;
                Parallel.For(0, (n + 65535) / 65536, c =>
                {
                    int end = Math.Min(n, (c + 1) * 65536);
                    for (int i = c * 65536; i < end; i++)
                        d[i] = Amp * (float)((long)(Seeds.Mix(s, (ulong)i) >> 11) * (2.0 / (1UL << 53)) - 1.0);
                });
            }
        }
    }

    public sealed record Result(string Engine, string Shape, int Batch, int Seq, bool GradCkpt, double StepS, long TokensPerS, double PeakGib,
        double ReservedGib, double Loss, double Mfu, double TflopsPerS, long SteadyStateMallocs, string Gpu, IReadOnlyDictionary<string, double>? ProfileMs);

    public static Result Run(CudaBackend gpu, string shape, int batch, int seq, bool ckpt, int warm = 3, int steps = 10, bool profile = false)
    {
        var spec = Shape(shape);
        gpu.Synchronize();
        gpu.Device.Allocator.EmptyCache();
        gpu.Device.Allocator.ResetPeaks();
        var setup = new TrainingSetup { LoraRank = 8, LoraAlpha = 16, LoraDropout = 0, GradientCheckpointing = ckpt };
        using var model = CausalLM.Create(spec, gpu, setup, new FastRandomWeights(0));
        var rng = new Random(0);
        int n = batch * seq;
        var ids = new int[n]; var labels = new int[n]; var pos = new int[n]; var seg = new int[n];
        for (int i = 0; i < n; i++) ids[i] = rng.Next(spec.VocabSize);
        for (int i = 0; i < n; i++)
        {
            pos[i] = i % seq;
            labels[i] = pos[i] == seq - 1 ? -100 : ids[i + 1];
        }
        var tb = new TokenBatch(batch, seq, ids, labels, pos, seg);
        var adam = new AdamWStep(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 0, MaxGradNorm: 1f);
        int stepNo = 0;
        double Step()
        {
            model.ZeroGrad();
            var loss = model.ForwardBackward(tb, 1f / tb.LabelCount);
            var norm = model.GradNormSquared();
            stepNo++;
            foreach (var p in model.TrainableParameters) p.Step(adam with { Step = stepNo, WeightDecay = p.WeightDecay ? 0.01f : 0f }, norm);
            return loss.MeanLoss;
        }
        for (int i = 0; i < warm; i++) Step();
        gpu.Synchronize();
        long mallocs = gpu.Device.Allocator.Stats.RawAllocations;
        var sw = Stopwatch.StartNew();
        double lastLoss = 0;
        for (int i = 0; i < steps; i++) lastLoss = Step();
        gpu.Synchronize();
        double stepS = sw.Elapsed.TotalSeconds / steps;
        mallocs = gpu.Device.Allocator.Stats.RawAllocations - mallocs;
        Dictionary<string, double>? prof = null;
        if (profile)
        {
            gpu.Device.BeginProfile();
            Step();
            prof = gpu.Device.EndProfile().OrderByDescending(kv => kv.Value).ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 2));
        }
        var stats = gpu.Device.Allocator.Stats;
        double tps = n / stepS;
        double flops = FlopsPerToken(spec, seq) * tps;
        const double PeakBf16 = 989.4e12; // H100 SXM dense bf16
        return new Result("finetune-cuda", shape, batch, seq, ckpt, Math.Round(stepS, 4), (long)tps,
            Math.Round(stats.PeakInUseBytes / (double)(1L << 30), 2), Math.Round(stats.PeakReservedBytes / (double)(1L << 30), 2),
            Math.Round(lastLoss, 4), Math.Round(flops / PeakBf16, 3), Math.Round(flops / 1e12, 1), mallocs, gpu.Info.Name, prof);
    }

    public static int RunAll(string[] specs, bool profile)
    {
        using var gpu = new CudaBackend(0);
        foreach (var spec in specs)
        {
            var parts = spec.Split(':');
            var (name, b, s, c) = (parts[0], int.Parse(parts[1]), int.Parse(parts[2]), parts.Length > 3 && parts[3] == "1");
            try
            {
                var r = Run(gpu, name, b, s, c, profile: profile);
                Console.WriteLine(JsonSerializer.Serialize(r, JsonOptions));
            }
            catch (CudaOutOfMemoryException e)
            {
                Console.WriteLine(JsonSerializer.Serialize(new { engine = "finetune-cuda", shape = name, batch = b, seq = s, grad_ckpt = c, oom = true, message = e.Message }));
            }
        }
        return 0;
    }

    static readonly JsonSerializerOptions JsonOptions = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
}
