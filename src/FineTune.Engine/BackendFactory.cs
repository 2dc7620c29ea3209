using FineTune.Engine.Cpu;
using FineTune.Engine.Cuda;

namespace FineTune.Engine;

/// <summary>A parsed <c>device:</c> setting: auto, cpu, cuda or cuda:N.</summary>
public sealed record DeviceSpec(DeviceKind Kind, int Ordinal)
{
    /// <summary>Parses <paramref name="text"/>; the message of a bad value names the accepted forms.</summary>
    public static DeviceSpec Parse(string? text)
    {
        var t = (text ?? "auto").Trim().ToLowerInvariant();
        if (t is "" or "auto") return new(DeviceKind.Auto, 0);
        if (t == "cpu") return new(DeviceKind.Cpu, 0);
        if (t == "cuda" || t == "gpu") return new(DeviceKind.Cuda, 0);
        if (t.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(t.AsSpan(5), out var n) && n >= 0)
            return new(DeviceKind.Cuda, n);
        throw new ArgumentException($"device '{text}' is not one of auto, cpu, cuda, cuda:N (N = GPU index, 0-based)");
    }

    public override string ToString() => Kind switch
    {
        DeviceKind.Auto => "auto",
        DeviceKind.Cpu => "cpu",
        _ => $"cuda:{Ordinal}",
    };
}

public enum DeviceKind { Auto, Cpu, Cuda }

/// <summary>
/// Creates the backend a <c>device:</c> setting names. <c>auto</c> takes GPU 0 when a CUDA driver and GPU are
/// present and otherwise the CPU backend, reporting why in one line (once per process); <c>cuda[:N]</c> insists on the GPU (a run
/// sized for a GPU would crawl on the CPU) and fails with the driver's reason.
/// </summary>
public static class BackendFactory
{
    // Why auto fell back (no driver, no GPU) is a fact about this process: the notice is given once, however many stages
    // or commands of the process resolve auto (train then eval in one run), so a log shows it once.
    private static int _autoFallbackNoticed;

    public static IBackend Create(string? device, Action<string>? notice = null, int? cpuThreads = null) =>
        Create(DeviceSpec.Parse(device), notice, cpuThreads);

    public static IBackend Create(DeviceSpec spec, Action<string>? notice = null, int? cpuThreads = null)
    {
        switch (spec.Kind)
        {
            case DeviceKind.Cpu:
                return new CpuBackend(cpuThreads);
            case DeviceKind.Cuda:
                try { return new CudaBackend(spec.Ordinal); }
                catch (CudaUnavailableException e)
                {
                    throw new CudaUnavailableException($"device: {spec} was asked for, but {e.Message}. Use device: auto or cpu to train on the CPU.");
                }
            default:
                try { return new CudaBackend(0); }
                catch (CudaUnavailableException e)
                {
                    if (notice is not null && Interlocked.Exchange(ref _autoFallbackNoticed, 1) == 0)
                        notice($"device: auto → cpu ({e.Message})");
                    return new CpuBackend(cpuThreads);
                }
        }
    }
}
