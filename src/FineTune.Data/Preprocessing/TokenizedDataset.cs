using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace FineTune.Data.Preprocessing;

/// <summary>One training sample: token ids, labels (-100 = not trained) and the lengths of the sequences packed into it.</summary>
public sealed record TokenizedSample(int[] InputIds, int[] Labels, int[] SequenceLengths)
{
    public const int IgnoreIndex = -100;

    public static TokenizedSample Single(int[] inputIds, int[] labels) => new(inputIds, labels, [inputIds.Length]);
}

/// <summary>Counts recorded in a tokenized dataset's header.</summary>
public sealed record TokenizedDatasetStats
{
    public long Samples { get; init; }
    public long Tokens { get; init; }
    /// <summary>Tokens whose label is not -100.</summary>
    public long TrainedTokens { get; init; }
    /// <summary>Source samples shortened by cutoff_len.</summary>
    public long Truncated { get; init; }
    /// <summary>Source samples left out (nothing to train after truncation, invalid records skipped upstream).</summary>
    public long Dropped { get; init; }
    public bool Packed { get; init; }
    /// <summary>Packed sequences must not attend to each other (SequenceLengths are segment boundaries).</summary>
    public bool NeatPacking { get; init; }
}

/// <summary>
/// A compact, memory-mapped file of tokenized samples (<c>.ftds</c>). Layout (little-endian):
/// a 128-byte header (magic "FTDS", version, flags, counts, SHA-256 of the body), then
/// int64 token offsets [count+1], int64 sequence offsets [count+1], int32 input ids, int32 labels,
/// int32 sequence lengths. Sample i spans tokens [offset[i], offset[i+1]).
/// </summary>
public sealed unsafe class TokenizedDataset : IDisposable
{
    public const int Version = 1;
    private const int HeaderSize = 128;
    private static ReadOnlySpan<byte> Magic => "FTDS"u8;

    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly long* _tokenOffsets;
    private readonly long* _sequenceOffsets;
    private readonly int* _ids;
    private readonly int* _labels;
    private readonly int* _sequenceLengths;

    private TokenizedDataset(string path, MemoryMappedFile file, MemoryMappedViewAccessor view, byte* basePtr, long length)
    {
        Path = path;
        _file = file;
        _view = view;
        _base = basePtr;
        var header = new ReadOnlySpan<byte>(basePtr, HeaderSize);
        if (length < HeaderSize || !header[..4].SequenceEqual(Magic))
            throw new DatasetException($"{path}: not a FineTune tokenized dataset (.ftds): bad magic. Re-run the split stage.");
        var version = BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
        if (version != Version)
            throw new DatasetException($"{path}: tokenized dataset version {version}, this FineTune reads version {Version}. Re-run the split stage.");
        var flags = BinaryPrimitives.ReadInt32LittleEndian(header[8..]);
        Count = checked((int)BinaryPrimitives.ReadInt64LittleEndian(header[16..]));
        var tokens = BinaryPrimitives.ReadInt64LittleEndian(header[24..]);
        var sequences = BinaryPrimitives.ReadInt64LittleEndian(header[32..]);
        Stats = new TokenizedDatasetStats
        {
            Samples = Count, Tokens = tokens,
            TrainedTokens = BinaryPrimitives.ReadInt64LittleEndian(header[40..]),
            Truncated = BinaryPrimitives.ReadInt64LittleEndian(header[48..]),
            Dropped = BinaryPrimitives.ReadInt64LittleEndian(header[56..]),
            Packed = (flags & 1) != 0, NeatPacking = (flags & 2) != 0,
        };
        ContentHash = Convert.ToHexStringLower(header.Slice(64, 32));
        var expected = HeaderSize + 16L * (Count + 1) + 8 * tokens + 4 * sequences;
        if (length < expected)
            throw new DatasetException($"{path}: truncated tokenized dataset ({length} bytes, header says {expected}). Re-run the split stage.");
        _tokenOffsets = (long*)(basePtr + HeaderSize);
        _sequenceOffsets = _tokenOffsets + Count + 1;
        _ids = (int*)(_sequenceOffsets + Count + 1);
        _labels = _ids + tokens;
        _sequenceLengths = _labels + tokens;
    }

    public string Path { get; }
    public int Count { get; }
    public TokenizedDatasetStats Stats { get; }
    /// <summary>SHA-256 (hex) of everything after the header: offsets, ids, labels, sequence lengths.</summary>
    public string ContentHash { get; }

    public ReadOnlySpan<int> InputIds(int index) => Span(_ids, _tokenOffsets, index);
    public ReadOnlySpan<int> Labels(int index) => Span(_labels, _tokenOffsets, index);
    public ReadOnlySpan<int> SequenceLengths(int index) => Span(_sequenceLengths, _sequenceOffsets, index);

