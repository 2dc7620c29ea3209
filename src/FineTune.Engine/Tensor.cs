namespace FineTune.Engine;

/// <summary>
/// A dense, row-major view of <see cref="DType"/> elements in a backend buffer.
/// <see cref="Offset"/> counts elements (not bytes) from the start of the buffer. Views share the buffer:
/// model parameters and activations are carved out of a few big buffers once (llm.c style).
/// For matrix operations a tensor is seen as [Rows, Cols] where Cols is the last dimension.
/// </summary>
public sealed class Tensor
{
    private readonly int[] _shape;

    public Tensor(DeviceBuffer buffer, long offset, DType dtype, ReadOnlySpan<int> shape, string? name = null)
    {
        long length = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"negative dimension in shape [{string.Join(", ", shape.ToArray())}]");
            length *= d;
        }
        if (offset < 0 || (offset + length) * dtype.ByteSize() > buffer.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"tensor '{name}' [{string.Join(", ", shape.ToArray())}] at element {offset} does not fit a buffer of {buffer.ByteLength} bytes");
        Buffer = buffer;
        Offset = offset;
        DType = dtype;
        _shape = shape.ToArray();
        Length = length;
        Name = name ?? "";
    }

    public DeviceBuffer Buffer { get; }
    public IBackend Backend => Buffer.Backend;
    public long Offset { get; }
    public DType DType { get; }
    public ReadOnlySpan<int> Shape => _shape;
    public int Rank => _shape.Length;
    public long Length { get; }
    public string Name { get; }

    /// <summary>Size of the last dimension (1 for a scalar).</summary>
    public int Cols => _shape.Length == 0 ? 1 : _shape[^1];

    /// <summary>Product of all dimensions but the last.</summary>
    public int Rows => Cols == 0 ? 0 : checked((int)(Length / Cols));

    public int Dim(int i) => _shape[i < 0 ? _shape.Length + i : i];

    /// <summary>A view of <paramref name="shape"/> starting <paramref name="elementOffset"/> elements into this tensor.</summary>
    public Tensor View(long elementOffset, ReadOnlySpan<int> shape, string? name = null)
    {
        long length = 1;
        foreach (int d in shape) length *= d;
        if (elementOffset < 0 || elementOffset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(elementOffset),
                $"view [{string.Join(", ", shape.ToArray())}] at {elementOffset} exceeds tensor '{Name}' of {Length} elements");
        return new Tensor(Buffer, Offset + elementOffset, DType, shape, name ?? Name);
    }

    /// <summary>The same elements with another shape (same element count or fewer, from the start).</summary>
    public Tensor Reshape(params int[] shape) => View(0, shape);

    /// <summary>Rows [start, start+count) of the [Rows, Cols] view.</summary>
    public Tensor SliceRows(int start, int count) => View((long)start * Cols, [count, Cols]);

    public override string ToString() => $"{Name}:{DType}[{string.Join(", ", _shape)}]";
}
