namespace FineTune.Engine;

public static class BackendExtensions
{
    /// <summary>A zero-filled tensor with a buffer of its own (outside any arena: set-up and tests).</summary>
    public static Tensor Allocate(this IBackend backend, DType dtype, params int[] shape)
    {
        long n = 1;
        foreach (int d in shape) n *= d;
        return new Tensor(backend.AllocateBuffer(Math.Max(4, n * dtype.ByteSize())), 0, dtype, shape);
    }
}
