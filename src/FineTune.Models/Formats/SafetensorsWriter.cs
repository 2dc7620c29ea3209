using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>
/// Collects tensors and writes them as one safetensors file or as shards with
/// <c>model.safetensors.index.json</c>. Within a file tensors are ordered by element size (largest
/// first, so every tensor starts aligned to its element size) then by name with layer numbers in
/// numeric order; the JSON header is compact, <c>__metadata__</c> first, padded with spaces to a
/// multiple of 8 bytes. Files are written to a temporary name and renamed into place.
/// </summary>
public sealed class SafetensorsWriter
{
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly SortedDictionary<string, string> _metadata;

    /// <param name="metadata">The <c>__metadata__</c> map; defaults to {"format": "pt"}, which transformers expects.</param>
    public SafetensorsWriter(IReadOnlyDictionary<string, string>? metadata = null)
    {
        _metadata = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in metadata ?? new Dictionary<string, string> { ["format"] = "pt" })
            _metadata[k] = v;
    }

    public int Count => _entries.Count;

    /// <summary>Sum of all tensors' data bytes (the index's total_size).</summary>
    public long TotalBytes => _entries.Values.Sum(e => e.ByteLength);

    /// <summary>Adds float32 values stored as <paramref name="dtype"/> (F32, BF16 or F16).</summary>
    public void Add(string name, ReadOnlySpan<float> values, IReadOnlyList<long> shape, SafetensorsDType dtype = SafetensorsDType.F32)
    {
        CheckCount(name, shape, values.Length);
        var bytes = new byte[(long)values.Length * dtype.ElementSize()];
        FloatConversions.Encode(values, dtype, bytes);
        Put(new Entry(name, dtype, shape.ToArray(), bytes.LongLength, bytes, null));
    }

    /// <summary>Adds already-encoded little-endian bytes.</summary>
    public void AddRaw(string name, SafetensorsDType dtype, IReadOnlyList<long> shape, ReadOnlySpan<byte> bytes)
    {
        long expected = shape.Aggregate(1L, (a, b) => a * b) * dtype.ElementSize();
        if (bytes.Length != expected)
            throw new ArgumentException($"tensor \"{name}\": {bytes.Length} bytes given, shape [{string.Join(", ", shape)}] of {dtype.HeaderName()} needs {expected}", nameof(bytes));
        Put(new Entry(name, dtype, shape.ToArray(), expected, bytes.ToArray(), null));
    }

    /// <summary>
    /// Adds a tensor whose bytes are produced only while the file is written, so a large model is
    /// streamed through memory one tensor at a time. <paramref name="fill"/> receives a buffer of exactly
    /// the tensor's byte length.
    /// </summary>
    public void AddDeferred(string name, SafetensorsDType dtype, IReadOnlyList<long> shape, Action<Span<byte>> fill)
    {
        long bytes = shape.Aggregate(1L, (a, b) => a * b) * dtype.ElementSize();
        if (bytes > Array.MaxLength)
            throw new ArgumentException($"tensor \"{name}\" is {bytes} bytes; deferred tensors must fit one array", nameof(shape));
        Put(new Entry(name, dtype, shape.ToArray(), bytes, null, fill));
    }

    private static void CheckCount(string name, IReadOnlyList<long> shape, long count)
    {
        long expected = shape.Aggregate(1L, (a, b) => a * b);
        if (expected != count)
            throw new ArgumentException($"tensor \"{name}\": {count} values given but shape [{string.Join(", ", shape)}] holds {expected}", nameof(shape));
    }

    private void Put(Entry e)
    {
        if (e.Name.Length == 0 || e.Name == "__metadata__")
            throw new ArgumentException($"\"{e.Name}\" cannot name a tensor", nameof(e));
        if (!_entries.TryAdd(e.Name, e))
            throw new ArgumentException($"tensor \"{e.Name}\" was added twice", nameof(e));
    }

    /// <summary>Writes every tensor into one file.</summary>
    public void Save(string path) => WriteFile(path, Ordered(_entries.Values));

    /// <summary>
    /// Writes shards of at most <paramref name="maxShardBytes"/> data bytes each (a tensor larger than
    /// the limit gets a shard of its own) named <c>{prefix}-00001-of-0000N.safetensors</c> plus
    /// <c>{prefix}.safetensors.index.json</c>; when everything fits one shard, writes
    /// <c>{prefix}.safetensors</c> and no index, as transformers does. Returns the file names written.
    /// </summary>
    public IReadOnlyList<string> SaveSharded(string directory, long maxShardBytes, string prefix = "model")
    {
        if (maxShardBytes <= 0)
            throw new ArgumentOutOfRangeException(nameof(maxShardBytes), "shard size must be positive");
        Directory.CreateDirectory(directory);
        // Assign in layer order so a shard holds neighbouring layers.
        var byName = _entries.Values.OrderBy(e => e.Name, TensorNameComparer.Instance).ToList();
        var shards = new List<List<Entry>>();
        long current = 0;
        foreach (var e in byName)
        {
            if (shards.Count == 0 || (current + e.ByteLength > maxShardBytes && current > 0))
            {
                shards.Add([]);
                current = 0;
            }
            shards[^1].Add(e);
            current += e.ByteLength;
        }
        if (shards.Count <= 1)
        {
            var single = $"{prefix}.safetensors";
            WriteFile(Path.Combine(directory, single), Ordered(_entries.Values));
            return [single];
        }
        var names = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < shards.Count; i++)
        {
            var file = $"{prefix}-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            WriteFile(Path.Combine(directory, file), Ordered(shards[i]));
            foreach (var e in shards[i])
                weightMap[e.Name] = file;
            names.Add(file);
        }
        var indexName = $"{prefix}.safetensors.index.json";
        AtomicFile.WriteAllText(Path.Combine(directory, indexName), IndexJson(TotalBytes, weightMap));
        names.Add(indexName);
        return names;
    }

    /// <summary>The index file text: {"metadata": {"total_size": N}, "weight_map": {…}}, sorted keys, 2-space indent.</summary>
    public static string IndexJson(long totalSize, IReadOnlyDictionary<string, string> weightMap)
    {
        var map = new JsonObject();
        foreach (var (k, v) in weightMap.OrderBy(p => p.Key, StringComparer.Ordinal))
            map[k] = v;
        var root = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = totalSize },
            ["weight_map"] = map,
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n";
    }

    private static List<Entry> Ordered(IEnumerable<Entry> entries) =>
        entries.OrderByDescending(e => e.DType.ElementSize())
            .ThenBy(e => e.Name, TensorNameComparer.Instance)
            .ToList();

    /// <summary>The header bytes (JSON padded with spaces to a multiple of 8) for tensors in file order.</summary>
    public static byte[] BuildHeader(IReadOnlyDictionary<string, string> metadata,
        IEnumerable<(string Name, SafetensorsDType DType, IReadOnlyList<long> Shape, long ByteLength)> tensors)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata.OrderBy(p => p.Key, StringComparer.Ordinal))
                    w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in tensors)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.HeaderName());
                w.WriteStartArray("shape");
                foreach (var d in t.Shape)
                    w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.ByteLength);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.ByteLength;
            }
            w.WriteEndObject();
        }
        var json = ms.ToArray();
        int padded = (json.Length + 7) / 8 * 8;
        var result = new byte[padded];
        json.CopyTo(result, 0);
        result.AsSpan(json.Length).Fill((byte)' ');
        return result;
    }

    private void WriteFile(string path, List<Entry> ordered)
    {
        var header = BuildHeader(_metadata, ordered.Select(e => (e.Name, e.DType, (IReadOnlyList<long>)e.Shape, e.ByteLength)));
        AtomicFile.Write(path, stream =>
        {
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, (ulong)header.Length);
            stream.Write(len);
            stream.Write(header);
            foreach (var e in ordered)
            {
                if (e.Bytes is not null)
                {
                    stream.Write(e.Bytes);
                    continue;
                }
                var buffer = new byte[e.ByteLength];
                e.Fill!(buffer);
                stream.Write(buffer);
            }
        });
    }

    private sealed record Entry(string Name, SafetensorsDType DType, long[] Shape, long ByteLength, byte[]? Bytes, Action<Span<byte>>? Fill);
}
