namespace FineTune.Engine;

/// <summary>
/// Creates a backend from a device string: cpu (the managed backend), cuda / cuda:N (an NVIDIA GPU), or auto
/// (GPU 0 when a CUDA driver and GPU are present, else the CPU with a one-line <paramref name="notice"/>).
/// See <see cref="BackendFactory"/>.
/// </summary>
public static class Backends
{
    public static IBackend Create(string device, int? cpuThreads = null, Action<string>? notice = null) =>
        BackendFactory.Create(device, notice, cpuThreads);
}
