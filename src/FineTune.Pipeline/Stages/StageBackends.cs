using FineTune.Engine;
using FineTune.Engine.Cpu;

namespace FineTune.Pipeline;

/// <summary>Picks the compute backend a stage runs on from its <c>device:</c> value (auto, cpu, cuda, cuda:N).</summary>
public static class StageBackends
{
    public static IBackend Create(string device, string stage)
    {
        string d = device.Trim().ToLowerInvariant();
        if (d is "auto" or "cpu") return new CpuBackend();
        if (d == "cuda" || d.StartsWith("cuda:", StringComparison.Ordinal))
            throw new PipelineUserException(
                $"stages.{stage}.device: '{device}' — this build of FineTune has no CUDA backend yet. Use device: cpu (or auto, which falls back to the CPU).");
        throw new PipelineUserException($"stages.{stage}.device: '{device}' is not a device; use auto, cpu, cuda or cuda:N.");
    }
}
