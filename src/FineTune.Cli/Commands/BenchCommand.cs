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
        var steps = new Option<int>("--steps") { Description = "Timed steps (after one warm-up step).", DefaultValueFactory = _ => 5 };
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "Recompute activations per layer in the backward." };
        var threads = new Option<int?>("--threads") { Description = "CPU threads (default: all cores)." };
        var profile = new Option<bool>("--profile") { Description = "Also print time per backend operation (synchronises after each)." };
        var matmul = new Option<int>("--matmul-size") { Description = "Square size of the matrix product benchmark (0 skips it).", DefaultValueFactory = _ => 1024 };
        var command = new Command("bench", "Measure training tokens/s of a model shape and the matrix multiply's GFLOP/s (JSON lines).")
        {
            device, shape, batch, seq, rank, steps, checkpointing, threads, matmul, profile,
        };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            using var raw = Backends.Create(r.GetValue(device)!, r.GetValue(threads), Console.Error.WriteLine);
            var cuda = raw as FineTune.Engine.Cuda.CudaBackend;
            var profiler = r.GetValue(profile) ? new ProfilingBackend(raw) : null;
            IBackend backend = profiler ?? raw;
            int size = r.GetValue(matmul);
            if (size > 0)
            {
                var mm = EngineBenchmark.MatMul(backend, size, size, size, Math.Max(3, (int)(2e10 / (2.0 * size * size * size))));
                Console.WriteLine(JsonSerializer.Serialize(new { bench = "matmul", threads = Threads(backend), mm.Device, mm.M, mm.N, mm.K, mm.Ms, mm.Gflops }, Json));
            }
            cuda?.Device.Allocator.ResetPeaks();
            var t = EngineBenchmark.TrainSteps(backend, r.GetValue(shape)!, r.GetValue(batch), r.GetValue(seq), r.GetValue(rank), r.GetValue(checkpointing), r.GetValue(steps));
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "train_step", threads = Threads(backend), t.Device, t.Shape, t.Batch, t.SeqLen, t.LoraRank, t.GradientCheckpointing, t.Steps,
                t.StepMs, t.TokensPerSecond, t.CpuSecondsPerStep, t.Parameters, t.TrainableParameters, t.ModelGflopPerToken, t.AchievedGflops,
                // GPU only: peak device memory in use (caching allocator) and MFU against the H100's 989.4 dense bf16 TFLOP/s.
                peak_device_gib = cuda is null ? (double?)null : Math.Round(cuda.Device.Allocator.Stats.PeakInUseBytes / (double)(1L << 30), 2),
                mfu = cuda is null ? (double?)null : Math.Round(t.AchievedGflops / 989_400, 3),
                gpu = cuda?.Info.Name,
            }, Json));
            if (profiler is not null)
                foreach (var (op, calls, ms) in profiler.Report())
                    Console.WriteLine(JsonSerializer.Serialize(new { bench = "op", op, calls, ms_per_step = ms / (r.GetValue(steps) + 1) }, Json));
            return 0;
        }));
        return command;
    }

    private static int? Threads(IBackend backend) => (backend is ProfilingBackend p ? p.Inner : backend) is FineTune.Engine.Cpu.CpuBackend cpu ? cpu.Threads : null;
}
