using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>One tensor of a safetensors file: where its bytes are and what they hold.</summary>
public sealed record SafetensorsTensorInfo(
    string Name, SafetensorsDType DType, IReadOnlyList<long> Shape, string FilePath, long DataOffset, long ByteLength)
{
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>
/// Reads safetensors files through memory maps: one file, or a directory (sharded with
/// <c>model.safetensors.index.json</c>, or every <c>*.safetensors</c> in it).
/// Layout: u64 little-endian header length N, N bytes of JSON header
/// (<c>{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {…}}</c>), then the data;
/// offsets are relative to the first byte after the header.
/// </summary>
public sealed unsafe class SafetensorsReader : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";
    /// <summary>The same bound the reference implementation puts on the header (100 MB).</summary>
    private const long MaxHeaderBytes = 100_000_000;
    /// <summary>An index maps tensor names to shard names; the largest models' are a few hundred KB.</summary>
    private const long MaxIndexBytes = 64L << 20;

    private readonly List<MappedFile> _files = [];
    private readonly Dictionary<string, SafetensorsTensorInfo> _tensors = new(StringComparer.Ordinal);
    private readonly Dictionary<string, MappedFile> _fileOf = new(StringComparer.Ordinal);
    private readonly string _source;
    private bool _disposed;

    private SafetensorsReader(string source) => _source = source;

    /// <summary>Every tensor by name.</summary>
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors => _tensors;

    /// <summary>The <c>__metadata__</c> of the files (later shards do not override earlier keys).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; private set; } = new Dictionary<string, string>();

    /// <summary>The files opened, in order.</summary>
    public IReadOnlyList<string> Files => _files.Select(f => f.Path).ToArray();

    /// <summary>Opens a .safetensors file, or a directory of them (index first, else all *.safetensors).</summary>
    public static SafetensorsReader Open(string path)
    {
        var reader = new SafetensorsReader(path);
        try
        {
            if (Directory.Exists(path))
                reader.OpenDirectory(path);
            else if (File.Exists(path) && path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
                reader.OpenIndex(path);
            else if (File.Exists(path))
                reader.AddFile(path, expected: null);
            else
                throw new ModelFormatException(path, "no such file or directory; expected a .safetensors file or a model directory.");
            return reader;
        }
        catch
        {
            reader.Dispose();
            throw;
        }
    }

    private void OpenDirectory(string dir)
    {
        var index = Path.Combine(dir, IndexFileName);
        if (File.Exists(index))
        {
            OpenIndex(index);
            return;
        }
        var files = Directory.GetFiles(dir, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (files.Length == 0)
            throw new ModelFormatException(dir, "no *.safetensors files and no model.safetensors.index.json; FineTune reads weights only in safetensors format (convert .bin checkpoints with transformers' save_pretrained(safe_serialization=True)).");
        foreach (var f in files)
            AddFile(f, expected: null);
    }

    private void OpenIndex(string indexPath)
    {
        var index = JsonInput.ReadObject(indexPath, MaxIndexBytes, "the index must be a regular JSON file (download the model again).");
        if (index["weight_map"] is not JsonObject map)
            throw new ModelFormatException(indexPath, "missing \"weight_map\" (tensor name → shard file).");
        var dir = Path.GetDirectoryName(Path.GetFullPath(indexPath))!;
        var byFile = new SortedDictionary<string, HashSet<string>>(StringComparer.Ordinal);
        foreach (var (name, value) in map)
        {
            var file = value is JsonValue v && v.TryGetValue<string>(out var s) ? s
                : throw new ModelFormatException(indexPath, $"weight_map entry for tensor \"{name}\" must be a file name.");
            if (file.Contains('/') || file.Contains('\\') || file.Contains(".."))
                throw new ModelFormatException(indexPath, $"weight_map entry for tensor \"{name}\" names \"{file}\"; shard names must be plain file names in the same directory.");
            if (!byFile.TryGetValue(file, out var set))
                byFile[file] = set = new HashSet<string>(StringComparer.Ordinal);
            set.Add(name);
        }
        foreach (var (file, names) in byFile)
        {
            var full = Path.Combine(dir, file);
            if (!File.Exists(full))
                throw new ModelFormatException(indexPath, $"shard \"{file}\" (holding e.g. tensor \"{names.Order(StringComparer.Ordinal).First()}\") is missing; download the model again.");
            AddFile(full, names);
        }
    }

    private void AddFile(string path, HashSet<string>? expected)
    {
        if (FineTune.IO.InputFile.Check(path, long.MaxValue, "a safetensors file") is { } problem)
            throw new ModelFormatException(path, $"{problem.Text}; weights must be regular .safetensors files (download the model again).");
        var file = new FileInfo(path);
        // A link (as in a Hugging Face cache) has its own length; the data is the target's.
        var length = (file.LinkTarget is null ? file : file.ResolveLinkTarget(returnFinalTarget: true) as FileInfo ?? file).Length;
        if (length < 8)
            throw new ModelFormatException(path, $"file is {length} bytes, too short for a safetensors header; the file is truncated or not safetensors.");
        var mmf = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor view;
        try
        {
            view = mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        }
        catch
        {
            mmf.Dispose();
            throw;
        }
        byte* basePtr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
        basePtr += view.PointerOffset;
        var mapped = new MappedFile(path, mmf, view, basePtr, length);
        _files.Add(mapped);

        ulong headerLen = BitConverter.ToUInt64(new ReadOnlySpan<byte>(basePtr, 8));
        if (headerLen > MaxHeaderBytes || (long)headerLen > length - 8)
            throw new ModelFormatException(path, $"header length {headerLen} does not fit the file ({length} bytes); the file is truncated or not safetensors.");
        var dataStart = 8 + (long)headerLen;
        var dataLength = length - dataStart;
        var header = JsonInput.ParseObject(new ReadOnlySpan<byte>(basePtr + 8, (int)headerLen), path);

        var entries = new List<SafetensorsTensorInfo>();
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                if (node is not JsonObject meta)
                    throw new ModelFormatException(path, "\"__metadata__\" must be an object of strings.");
                var merged = new Dictionary<string, string>(Metadata);
                foreach (var (k, v) in meta)
                    if (v is JsonValue sv && sv.TryGetValue<string>(out var str))
                        merged.TryAdd(k, str);
                    else
                        throw new ModelFormatException(path, $"\"__metadata__\".\"{k}\" must be a string.");
                Metadata = merged;
                continue;
            }
            var info = ParseEntry(path, name, node, dataStart, dataLength);
            entries.Add(info);
            if (expected is not null && !expected.Contains(name))
                continue; // a tensor the index does not map to this shard: the index decides
            if (!_tensors.TryAdd(name, info))
                throw new ModelFormatException(path, $"tensor \"{name}\" also appears in {_tensors[name].FilePath}; a model must name each tensor once.");
            _fileOf[name] = mapped;
        }
        CheckNoOverlap(path, entries, dataStart);
        if (expected is not null)
            foreach (var name in expected.Order(StringComparer.Ordinal))
                if (!_tensors.ContainsKey(name))
                    throw new ModelFormatException(path, $"tensor \"{name}\" is listed in {IndexFileName} but missing from this shard; download the model again.");
    }

    private static SafetensorsTensorInfo ParseEntry(string path, string name, JsonNode? node, long dataStart, long dataLength)
    {
        if (node is not JsonObject o)
            throw new ModelFormatException(path, $"tensor \"{name}\": header entry must be an object with dtype, shape and data_offsets.");
        var dtypeName = o["dtype"] is JsonValue dv && dv.TryGetValue<string>(out var ds) ? ds : null;
        var dtype = dtypeName is null ? null : SafetensorsDTypes.Parse(dtypeName);
        if (dtype is null)
            throw new ModelFormatException(path, $"tensor \"{name}\": unknown dtype {o["dtype"]?.ToJsonString() ?? "(missing)"}.");
        if (o["shape"] is not JsonArray shapeArr)
            throw new ModelFormatException(path, $"tensor \"{name}\": missing shape.");
        var shape = new long[shapeArr.Count];
        for (int i = 0; i < shape.Length; i++)
            shape[i] = shapeArr[i] is JsonValue sv && sv.TryGetValue<long>(out var d) && d >= 0 ? d
                : throw new ModelFormatException(path, $"tensor \"{name}\": shape[{i}] must be a non-negative integer.");
        if (o["data_offsets"] is not JsonArray { Count: 2 } offs
            || offs[0] is not JsonValue b0 || !b0.TryGetValue<long>(out var begin)
            || offs[1] is not JsonValue e0 || !e0.TryGetValue<long>(out var end))
            throw new ModelFormatException(path, $"tensor \"{name}\": data_offsets must be [begin, end].");
        long expectedBytes;
        try
        {
            expectedBytes = checked(shape.Aggregate(1L, (a, b) => a * b) * dtype.Value.ElementSize());
        }
        catch (OverflowException)
        {
            // Unchecked, 2^32 · 2^32 elements wrap to 0 and match data_offsets [0, 0].
            throw new ModelFormatException(path, $"tensor \"{name}\": shape [{string.Join(", ", shape)}] of {dtype.Value.HeaderName()} needs more than 2^63 bytes; the header is corrupt.");
        }
        if (begin < 0 || end < begin || end > dataLength)
            throw new ModelFormatException(path, $"tensor \"{name}\": data_offsets [{begin}, {end}] lie outside the {dataLength} data bytes; the file is truncated.");
        if (end - begin != expectedBytes)
            throw new ModelFormatException(path, $"tensor \"{name}\": {end - begin} bytes stored but shape [{string.Join(", ", shape)}] of {dtype.Value.HeaderName()} needs {expectedBytes}.");
        return new SafetensorsTensorInfo(name, dtype.Value, shape, path, dataStart + begin, end - begin);
    }

    /// <summary>Two tensors must not share bytes (the reference implementation lays them end to end); empty ones take none.</summary>
    private static void CheckNoOverlap(string path, IEnumerable<SafetensorsTensorInfo> entries, long dataStart)
    {
        var spans = entries.Where(t => t.ByteLength > 0)
            .OrderBy(t => t.DataOffset).ThenBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
        for (var i = 1; i < spans.Count; i++)
        {
            var (before, after) = (spans[i - 1], spans[i]);
            if (after.DataOffset < before.DataOffset + before.ByteLength)
                throw new ModelFormatException(path, $"tensor \"{after.Name}\": data_offsets [{after.DataOffset - dataStart}, {after.DataOffset - dataStart + after.ByteLength}] " +
                    $"overlap those of tensor \"{before.Name}\" [{before.DataOffset - dataStart}, {before.DataOffset - dataStart + before.ByteLength}]; the file is corrupt (download it again).");
        }
    }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The tensor's description; a missing tensor is an error naming the source and the tensor.</summary>
    public SafetensorsTensorInfo Get(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_tensors.TryGetValue(name, out var info))
            return info;
        throw new ModelFormatException(_source, $"tensor \"{name}\" not found among the {_tensors.Count} tensors; the weights do not match the model's config.json (wrong architecture or a partial download).");
    }

    /// <summary>The tensor's stored bytes (little-endian, row-major), valid while the reader is open.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var info = Get(name);
        if (info.ByteLength > int.MaxValue)
            throw new ModelFormatException(info.FilePath, $"tensor \"{name}\" is {info.ByteLength} bytes, larger than one span can address; read it in parts with {nameof(GetBytes)}(name, offset, length).");
        return new ReadOnlySpan<byte>(_fileOf[name].Pointer + info.DataOffset, (int)info.ByteLength);
    }

    /// <summary>A slice of the tensor's stored bytes.</summary>
    public ReadOnlySpan<byte> GetBytes(string name, long offset, int length)
    {
        var info = Get(name);
        if (offset < 0 || length < 0 || offset + length > info.ByteLength)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) outside tensor \"{name}\" ({info.ByteLength} bytes)");
        return new ReadOnlySpan<byte>(_fileOf[name].Pointer + info.DataOffset + offset, length);
    }

    /// <summary>Converts the tensor to float32 into <paramref name="destination"/> (its length must equal the element count).</summary>
    public void ReadAsFloat32(string name, Span<float> destination)
    {
        var info = Get(name);
        if (destination.Length != info.ElementCount)
            throw new ArgumentException($"tensor \"{name}\" in {info.FilePath} has {info.ElementCount} elements (shape [{string.Join(", ", info.Shape)}]) but the destination holds {destination.Length}.", nameof(destination));
        int elemSize = info.DType.ElementSize();
        // Convert in chunks so tensors above 2 GiB work too.
        const int chunkElements = 1 << 24;
        long done = 0;
        while (done < info.ElementCount)
        {
            int n = (int)Math.Min(chunkElements, info.ElementCount - done);
            var src = GetBytes(name, done * elemSize, n * elemSize);
            FloatConversions.Decode(src, info.DType, destination.Slice((int)done, n));
            done += n;
        }
    }

    /// <summary>The tensor converted to a new float32 array.</summary>
    public float[] ReadAsFloat32(string name)
    {
        var info = Get(name);
        var result = new float[checked((int)info.ElementCount)];
        ReadAsFloat32(name, result);
        return result;
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        foreach (var f in _files)
            f.Dispose();
        _files.Clear();
    }

    private sealed class MappedFile(string path, MemoryMappedFile mmf, MemoryMappedViewAccessor view, byte* pointer, long length) : IDisposable
    {
        public string Path { get; } = path;
        public byte* Pointer { get; } = pointer;
        public long Length { get; } = length;

        public void Dispose()
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            mmf.Dispose();
        }
    }
}
