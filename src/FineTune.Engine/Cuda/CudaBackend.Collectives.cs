namespace FineTune.Engine.Cuda;

public sealed partial class CudaBackend
{
    /// <summary>The device address of a tensor's first element (NCCL takes raw device pointers).</summary>
    internal ulong DevicePointer(Tensor t) => P(t);
}
