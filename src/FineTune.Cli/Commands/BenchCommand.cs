using System.CommandLine;
using System.Text.Json;
using FineTune.Engine;
using FineTune.Models;

namespace FineTune.Cli.Commands;

/// <summary>`finetune bench`: synthetic LoRA training steps and matrix products on a device; one JSON line per result.</summary>
public sealed class BenchCommand : ICliCommand
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public Command Create()
    {
        var device = new Option<string>("--device") { Description = "cpu, auto, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };
        var shape = new Option<string>("--shape") { Description = $"Model shape: {string.Join(", ", EngineBenchmark.Shapes.Keys)}.", DefaultValueFactory = _ => "tiny" };
        var batch = new Option<int>("--batch") { Description = "Micro-batch size.", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq") { Description = "Sequence length.", DefaultValueFactory = _ => 256 };
        var rank = new Option<int>("--lora-rank") { Description = "LoRA rank on all seven projections.", DefaultValueFactory = _ => 8 };
        var steps = new Option<int>("--steps") { Description = "Timed steps.", DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps before them.", DefaultValueFactory = _ => 3 };
        var checkpointing = new Option<string>("--gradient-checkpointing")
        {
            Description = "Recompute activations per layer in the backward: alone or true (every layer), auto (keep what fits --max-memory or the free device memory less a margin; the plan is in the JSON), false.",
            Arity = ArgumentArity.ZeroOrOne,
        };
        var maxMemory = new Option<string?>("--max-memory") { Description = "With --gradient-checkpointing auto: the memory budget, e.g. 40GiB (default: the free device memory less a margin; on the CPU every layer is kept)." };
        var threads = new Option<int?>("--threads") { Description = "CPU threads (default: all cores)." };
        var profile = new Option<bool>("--profile") { Description = "Also print time per operation: on CUDA device time per kernel (one more step, timed with events); on the CPU wall time per backend call. With --generate: per batch, the decode step's host phases, one decode graph's device time and kernel times of an eager run." };
        var matmul = new Option<int>("--matmul-size") { Description = "Square size of the matrix product benchmark (0 skips it).", DefaultValueFactory = _ => 1024 };
        var objective = new Option<string>("--objective") { Description = "sft (next-token loss) or dpo: --batch pairs of a chosen and a rejected sequence of --seq tokens each (prompt half, answer half), with the reference model's forward (adapter disabled) in every step as TRL does.", DefaultValueFactory = _ => "sft" };
        var quantizationBit = new Option<int?>("--quantization-bit") { Description = "QLoRA: hold the frozen linears as NF4 with double quantization (4) or LLM.int8 (8), as quantization_bit." };
        var fp8 = new Option<bool>("--fp8") { Description = "Hold the frozen linears as FP8 E4M3 and run their products on the FP8 tensor cores, as fp8: true (CUDA on an sm_90 GPU)." };
        var fp8Scaling = new Option<string>("--fp8-scaling") { Description = "With --fp8: current (each tensor by its own amax) or delayed (each cast site by its amax history of 1024 passes, one pass over the tensor), as fp8_scaling.", DefaultValueFactory = _ => "current" };
        var generate = new Option<bool>("--generate") { Description = "Benchmark generation instead: prompts/s, tokens/s, time to first token and single-stream decode speed of --model at each of --batches." };
        var model = new Option<string?>("--model") { Description = "--generate: the HF model directory to decode with." };
        var batches = new Option<string>("--batches") { Description = "--generate: comma-separated batch sizes (sequences decoded at once).", DefaultValueFactory = _ => "1,8,64,256" };
        var prompts = new Option<int?>("--prompts") { Description = "--generate: prompts per row (default: 64, or the batch when larger)." };
        var promptLen = new Option<int>("--prompt-len") { Description = "--generate: tokens per prompt.", DefaultValueFactory = _ => 64 };
        var noGraphs = new Option<bool>("--no-cuda-graphs") { Description = "--generate: run decode steps eagerly instead of replaying CUDA graphs." };
        var newTokens = new Option<int>("--new-tokens") { Description = "--generate: tokens generated per prompt (no EOS).", DefaultValueFactory = _ => 32 };
        var command = new Command("bench", "Measure training tokens/s of a model shape and the matrix multiply's GFLOP/s, or generation with --generate (JSON lines).")
        {
            device, shape, batch, seq, rank, steps, warmup, checkpointing, maxMemory, threads, matmul, profile, objective, quantizationBit, fp8, fp8Scaling, generate, model, batches, prompts, promptLen, newTokens, noGraphs,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            if (r.GetValue(generate))
                return Generate(r.GetValue(device)!, r.GetValue(threads), r.GetValue(model), r.GetValue(batches)!, r.GetValue(prompts), r.GetValue(promptLen), r.GetValue(newTokens), !r.GetValue(noGraphs), r.GetValue(profile));
            using var raw = Backends.Create(r.GetValue(device)!, r.GetValue(threads), Console.Error.WriteLine);
            var cuda = raw as FineTune.Engine.Cuda.CudaBackend;
            var profiler = r.GetValue(profile) && cuda is null ? new ProfilingBackend(raw) : null;
            IBackend backend = profiler ?? raw;
            if (r.GetValue(fp8) && raw.Fp8Refusal is { } why)
                throw new FineTune.Pipeline.PipelineUserException($"--fp8: {why}.");
            if (r.GetValue(fp8) && r.GetValue(quantizationBit) is not null)
                throw new FineTune.Pipeline.PipelineUserException("--fp8 and --quantization-bit both choose how the frozen base is held: use one of them.");
            var scaling = r.GetValue(fp8Scaling) switch
            {
                "current" => Fp8Scaling.Current,
                "delayed" => Fp8Scaling.Delayed,
                var other => throw new FineTune.Pipeline.PipelineUserException($"--fp8-scaling {other}: expected current or delayed."),
            };
            if (scaling == Fp8Scaling.Delayed && !r.GetValue(fp8))
                throw new FineTune.Pipeline.PipelineUserException("--fp8-scaling delayed scales FP8 casts: add --fp8.");
            int size = r.GetValue(matmul);
            if (size > 0)
            {
                var mm = EngineBenchmark.MatMul(backend, size, size, size, Math.Max(3, (int)(2e10 / (2.0 * size * size * size))));
                Console.WriteLine(JsonSerializer.Serialize(new { bench = "matmul", threads = Threads(backend), mm.Device, mm.M, mm.N, mm.K, mm.Ms, mm.Gflops }, Json));
            }
            int timed = r.GetValue(steps), warm = r.GetValue(warmup);
            // The flag alone is true (as it was when it took no value).
            var mode = (r.GetResult(checkpointing) is not { } given ? "false" : given.Tokens.Count == 0 ? "true" : given.Tokens[0].Value) switch
            {
                "true" => CheckpointingMode.On,
                "false" => CheckpointingMode.Off,
                "auto" => CheckpointingMode.Auto,
                var other => throw new FineTune.Pipeline.PipelineUserException($"--gradient-checkpointing {other}: expected true, false or auto."),
            };
            long? budget = r.GetValue(maxMemory) is { } text
                ? CheckpointingPlanner.ParseBytes(text) ?? throw new FineTune.Pipeline.PipelineUserException($"--max-memory {text}: expected a size such as 40GiB, 80GB or 1.5TiB.")
                : null;
            var t = EngineBenchmark.TrainSteps(backend, r.GetValue(shape)!, r.GetValue(batch), r.GetValue(seq), r.GetValue(rank),
                mode, timed, warm, profile: r.GetValue(profile), objective: r.GetValue(objective)!, quantizationBit: r.GetValue(quantizationBit), maxMemoryBytes: budget, fp8: r.GetValue(fp8), fp8Scaling: scaling);
            var plan = t.CheckpointingPlan;
            // The keys tests/device/bench_table.py joins with the peer's (shape, batch, seq, grad_ckpt, tokens_per_s, peak_gib).
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "train_step", engine = "finetune", objective = r.GetValue(objective), threads = Threads(backend), t.Device, t.Shape, t.Batch, seq = t.SeqLen,
                lora_rank = t.LoraRank, grad_ckpt = t.GradientCheckpointing, grad_ckpt_mode = mode.ToString().ToLowerInvariant(),
                // What each layer kept (auto's choice; off and on too) and the estimate behind it.
                checkpointing_plan = plan is null ? null : new
                {
                    kept_layers = plan.KeptLayers, full_layers = plan.FullLayers, selective_layers = plan.SelectiveLayers,
                    recomputed_layers = plan.RecomputedLayers, layers = plan.Layers.Count,
                    est_peak_gib = Math.Round(plan.EstimatedPeakBytes / (double)(1L << 30), 2),
                    budget_gib = plan.BudgetBytes is { } b ? Math.Round(b / (double)(1L << 30), 2) : (double?)null,
                    summary = plan.Summary,
                },
                quantization_bit = t.QuantizationBit, fp8 = t.Fp8, fp8_linears = t.Fp8 ? t.Fp8Linears : (int?)null,
                fp8_fast_accum = t.Fp8 && cuda is not null ? cuda.Fp8FastAccumulation : (bool?)null,
                fp8_scaling = t.Fp8 ? scaling.ToString().ToLowerInvariant() : null, t.Steps, step_s = Math.Round(t.StepMs / 1000, 4),
                tokens_per_s = Math.Round(t.TokensPerSecond), cpu_seconds_per_step = Math.Round(t.CpuSecondsPerStep, 3), t.Parameters,
                t.TrainableParameters, model_gflop_per_token = Math.Round(t.ModelGflopPerToken, 4), achieved_gflops = Math.Round(t.AchievedGflops, 1),
                loss = Math.Round(t.Loss, 4), peak_gib = t.PeakDeviceGib,
                // MFU against the dense bf16 peak of an H100/H200 (GPU only).
                mfu = cuda is null ? (double?)null : Math.Round(t.AchievedGflops / 1000 / EngineBenchmark.GpuPeakTflops, 3),
                steady_state_mallocs = t.SteadyStateMallocs, gpu = t.Gpu,
                attention = t.Attention is { } a ? new { kernels = a.Kernels, cudnn_forward_calls = a.CudnnForwardCalls, cudnn_backward_calls = a.CudnnBackwardCalls, notes = a.Notes } : null,
                profile_ms = t.ProfileMs,
            }, Json));
            if (profiler is not null)
                foreach (var (op, calls, ms) in profiler.Report())
                    Console.WriteLine(JsonSerializer.Serialize(new { bench = "op", op, calls, ms_per_step = ms / (timed + warm) }, Json));
            return 0;
        }));
        return command;
    }

    /// <summary>H200 HBM3e bandwidth: single-stream decode reads every weight once per token, so bytes ÷ this bounds tokens/s.</summary>
    private const double BandwidthBytesPerSecond = 4.8e12;

    private static int Generate(string device, int? threads, string? modelDir, string batchList, int? prompts, int promptLen, int newTokens, bool cudaGraphs, bool profile)
    {
        if (modelDir is null || !File.Exists(Path.Combine(modelDir, "config.json")))
            throw new FineTune.Pipeline.PipelineUserException($"bench --generate needs --model DIR with a config.json (got {modelDir ?? "none"}).");
        var sizes = batchList.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(x => int.TryParse(x, out int b) && b > 0 ? b : throw new FineTune.Pipeline.PipelineUserException($"--batches {batchList}: '{x}' is not a positive integer.")).ToList();
        using var backend = Backends.Create(device, threads, Console.Error.WriteLine);
        using var lm = CausalLM.Load(modelDir, backend, TrainingSetup.Inference);
        FineTune.Models.Generation.GenerationBenchmark.Run(lm, 2, 2, Math.Min(promptLen, 8), 2, cudaGraphs); // warm-up: kernels compiled, products planned
        double limit = BandwidthBytesPerSecond / lm.WeightBytes;
        foreach (int b in sizes)
        {
            var g = FineTune.Models.Generation.GenerationBenchmark.Run(lm, b, prompts ?? Math.Max(64, b), promptLen, newTokens, cudaGraphs);
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "generate", engine = "finetune", g.Device, g.Batch, g.Prompts, prompt_len = g.PromptLength, new_tokens = g.NewTokens,
                seconds = Math.Round(g.Seconds, 4), prompts_per_s = Math.Round(g.PromptsPerSecond, 2), tokens_per_s = Math.Round(g.TokensPerSecond, 1),
                cuda_graphs = g.CudaGraphs, ttft_ms = Math.Round(g.TimeToFirstTokenMs, 2), decode_tokens_per_s_per_seq = Math.Round(g.DecodeTokensPerSecondPerSequence, 1),
                weight_bytes = lm.WeightBytes, bandwidth_limit_tokens_per_s = Math.Round(limit, 1),
                bandwidth_fraction = b == 1 ? Math.Round(g.DecodeTokensPerSecondPerSequence / limit, 3) : (double?)null,
            }, Json));
            if (!profile) continue;
            var p = FineTune.Models.Generation.GenerationBenchmark.Profile(lm, b, promptLen, newTokens);
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "generate_profile", p.Batch, schedule_ms = Math.Round(p.ScheduleMs, 4), launch_ms = Math.Round(p.LaunchMs, 4),
                pick_ms = Math.Round(p.PickMs, 4), graph_replay_ms = p.GraphReplayMs is { } r ? Math.Round(r, 4) : (double?)null,
                graph_replay_bandwidth_fraction = p.GraphReplayMs is { } rr && b == 1 ? Math.Round(1000 / rr / limit, 3) : (double?)null,
                eager_kernel_ms = Math.Round(p.KernelMs.Values.Sum(), 4),
                kernels = p.KernelMs.OrderByDescending(kv => kv.Value).ToDictionary(kv => kv.Key, kv => Math.Round(kv.Value, 4)),
            }, Json));
        }
        return 0;
    }

    private static int? Threads(IBackend backend) => (backend is ProfilingBackend p ? p.Inner : backend) is FineTune.Engine.Cpu.CpuBackend cpu ? cpu.Threads : null;
}
