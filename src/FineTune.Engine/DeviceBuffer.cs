namespace FineTune.Engine;

/// <summary>
/// A block of memory owned by one backend (host memory for the CPU backend, device memory for CUDA).
/// Tensors are typed views into a buffer; a backend only accepts tensors over its own buffers.
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(IBackend backend, long byteLength)
    {
        Backend = backend;
        ByteLength = byteLength;
    }

    public IBackend Backend { get; }
    public long ByteLength { get; }

    public abstract void Dispose();
}
