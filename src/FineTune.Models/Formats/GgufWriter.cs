using System.Text;

namespace FineTune.Models;

/// <summary>ggml tensor types FineTune writes (values as in ggml's enum ggml_type).</summary>
public enum GgufTensorType : uint
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
    Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30,
}

/// <summary>GGUF metadata value types (values as in the GGUF specification).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// Encodes rows [<paramref name="firstRow"/>, <paramref name="firstRow"/> + <paramref name="rows"/>) of a tensor in its
/// GGUF type into <paramref name="destination"/> (exactly those rows' bytes; the buffer is reused after the call).
/// </summary>
public delegate void GgufRowSource(long firstRow, int rows, Span<byte> destination);

/// <summary>
/// Writes GGUF v3: "GGUF", version 3, tensor count (u64), metadata count (u64), the metadata key/values
/// (strings are u64 length + UTF-8), the tensor infos (name, dims innermost first, ggml type, offset),
/// padding to the alignment, then each tensor's data at an aligned offset. Little-endian throughout.
/// The writer streams: every offset follows from the shapes and types alone, so the header is written first and then
/// each tensor's rows are asked of its <see cref="GgufRowSource"/> a chunk at a time (at most <see cref="ChunkValues"/>
/// values) into one buffer that every chunk of every tensor reuses; a model of any size needs one chunk in memory.
/// </summary>
public sealed class GgufWriter
{
    public const uint Version = 3;

    /// <summary>Values per chunk by default: 4 Mi values, at most 16 MiB of encoded bytes in any type.</summary>
    public const int DefaultChunkValues = 1 << 22;

    private readonly List<(string Key, GgufValueType Type, object Value)> _metadata = [];
    private readonly List<Tensor> _tensors = [];

