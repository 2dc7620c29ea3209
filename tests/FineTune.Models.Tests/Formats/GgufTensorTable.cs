using System.Text;

namespace FineTune.Models.Tests.Formats;

/// <summary>
/// The tensor table of a GGUF v3 file, read by the specification: for comparing the tensors of two files that a
/// different writer produced (their metadata and tensor order may differ). Scalar metadata values are kept.
/// </summary>
internal sealed class GgufTensorTable
{
    public sealed record Entry(string Name, long[] Shape, GgufTensorType Type, long Offset);

    public Dictionary<string, Entry> Tensors { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, object> Metadata { get; } = new(StringComparer.Ordinal);
    private readonly byte[] _bytes;
    private readonly long _dataStart;

    public GgufTensorTable(string path)
    {
        _bytes = File.ReadAllBytes(path);
        using var r = new BinaryReader(new MemoryStream(_bytes));
        if (r.ReadUInt32() != 0x46554747u || r.ReadUInt32() != 3)
            throw new InvalidDataException($"{path} is not GGUF v3");
        long tensors = r.ReadInt64(), kvs = r.ReadInt64();
        for (long i = 0; i < kvs; i++)
        {
            var key = ReadString(r);
            var value = ReadValue(r, r.ReadUInt32());
            if (value is not null)
                Metadata[key] = value;
        }
        for (long i = 0; i < tensors; i++)
        {
            var name = ReadString(r);
            var dims = new long[r.ReadUInt32()];
            for (int d = 0; d < dims.Length; d++)
                dims[dims.Length - 1 - d] = r.ReadInt64(); // stored innermost first
            var type = (GgufTensorType)r.ReadUInt32();
            Tensors[name] = new Entry(name, dims, type, r.ReadInt64());
        }
        long alignment = Metadata.TryGetValue("general.alignment", out var a) ? Convert.ToInt64(a) : 32;
        _dataStart = (r.BaseStream.Position + alignment - 1) / alignment * alignment;
    }

    /// <summary>The stored bytes of a tensor.</summary>
    public ReadOnlySpan<byte> Data(string name)
    {
        var t = Tensors[name];
        return _bytes.AsSpan((int)(_dataStart + t.Offset), (int)GgufWriter.ByteSize(t.Shape, t.Type));
    }

    private static string ReadString(BinaryReader r) => Encoding.UTF8.GetString(r.ReadBytes((int)r.ReadInt64()));

    /// <summary>Reads one value of GGUF value type <paramref name="type"/>; arrays are skipped (null).</summary>
    private static object? ReadValue(BinaryReader r, uint type)
    {
        switch (type)
        {
            case 0: return r.ReadByte();
            case 1: return r.ReadSByte();
            case 2: return r.ReadUInt16();
            case 3: return r.ReadInt16();
            case 4: return r.ReadUInt32();
            case 5: return r.ReadInt32();
            case 6: return r.ReadSingle();
            case 7: return r.ReadByte() != 0;
            case 8: return ReadString(r);
            case 9:
                uint elem = r.ReadUInt32();
                long n = r.ReadInt64();
                for (long i = 0; i < n; i++) ReadValue(r, elem);
                return null;
            case 10: return r.ReadUInt64();
            case 11: return r.ReadInt64();
            case 12: return r.ReadDouble();
            default: throw new InvalidDataException($"GGUF value type {type}");
        }
    }
}
