namespace FineTune.Engine;

/// <summary>
/// Carves many named tensors out of one backend buffer: callers declare every tensor first
/// (<see cref="Builder.Add"/>), then one allocation backs them all. Each tensor starts on a 256-byte boundary.
/// </summary>
public sealed class TensorArena : IDisposable
{
    private const int AlignBytes = 256;
    private readonly Tensor[] _tensors;

    private TensorArena(DeviceBuffer buffer, Tensor[] tensors)
    {
        Buffer = buffer;
        _tensors = tensors;
    }

    public DeviceBuffer Buffer { get; }
    public int Count => _tensors.Length;
    public long ByteLength => Buffer.ByteLength;
    public Tensor this[int handle] => _tensors[handle];

    public void Dispose() => Buffer.Dispose();

    public sealed class Builder
    {
        private readonly List<(string Name, DType DType, int[] Shape, long ByteOffset)> _specs = [];
        private long _bytes;

        /// <summary>Declares a tensor; returns the handle that indexes the built arena.</summary>
        public int Add(string name, DType dtype, params int[] shape)
        {
            long length = 1;
            foreach (int d in shape) length *= d;
            long offset = (_bytes + AlignBytes - 1) / AlignBytes * AlignBytes;
            _specs.Add((name, dtype, shape, offset));
            _bytes = offset + length * dtype.ByteSize();
            return _specs.Count - 1;
        }

        public long ByteLength => _bytes;

        public TensorArena Build(IBackend backend)
        {
            DeviceBuffer buffer = backend.AllocateBuffer(Math.Max(_bytes, AlignBytes));
            var tensors = new Tensor[_specs.Count];
            for (int i = 0; i < tensors.Length; i++)
            {
                var (name, dtype, shape, byteOffset) = _specs[i];
                tensors[i] = new Tensor(buffer, byteOffset / dtype.ByteSize(), dtype, shape, name);
            }
            return new TensorArena(buffer, tensors);
        }
    }
}
