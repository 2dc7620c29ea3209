using System.Diagnostics;
using FineTune.Engine;
using FineTune.Engine.Cuda;

namespace FineTune.Models;

/// <summary>
/// Result of timing LoRA SFT steps (forward + backward + clipped AdamW) on random weights of a named shape.
/// PeakDeviceGib, SteadyStateMallocs, Gpu and ProfileMs are set on CUDA only.
/// </summary>
public sealed record TrainStepBenchmark(string Device, string Shape, int Batch, int SeqLen, int LoraRank, bool GradientCheckpointing,
    int Steps, double StepMs, double TokensPerSecond, double CpuSecondsPerStep, long Parameters, long TrainableParameters,
    double ModelGflopPerToken, double AchievedGflops, double Loss, double? PeakDeviceGib, long? SteadyStateMallocs, string? Gpu,
    IReadOnlyDictionary<string, double>? ProfileMs, int? QuantizationBit = null, CheckpointingPlan? CheckpointingPlan = null, bool Fp8 = false,
    int Fp8Linears = 0, AttentionReport? Attention = null);

/// <summary>
/// Which kernels ran attention in a CUDA benchmark (<see cref="CudaBackend.AttentionKernels"/>): the setting, the calls
/// cuDNN took over all the steps, and cuDNN's notes (its version, or why a shape took the flash kernels).
/// </summary>
public sealed record AttentionReport(string Kernels, int CudnnForwardCalls, int CudnnBackwardCalls, IReadOnlyList<string> Notes);

/// <summary>Result of timing one matrix product C[M,N] = A[M,K]·B[N,K]ᵀ.</summary>
public sealed record MatMulBenchmark(string Device, int M, int N, int K, int Repeats, double Ms, double Gflops);

/// <summary>
/// Synthetic benchmarks of the engine: shapes of real models, random weights, random tokens. The training step uses
/// the settings of the peer script (../shared/bench/hf_peft_bench.py: HF transformers + PEFT): LoRA r (α = 2r, no
/// dropout) on q,k,v,o,gate,up,down, bf16 weights with fp32 adapters on a GPU, AdamW (lr 1e-4, weight decay 0.01,
/// clipping at 1.0), mean loss over labels = input ids shifted by one; 3 warm-up steps, then the timed ones.
/// </summary>
public static class EngineBenchmark
{
    /// <summary>Dense bf16 tensor-core peak of an H100/H200 SXM (TFLOP/s), the MFU denominator on CUDA.</summary>
    public const double GpuPeakTflops = 989.4;

