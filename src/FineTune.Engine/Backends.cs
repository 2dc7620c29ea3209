using FineTune.Engine.Cpu;

namespace FineTune.Engine;

/// <summary>Creates a backend from a device string: cpu (the managed backend) or auto (the best one present).</summary>
public static class Backends
{
    public static IBackend Create(string device, int? cpuThreads = null) => device switch
    {
        "cpu" or "auto" => new CpuBackend(cpuThreads),
        _ when device.StartsWith("cuda", StringComparison.Ordinal) =>
            throw new NotSupportedException($"device '{device}': this build of FineTune has no CUDA backend yet; use device: cpu"),
        _ => throw new ArgumentException($"unknown device '{device}'; use auto, cpu, cuda or cuda:N"),
    };
}