    public TokenizedSample this[int index] => new(InputIds(index).ToArray(), Labels(index).ToArray(), SequenceLengths(index).ToArray());

    private ReadOnlySpan<int> Span(int* data, long* offsets, int index)
    {
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"{Path} holds {Count} samples.");
        var start = offsets[index];
        return new ReadOnlySpan<int>(data + start, checked((int)(offsets[index + 1] - start)));
    }

    public static TokenizedDataset Open(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        if (!File.Exists(full)) throw new DatasetException($"{full}: tokenized dataset not found. Run the split stage first.");
        var length = new FileInfo(full).Length;
        if (length < HeaderSize) throw new DatasetException($"{full}: not a FineTune tokenized dataset (.ftds): {length} bytes. Re-run the split stage.");
        var file = MemoryMappedFile.CreateFromFile(full, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        var view = file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        byte* ptr = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
        try
        {
            return new TokenizedDataset(full, file, view, ptr + view.PointerOffset, length);
        }
        catch
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            file.Dispose();
            throw;
        }
    }

    /// <summary>Recomputes the body hash and compares it with the header's.</summary>
    public bool VerifyContentHash()
    {
        var length = new FileInfo(Path).Length - HeaderSize;
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (long at = 0; at < length; at += int.MaxValue / 2)
            sha.AppendData(new ReadOnlySpan<byte>(_base + HeaderSize + at, (int)Math.Min(int.MaxValue / 2, length - at)));
        return Convert.ToHexStringLower(sha.GetHashAndReset()) == ContentHash;
    }

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _file.Dispose();
    }

    /// <summary>Writes samples (to a temporary file renamed into place) and returns the content hash. Counts not given in <paramref name="stats"/> are computed.</summary>
    public static string Write(string path, IEnumerable<TokenizedSample> samples, TokenizedDatasetStats? stats = null)
    {
        var list = samples as IReadOnlyList<TokenizedSample> ?? samples.ToList();
        long tokens = 0, sequences = 0, trained = 0;
        foreach (var s in list)
        {
            if (s.Labels.Length != s.InputIds.Length)
                throw new ArgumentException($"sample has {s.InputIds.Length} ids but {s.Labels.Length} labels");
            if (s.SequenceLengths.Sum() != s.InputIds.Length)
                throw new ArgumentException($"sequence lengths sum to {s.SequenceLengths.Sum()}, sample has {s.InputIds.Length} tokens");
            tokens += s.InputIds.Length;
            sequences += s.SequenceLengths.Length;
            foreach (var l in s.Labels) if (l != TokenizedSample.IgnoreIndex) trained++;
        }
        var full = System.IO.Path.GetFullPath(path);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(full)!);
        var temp = full + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] hash;
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16))
            {
                stream.Write(new byte[HeaderSize]);
                void Put(ReadOnlySpan<byte> bytes)
                {
                    stream.Write(bytes);
                    sha.AppendData(bytes);
                }
                void PutLongs(IEnumerable<long> values)
                {
                    Span<byte> b = stackalloc byte[8];
                    foreach (var v in values) { BinaryPrimitives.WriteInt64LittleEndian(b, v); Put(b); }
                }
                // Every supported platform is little-endian, so int arrays go out as their bytes.
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian");
                PutLongs(RunningSum(list.Select(s => (long)s.InputIds.Length)));
                PutLongs(RunningSum(list.Select(s => (long)s.SequenceLengths.Length)));
                foreach (var s in list) Put(MemoryMarshal.AsBytes(s.InputIds.AsSpan()));
                foreach (var s in list) Put(MemoryMarshal.AsBytes(s.Labels.AsSpan()));
                foreach (var s in list) Put(MemoryMarshal.AsBytes(s.SequenceLengths.AsSpan()));

                var header = new byte[HeaderSize];
                Magic.CopyTo(header);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), Version);
                var flags = (stats?.Packed == true ? 1 : 0) | (stats?.NeatPacking == true ? 2 : 0);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), flags);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(16), list.Count);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(24), tokens);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), sequences);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(40), trained);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(48), stats?.Truncated ?? 0);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(56), stats?.Dropped ?? 0);
                hash = sha.GetHashAndReset();
                hash.CopyTo(header, 64);
                stream.Position = 0;
                stream.Write(header);
                stream.Flush(true);
            }
            File.Move(temp, full, overwrite: true);
            return Convert.ToHexStringLower(hash);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    private static IEnumerable<long> RunningSum(IEnumerable<long> lengths)
    {
        long sum = 0;
        yield return 0;
        foreach (var l in lengths) yield return sum += l;
    }
}