    /// <summary>Named shapes: the demo's scratch model, a small one, and real models' configurations.</summary>
    public static IReadOnlyDictionary<string, TransformerSpec> Shapes { get; } = new Dictionary<string, TransformerSpec>
    {
        ["tiny"] = new() { Architecture = "qwen3", VocabSize = 512, HiddenSize = 64, IntermediateSize = 128, NumLayers = 2, NumHeads = 4,
            NumKvHeads = 2, HeadDimOverride = 16, TieWordEmbeddings = true, RopeTheta = 1e6, MaxPositionEmbeddings = 32768, QkNorm = true },
        // The tiny shape as a mixture of 4 experts of 64, top 2 (CPU tests of the MoE bench path).
        ["tiny-moe"] = new() { Architecture = "qwen3_moe", VocabSize = 512, HiddenSize = 64, IntermediateSize = 128, NumLayers = 2, NumHeads = 4,
            NumKvHeads = 2, HeadDimOverride = 16, TieWordEmbeddings = true, RopeTheta = 1e6, MaxPositionEmbeddings = 32768, QkNorm = true,
            Moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 64, NormTopKProb = true } },
        ["small"] = new() { Architecture = "qwen3", VocabSize = 32000, HiddenSize = 256, IntermediateSize = 768, NumLayers = 4, NumHeads = 8,
            NumKvHeads = 4, HeadDimOverride = 32, TieWordEmbeddings = true, RopeTheta = 1e6, MaxPositionEmbeddings = 32768, QkNorm = true },
        ["qwen3-0.6b"] = new() { Architecture = "qwen3", VocabSize = 151936, HiddenSize = 1024, IntermediateSize = 3072, NumLayers = 28,
            NumHeads = 16, NumKvHeads = 8, HeadDimOverride = 128, TieWordEmbeddings = true, RopeTheta = 1e6, RmsNormEps = 1e-6,
            MaxPositionEmbeddings = 40960, QkNorm = true },
        ["qwen2.5-0.5b"] = new() { Architecture = "qwen2", VocabSize = 151936, HiddenSize = 896, IntermediateSize = 4864, NumLayers = 24,
            NumHeads = 14, NumKvHeads = 2, TieWordEmbeddings = true, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true },
        ["qwen2.5-7b"] = new() { Architecture = "qwen2", VocabSize = 152064, HiddenSize = 3584, IntermediateSize = 18944, NumLayers = 28,
            NumHeads = 28, NumKvHeads = 4, TieWordEmbeddings = false, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true },
        ["llama3-8b"] = new() { Architecture = "llama", VocabSize = 128256, HiddenSize = 4096, IntermediateSize = 14336, NumLayers = 32,
            NumHeads = 32, NumKvHeads = 8, TieWordEmbeddings = false, RopeTheta = 5e5, RmsNormEps = 1e-5, MaxPositionEmbeddings = 8192 },
        // Phi-4 (Phi3ForCausalLM): fused qkv_proj / gate_up_proj, the peer script's phi4 row (issue 12).
        ["phi4"] = new() { Architecture = "phi3", VocabSize = 100352, HiddenSize = 5120, IntermediateSize = 17920, NumLayers = 40,
            NumHeads = 40, NumKvHeads = 10, TieWordEmbeddings = false, RopeTheta = 250000, RmsNormEps = 1e-5, MaxPositionEmbeddings = 16384 },
        // Gemma 3 12B (Gemma3ForCausalLM) as the peer script's gemma3_12b: window 1024 on five local layers of six, local
        // rope 10000, tied embeddings, Gemma3TextConfig's other defaults (no soft-caps).
        ["gemma3-12b"] = new() { Architecture = "gemma3_text", VocabSize = 262208, HiddenSize = 3840, IntermediateSize = 15360, NumLayers = 48,
            NumHeads = 16, NumKvHeads = 8, HeadDimOverride = 256, TieWordEmbeddings = true, RopeTheta = 1e6, RmsNormEps = 1e-6,
            MaxPositionEmbeddings = 131072, QkNorm = true, QueryPreAttnScalar = 256, SlidingWindow = 1024,
            SlidingLayers = Enumerable.Range(0, 48).Select(i => (i + 1) % 6 != 0).ToArray(), LocalRopeTheta = 10000 },
        // Qwen3-30B-A3B (Qwen3MoeForCausalLM): 128 experts of 768, top 8, renormalised; the peer script's qwen3_moe row,
        // whose LoRA is on q, k, v, o only (issue 12).
        ["qwen3-30b-a3b"] = new() { Architecture = "qwen3_moe", VocabSize = 151936, HiddenSize = 2048, IntermediateSize = 6144, NumLayers = 48,
            NumHeads = 32, NumKvHeads = 4, HeadDimOverride = 128, TieWordEmbeddings = false, RopeTheta = 1e6, RmsNormEps = 1e-6,
            MaxPositionEmbeddings = 40960, QkNorm = true,
            Moe = new MoeConfig { NumExperts = 128, NumExpertsPerTok = 8, ExpertIntermediateSize = 768, NormTopKProb = true } },
        // The QLoRA proof's big shapes (issue 16): they fit one H200 with a 4-bit base.
        ["qwen2.5-32b"] = new() { Architecture = "qwen2", VocabSize = 152064, HiddenSize = 5120, IntermediateSize = 27648, NumLayers = 64,
            NumHeads = 40, NumKvHeads = 8, TieWordEmbeddings = false, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true },
        ["qwen2.5-72b"] = new() { Architecture = "qwen2", VocabSize = 152064, HiddenSize = 8192, IntermediateSize = 29568, NumLayers = 80,
            NumHeads = 64, NumKvHeads = 8, TieWordEmbeddings = false, RopeTheta = 1e6, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32768, QkvBias = true },
    };

    public static TransformerSpec ShapeOf(string name) => Shapes.TryGetValue(name, out var s) ? s
        : throw new ArgumentException($"unknown shape '{name}'; choose one of {string.Join(", ", Shapes.Keys)}");

    /// <summary>
    /// Times <paramref name="steps"/> LoRA steps after <paramref name="warmup"/> untimed ones. With
    /// <paramref name="profile"/> on CUDA, one more step is run with device-event timing per operation.
    /// </summary>
    /// <param name="objective">"sft" (the default): next-token loss on <paramref name="batch"/> rows of <paramref name="seqLen"/>.
    /// "dpo": <paramref name="batch"/> preference pairs, each a chosen and a rejected sequence of <paramref name="seqLen"/>
    /// tokens (the first half prompt, the second half the answer) packed in one row, as the trainer feeds them; a step is
    /// the reference model's scores (adapter disabled) then the policy's forward and backward and the DPO sigmoid loss
    /// (β 0.1) — the work of a TRL DPO step, whose reference forward FineTune's trainer does once before training instead.</param>
    public static TrainStepBenchmark TrainSteps(IBackend backend, string shape, int batch, int seqLen, int loraRank, bool checkpointing,
        int steps, int warmup = 3, bool profile = false, int seed = 0, string objective = "sft", int? quantizationBit = null, bool fp8 = false) =>
        TrainSteps(backend, shape, batch, seqLen, loraRank, checkpointing ? CheckpointingMode.On : CheckpointingMode.Off, steps, warmup, profile,
            seed, objective, quantizationBit, fp8: fp8);

    /// <summary>As the overload above, with gradient checkpointing off, on or auto (within <paramref name="maxMemoryBytes"/> when given).</summary>
    public static TrainStepBenchmark TrainSteps(IBackend backend, string shape, int batch, int seqLen, int loraRank, CheckpointingMode checkpointing,
        int steps, int warmup = 3, bool profile = false, int seed = 0, string objective = "sft", int? quantizationBit = null, long? maxMemoryBytes = null,
        bool fp8 = false, Fp8Scaling fp8Scaling = Fp8Scaling.Current)
    {
        if (objective is not ("sft" or "dpo")) throw new ArgumentException($"objective must be sft or dpo (got {objective})");
        bool dpo = objective == "dpo";
        var spec = ShapeOf(shape);
        if (steps < 1) throw new ArgumentException($"steps must be at least 1 (got {steps})");
        if (seqLen < 2 || batch < 1) throw new ArgumentException($"batch must be at least 1 and seq at least 2 (got {batch}×{seqLen})");
        var cuda = (backend is ProfilingBackend pb ? pb.Inner : backend) as CudaBackend;
        if (cuda is not null)
        {
            cuda.Synchronize();
            cuda.Device.Allocator.EmptyCache();
            cuda.Device.Allocator.ResetPeaks();
        }
        if (quantizationBit is not (null or 4 or 8)) throw new ArgumentException($"quantization bit must be 4 or 8 (got {quantizationBit})");
        // QLoRA as LLaMA-Factory's quantization_bit: NF4 with double quantization (or LLM.int8) for the frozen linears.
        var setup = new TrainingSetup { LoraRank = loraRank, LoraAlpha = 2 * loraRank, LoraDropout = 0, Checkpointing = checkpointing,
            MaxMemoryBytes = maxMemoryBytes, Seed = seed,
            // The peer's MoE rows put LoRA on the attention projections only.
            LoraTarget = spec.Moe is null ? ["all"] : ["q_proj", "k_proj", "v_proj", "o_proj"],
            Quantization = quantizationBit is { } bits ? new Quantization.QuantizationSetup(bits) : null,
            // fp8: the frozen linears in FP8 E4M3, their products on the FP8 tensor cores (emulated on the CPU).
            Fp8 = fp8, Fp8Scaling = fp8Scaling };
        using var model = CausalLM.Create(spec, backend, setup, new UniformRandomWeights((ulong)seed));
        var rng = new Random(seed);
        int rowLen = dpo ? 2 * seqLen : seqLen;
        int n = batch * rowLen;
        var ids = new int[n];
        var pos = new int[n];
        var seg = new int[n];
        for (int i = 0; i < n; i++) { ids[i] = rng.Next(spec.VocabSize); pos[i] = i % seqLen; seg[i] = i % rowLen / seqLen; }
        var labels = new int[n];
        // sft: every next token; dpo: the answer half of each sequence (labels[t] = the token position t predicts).
        for (int i = 0; i < n; i++)
            labels[i] = pos[i] == seqLen - 1 || (dpo && pos[i] < seqLen / 2 - 1) ? -100 : ids[i + 1];
        var tb = new TokenBatch(batch, rowLen, ids, labels, pos, seg);
        var adam = new AdamWStep(1e-4f, 0.9f, 0.999f, 1e-8f, 0.01f, 0, MaxGradNorm: 1f);
        int stepNo = 0;
        double Step()
        {
            model.ZeroGrad();
            double loss = dpo ? DpoStep(model, tb) : model.ForwardBackward(tb, 1f / tb.LabelCount).MeanLoss;
            var norm = model.GradNormSquared();
            stepNo++;
            model.OptimizerStep(p => adam with { Step = stepNo, WeightDecay = p.WeightDecay ? 0.01f : 0f }, norm);
            return loss;
        }
        for (int i = 0; i < warmup; i++) Step();
        backend.Synchronize();
        long mallocs = cuda?.Device.Allocator.Stats.RawAllocations ?? 0;
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        double lastLoss = 0;
        for (int s = 0; s < steps; s++) lastLoss = Step();
        backend.Synchronize();
        double seconds = sw.Elapsed.TotalSeconds;
        double cpuSeconds = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
        Dictionary<string, double>? prof = null;
        if (profile && cuda is not null)
        {
            cuda.Device.BeginProfile();
            Step();
            prof = cuda.Device.EndProfile().OrderByDescending(kv => kv.Value).ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 2));
        }
        double flopPerToken = ModelFlopsPerToken(spec, seqLen);
        double tokensPerSecond = n * steps / seconds;
        var stats = cuda?.Device.Allocator.Stats;
        return new TrainStepBenchmark(backend.Name, shape, batch, seqLen, loraRank, checkpointing != CheckpointingMode.Off, steps, seconds * 1000 / steps,
            tokensPerSecond, cpuSeconds / steps, spec.ParameterCount, model.TrainableParameters.Sum(p => p.Length), flopPerToken / 1e9,
            flopPerToken * tokensPerSecond / 1e9, lastLoss,
            stats is null ? null : Math.Round(stats.PeakInUseBytes / (double)(1L << 30), 2),
            stats is null ? null : stats.RawAllocations - mallocs, cuda?.Info.Name, prof, quantizationBit, model.CheckpointingPlan, fp8, model.Fp8Linears,
            cuda is null ? null : new AttentionReport(AttentionKernelsSetting.Name(cuda.AttentionKernels), cuda.CudnnCalls.Forward, cuda.CudnnCalls.Backward, [.. cuda.CudnnNotes]));
    }

    /// <summary>One DPO sigmoid step on pairs packed as (chosen, rejected) segments of each row; returns the mean loss.</summary>
    static double DpoStep(CausalLM model, TokenBatch tb)
    {
        const double beta = 0.1;
        var reference = model.ScoreSequences(tb, forBackward: false, adapters: false);
        var policy = model.ScoreSequences(tb, forBackward: true);
        int k = policy.SegmentsPerRow;
        var d = new double[policy.SumLogProb.Length];
        double loss = 0;
        for (int r = 0; r < tb.BatchSize; r++)
        {
            double z = beta * (policy.SumLogProb[r * k] - policy.SumLogProb[r * k + 1] - reference.SumLogProb[r * k] + reference.SumLogProb[r * k + 1]);
            // −log σ(z) and its derivative −σ(−z), per pair, averaged over the pairs.
            loss += (Math.Max(-z, 0) + Math.Log(1 + Math.Exp(-Math.Abs(z)))) / tb.BatchSize;
            double g = -beta / (1 + Math.Exp(z)) / tb.BatchSize;
            d[r * k] = g;
            d[r * k + 1] = -g;
        }
        model.BackwardSequences(d);
        return loss;
    }

    /// <summary>
    /// Model FLOPs per trained token of a LoRA step (the MFU convention, recomputation not counted): the frozen linears
    /// and the LM head cost 2N forward and 2N for the input gradient (no weight gradient), attention 2·T·d per layer
    /// and head forward (4·T·d causally halved) and twice that backward. qwen2.5-7b at T=2048: 29.5 GFLOP.
    /// </summary>
    public static double ModelFlopsPerToken(TransformerSpec s, int seqLen)
    {
        double c = s.HiddenSize;
        double linear = s.NumLayers * (2 * c * s.QDim + 2 * c * s.KvDim);
        // A sparse layer's MLP: the router (E outputs) and the k chosen experts per token.
        for (int l = 0; l < s.NumLayers; l++)
            linear += s.IsSparseLayer(l) ? c * s.Moe!.NumExperts + 3.0 * c * s.Moe.ExpertIntermediateSize * s.Moe.NumExpertsPerTok : 3 * c * s.IntermediateSize;
        double head = (double)s.VocabSize * c;
        double attention = 2.0 * seqLen * s.HeadDim * s.NumHeads * s.NumLayers;
        return 4 * linear + 4 * head + 3 * attention;
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
