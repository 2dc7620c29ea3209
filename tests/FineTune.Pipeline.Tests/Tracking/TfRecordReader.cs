using System.Buffers.Binary;
using System.Runtime.Intrinsics.X86;
using System.Text;

namespace FineTune.Pipeline.Tests.Tracking;

/// <summary>One decoded tensorflow.Event: wall_time, step, and either file_version or the summary's (tag, simple_value) pairs.</summary>
public sealed record TensorBoardEvent(double WallTime, long Step, string? FileVersion, IReadOnlyList<(string Tag, float Value)> Scalars);

/// <summary>
/// Reads a TensorBoard event file on its own terms, apart from the writer: TFRecord frames whose two masked CRC32Cs are
/// recomputed with the CPU's crc32 instruction (SSE4.2; a bitwise loop where it lacks one), and a generic protobuf
/// decoder that walks every field by wire type (unknown fields are an error, so nothing the writer emits goes unread).
/// </summary>
public static class TfRecordReader
{
    public static IReadOnlyList<TensorBoardEvent> Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<TensorBoardEvent>();
        int at = 0;
        while (at < bytes.Length)
        {
            var lengthBytes = bytes.AsSpan(at, 8);
            ulong length = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
            uint lengthCrc = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8, 4));
            if (lengthCrc != Masked(lengthBytes)) throw new InvalidDataException($"record at {at}: length CRC mismatch");
            var data = bytes.AsSpan(at + 12, (int)length);
            uint dataCrc = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + (int)length, 4));
            if (dataCrc != Masked(data)) throw new InvalidDataException($"record at {at}: data CRC mismatch");
            events.Add(DecodeEvent(data.ToArray()));
            at += 12 + (int)length + 4;
        }
        return events;
    }

    private static TensorBoardEvent DecodeEvent(byte[] data)
    {
        double wall = 0; long step = 0; string? version = null;
        var scalars = new List<(string, float)>();
        foreach (var (field, wire, value, payload) in Fields(data))
            switch (field, wire)
            {
                case (1, 1): wall = BitConverter.Int64BitsToDouble((long)value); break;
                case (2, 0): step = (long)value; break;
                case (3, 2): version = Encoding.UTF8.GetString(payload!); break;
                case (5, 2):
                    foreach (var (vf, vw, _, vp) in Fields(payload!))
                    {
                        if ((vf, vw) != (1, 2)) throw new InvalidDataException($"Summary field {vf} wire type {vw}");
                        string tag = ""; float? simple = null;
                        foreach (var (f, w, v, p) in Fields(vp!))
                            switch (f, w)
                            {
                                case (1, 2): tag = Encoding.UTF8.GetString(p!); break;
                                case (2, 5): simple = BitConverter.Int32BitsToSingle((int)v); break;
                                default: throw new InvalidDataException($"Summary.Value field {f} wire type {w}");
                            }
                        scalars.Add((tag, simple ?? throw new InvalidDataException($"{tag}: no simple_value")));
                    }
                    break;
                default: throw new InvalidDataException($"Event field {field} wire type {wire}");
            }
        return new TensorBoardEvent(wall, step, version, scalars);
    }

    /// <summary>(field number, wire type, the varint or fixed value, the length-delimited payload).</summary>
    private static IEnumerable<(int Field, int Wire, ulong Value, byte[]? Payload)> Fields(byte[] data)
    {
        int i = 0;
        ulong Varint()
        {
            ulong v = 0; int shift = 0;
            while (true) { byte b = data[i++]; v |= (ulong)(b & 0x7F) << shift; if (b < 0x80) return v; shift += 7; }
        }
        while (i < data.Length)
        {
            ulong key = Varint();
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: yield return (field, wire, Varint(), null); break;
                case 1: { ulong v = BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(i, 8)); i += 8; yield return (field, wire, v, null); break; }
                case 5: { ulong v = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(i, 4)); i += 4; yield return (field, wire, v, null); break; }
                case 2: { int n = (int)Varint(); var p = data.AsSpan(i, n).ToArray(); i += n; yield return (field, wire, 0, p); break; }
                default: throw new InvalidDataException($"wire type {wire}");
            }
        }
    }

    private static uint Masked(ReadOnlySpan<byte> data)
    {
        uint crc = ~0u;
        if (Sse42.IsSupported)
            foreach (var b in data) crc = Sse42.Crc32(crc, b);
        else
            foreach (var b in data)
            {
                crc ^= b;
                for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (uint)-(int)(crc & 1));
            }
        crc = ~crc;
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }
}
