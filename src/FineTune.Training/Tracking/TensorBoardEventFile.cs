using System.Buffers.Binary;
using System.Text;

namespace FineTune.Training.Tracking;

/// <summary>
/// Writes a TensorBoard event file: TFRecord framing (u64 length, masked CRC32C of the length, the record, masked CRC32C
/// of the record) around <c>tensorflow.Event</c> protos — first one with <c>file_version = "brain.Event:2"</c>, then one
/// per step with a <c>Summary</c> of scalar values (<c>simple_value</c>), as torch's SummaryWriter writes them for the HF
/// Trainer. The few protobuf fields are encoded by hand (field numbers from tensorflow/core/util/event.proto and
/// framework/summary.proto).
/// </summary>
public sealed class TensorBoardEventFile : IDisposable
{
    public const string FileVersion = "brain.Event:2";

    private readonly FileStream _stream;

    /// <summary>Creates (truncates) <paramref name="path"/> and writes the file_version event.</summary>
    public TensorBoardEventFile(string path, double wallTime)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        _stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read);
        var ev = new ProtoWriter();
        ev.Double(1, wallTime);
        ev.Int64(2, 0);
        ev.Bytes(3, Encoding.UTF8.GetBytes(FileVersion));
        WriteRecord(ev.ToArray());
    }

    /// <summary>One event at <paramref name="step"/> whose summary holds these scalars (TensorBoard keeps them as float32).</summary>
    public void Scalars(long step, double wallTime, IEnumerable<KeyValuePair<string, double>> scalars)
    {
        var summary = new ProtoWriter();
        foreach (var (tag, value) in scalars)
        {
            var v = new ProtoWriter();
            v.Bytes(1, Encoding.UTF8.GetBytes(tag));
            v.Float(2, (float)value);
            summary.Bytes(1, v.ToArray());
        }
        var ev = new ProtoWriter();
        ev.Double(1, wallTime);
        ev.Int64(2, step);
        ev.Bytes(5, summary.ToArray());
        WriteRecord(ev.ToArray());
    }

    private void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc32C(header[..8]));
        _stream.Write(header);
        _stream.Write(data);
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
        _stream.Write(footer);
    }

    public void Dispose()
    {
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
    }

    // CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), masked as TFRecord does: rotr15(crc) + 0xa282ead8, so that a
    // CRC computed over data that itself holds CRCs stays well distributed.
    private static readonly uint[] Crc32CTable = BuildTable();

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        return table;
    }

    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (var b in data) crc = Crc32CTable[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return ~crc;
    }

    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    }

    /// <summary>Protobuf wire format, the four field types an Event needs.</summary>
    private sealed class ProtoWriter
    {
        private readonly MemoryStream _buffer = new();

        private void Varint(ulong v)
        {
            while (v >= 0x80) { _buffer.WriteByte((byte)(v | 0x80)); v >>= 7; }
            _buffer.WriteByte((byte)v);
        }

        private void Tag(int field, int wireType) => Varint((ulong)((field << 3) | wireType));

        public void Double(int field, double v)
        {
            Tag(field, 1);
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteDoubleLittleEndian(b, v);
            _buffer.Write(b);
        }

        public void Float(int field, float v)
        {
            Tag(field, 5);
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(b, v);
            _buffer.Write(b);
        }

        public void Int64(int field, long v)
        {
            Tag(field, 0);
            Varint((ulong)v);
        }

        public void Bytes(int field, byte[] v)
        {
            Tag(field, 2);
            Varint((ulong)v.Length);
            _buffer.Write(v);
        }

        public byte[] ToArray() => _buffer.ToArray();
    }
}
