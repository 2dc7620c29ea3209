using System.Text.Json;
using FineTune.Engine.Cuda;
using FineTune.Models;

namespace FineTune.DeviceChecks;

/// <summary>
/// `bench [--profile] shape:batch:seq:ckpt …`: the engine's benchmark (<see cref="EngineBenchmark.TrainSteps"/>, the
/// peer script's settings) for several rows in one process, one JSON line each — the same numbers `finetune bench`
/// prints, for runs where only this binary was carried.
/// </summary>
public static class Bench
{
    public static int RunAll(string[] specs, bool profile)
    {
        using var gpu = new CudaBackend(0);
        foreach (var spec in specs)
        {
            var parts = spec.Split(':');
            var (name, b, s, c) = (parts[0], int.Parse(parts[1]), int.Parse(parts[2]), parts.Length > 3 && parts[3] == "1");
            try
            {
                var t = EngineBenchmark.TrainSteps(gpu, name, b, s, 8, c, steps: 10, warmup: 3, profile: profile);
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    engine = "finetune-cuda", shape = name, batch = b, seq = s, grad_ckpt = c, step_s = Math.Round(t.StepMs / 1000, 4),
                    tokens_per_s = Math.Round(t.TokensPerSecond), peak_gib = t.PeakDeviceGib, loss = Math.Round(t.Loss, 4),
                    mfu = Math.Round(t.AchievedGflops / 1000 / EngineBenchmark.GpuPeakTflops, 3), steady_state_mallocs = t.SteadyStateMallocs,
                    gpu = t.Gpu, attention = t.Attention, profile_ms = t.ProfileMs,
                }));
            }
            catch (CudaOutOfMemoryException e)
            {
                Console.WriteLine(JsonSerializer.Serialize(new { engine = "finetune-cuda", shape = name, batch = b, seq = s, grad_ckpt = c, oom = true, message = e.Message }));
            }
        }
        return 0;
    }
}