    public GgufWriter(uint alignment = 32, int chunkValues = DefaultChunkValues)
    {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(alignment), "alignment must be a power of two");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkValues);
        Alignment = alignment;
        ChunkValues = chunkValues;
    }

    public uint Alignment { get; }

    /// <summary>The most values one chunk holds (fewer when a tensor's row granule asks for more than one row).</summary>
    public int ChunkValues { get; }

    public IReadOnlyList<string> Keys => _metadata.Select(m => m.Key).ToArray();

    private void Put(string key, GgufValueType type, object value)
    {
        if (_metadata.Any(m => m.Key == key))
            throw new ArgumentException($"metadata key \"{key}\" was added twice", nameof(key));
        _metadata.Add((key, type, value));
    }

    public void Add(string key, string value) => Put(key, GgufValueType.String, value);
    public void Add(string key, uint value) => Put(key, GgufValueType.UInt32, value);
    public void Add(string key, int value) => Put(key, GgufValueType.Int32, value);
    public void Add(string key, float value) => Put(key, GgufValueType.Float32, value);
    public void Add(string key, bool value) => Put(key, GgufValueType.Bool, value);
    public void Add(string key, IReadOnlyList<string> values) => Put(key, GgufValueType.Array, (GgufValueType.String, (object)values));
    public void Add(string key, IReadOnlyList<int> values) => Put(key, GgufValueType.Array, (GgufValueType.Int32, (object)values));
    public void Add(string key, IReadOnlyList<float> values) => Put(key, GgufValueType.Array, (GgufValueType.Float32, (object)values));

    /// <summary>
    /// Adds a tensor; <paramref name="shape"/> is in PyTorch order (outermost first) and is written reversed,
    /// as ggml counts dimensions from the innermost. A row is the innermost dimension; <paramref name="source"/> is
    /// asked for consecutive chunks of rows, in order, while <see cref="Write"/> runs, each chunk's row count a
    /// multiple of <paramref name="rowGranule"/> (a whole number of attention heads, say) except the tensor's last.
    /// </summary>
    public void AddTensor(string name, IReadOnlyList<long> shape, GgufTensorType type, GgufRowSource source, int rowGranule = 1)
    {
        if (_tensors.Any(t => t.Name == name))
            throw new ArgumentException($"tensor \"{name}\" was added twice", nameof(name));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rowGranule);
        _tensors.Add(new Tensor(name, shape.ToArray(), type, ByteSize(shape, type), source, rowGranule));
    }

    /// <summary>Adds a small tensor whose bytes <paramref name="fill"/> writes at once (one chunk of all its rows).</summary>
    public void AddTensor(string name, IReadOnlyList<long> shape, GgufTensorType type, Action<Span<byte>> fill)
    {
        long rows = shape.Take(shape.Count - 1).Aggregate(1L, (a, b) => a * b);
        AddTensor(name, shape, type, (_, _, destination) => fill(destination), checked((int)rows));
    }

    /// <summary>Rows of each chunk of a tensor: as many as <see cref="ChunkValues"/> allows, a multiple of the granule, at least one granule.</summary>
    private long ChunkRows(Tensor t)
    {
        long rows = t.Shape.Take(t.Shape.Length - 1).Aggregate(1L, (a, b) => a * b);
        long fit = Math.Max(1, ChunkValues / t.Shape[^1]) / t.RowGranule * t.RowGranule;
        return Math.Min(rows, Math.Max(t.RowGranule, fit));
    }

    /// <summary>Bytes of a tensor: its rows (the innermost dimension) hold whole blocks of the type (see <see cref="GgmlQuants"/>).</summary>
    public static long ByteSize(IReadOnlyList<long> shape, GgufTensorType type)
    {
        long rows = shape.Take(shape.Count - 1).Aggregate(1L, (a, b) => a * b);
        return rows * GgmlQuants.RowBytes(type, shape[^1]);
    }

    public void Save(string path) => AtomicFile.Write(path, Write);

    public void Write(Stream stream)
    {
        using var w = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        w.Write(0x46554747u); // "GGUF"
        w.Write(Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, type, value) in _metadata)
        {
            WriteString(w, key);
            w.Write((uint)type);
            WriteValue(w, type, value);
        }
        long offset = 0;
        var offsets = new long[_tensors.Count];
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--)
                w.Write((ulong)t.Shape[d]);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset = Align(offset + t.Bytes);
        }
        w.Flush();
        Pad(stream, stream.Position);
        long dataStart = stream.Position;
        // One buffer for every chunk: the largest chunk any tensor asks for.
        long bufferBytes = _tensors.Count == 0 ? 0 : _tensors.Max(t => ChunkRows(t) * GgmlQuants.RowBytes(t.Type, t.Shape[^1]));
        var buffer = new byte[checked((int)bufferBytes)];
        foreach (var t in _tensors)
        {
            long rows = t.Shape.Take(t.Shape.Length - 1).Aggregate(1L, (a, b) => a * b);
            long rowBytes = GgmlQuants.RowBytes(t.Type, t.Shape[^1]), chunkRows = ChunkRows(t);
            for (long first = 0; first < rows; first += chunkRows)
            {
                int n = (int)Math.Min(chunkRows, rows - first);
                var chunk = buffer.AsSpan(0, (int)(n * rowBytes));
                t.Source(first, n, chunk);
                stream.Write(chunk);
            }
            Pad(stream, stream.Position - dataStart);
        }
    }

    private long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private void Pad(Stream s, long position)
    {
        long pad = Align(position) - position;
        for (long i = 0; i < pad; i++)
            s.WriteByte(0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, GgufValueType type, object value)
    {
        switch (type)
        {
            case GgufValueType.String: WriteString(w, (string)value); break;
            case GgufValueType.UInt32: w.Write((uint)value); break;
            case GgufValueType.Int32: w.Write((int)value); break;
            case GgufValueType.Float32: w.Write((float)value); break;
            case GgufValueType.Bool: w.Write((byte)((bool)value ? 1 : 0)); break;
            case GgufValueType.Array:
                var (elem, items) = ((GgufValueType, object))value;
                w.Write((uint)elem);
                switch (items)
                {
                    case IReadOnlyList<string> strings:
                        w.Write((ulong)strings.Count);
                        foreach (var s in strings) WriteString(w, s);
                        break;
                    case IReadOnlyList<int> ints:
                        w.Write((ulong)ints.Count);
                        foreach (var i in ints) w.Write(i);
                        break;
                    case IReadOnlyList<float> floats:
                        w.Write((ulong)floats.Count);
                        foreach (var f in floats) w.Write(f);
                        break;
                }
                break;
            default: throw new ArgumentOutOfRangeException(nameof(type));
        }
    }

    private sealed record Tensor(string Name, long[] Shape, GgufTensorType Type, long Bytes, GgufRowSource Source, int RowGranule);
}
