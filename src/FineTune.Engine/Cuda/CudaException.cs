namespace FineTune.Engine.Cuda;

/// <summary>A CUDA driver, NVRTC or cuBLASLt call failed; the message carries the API's own error string.</summary>
public class CudaException(string message) : Exception(message);

/// <summary>The CUDA driver library or a GPU is not present on this machine.</summary>
public sealed class CudaUnavailableException(string message) : CudaException(message);

/// <summary>Device memory ran out. Carries the numbers so the user knows what to lower.</summary>
public sealed class CudaOutOfMemoryException(long requestedBytes, long freeBytes, long totalBytes, long cachedBytes, long inUseBytes)
    : CudaException(
        $"CUDA out of memory: needed {Gib(requestedBytes)} more, {Gib(freeBytes)} free of {Gib(totalBytes)} " +
        $"(FineTune holds {Gib(inUseBytes)} in use, {Gib(cachedBytes)} cached). " +
        "Lower per_device_train_batch_size (micro batch) or cutoff_len, or enable gradient_checkpointing.")
{
    public long RequestedBytes { get; } = requestedBytes;
    public long FreeBytes { get; } = freeBytes;
    public long TotalBytes { get; } = totalBytes;

    static string Gib(long bytes) => $"{bytes / (1024.0 * 1024 * 1024):F2} GiB";
}
