using System.Runtime.InteropServices;

namespace FineTune.Engine.Cpu;

/// <summary>64-byte aligned, zero-filled native memory.</summary>
internal sealed unsafe class CpuBuffer : DeviceBuffer
{
    private byte* _pointer;

    public CpuBuffer(IBackend backend, long byteLength) : base(backend, byteLength)
    {
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(byteLength, 64), 64);
        NativeMemory.Clear(_pointer, (nuint)Math.Max(byteLength, 64));
    }

    public byte* Pointer => _pointer != null ? _pointer : throw new ObjectDisposedException(nameof(CpuBuffer));

    public override void Dispose()
    {
        if (_pointer != null)
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
        }
        GC.SuppressFinalize(this);
    }

    ~CpuBuffer()
    {
        if (_pointer != null) NativeMemory.AlignedFree(_pointer);
    }
}
