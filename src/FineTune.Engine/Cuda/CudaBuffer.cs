namespace FineTune.Engine.Cuda;

/// <summary>Device memory from the caching allocator; zero-filled on allocation, returned to the cache on dispose.</summary>
internal sealed class CudaBuffer : DeviceBuffer
{
    readonly CudaDevice _device;
    ulong _pointer;

    public CudaBuffer(CudaBackend backend, CudaDevice device, long byteLength) : base(backend, byteLength)
    {
        _device = device;
        _pointer = device.Allocate(Math.Max(byteLength, 256));
        device.Zero(_pointer, Math.Max(byteLength, 256));
    }

    public ulong Pointer => _pointer != 0 ? _pointer : throw new ObjectDisposedException(nameof(CudaBuffer));

    public override void Dispose()
    {
        if (_pointer == 0) return;
        _device.Free(_pointer);
        _pointer = 0;
    }
}
