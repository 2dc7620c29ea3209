using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace FineTune.Data.Preprocessing;

/// <summary>
/// One training sample: token ids, labels (-100 = not trained) and the lengths of the sequences packed into it.
/// A preference pair is one sample of two sequences, [chosen, rejected]; a KTO sample is [completion, KL completion]
/// with <see cref="Tag"/> 1 (desirable) or 0 (undesirable).
/// </summary>
public sealed record TokenizedSample(int[] InputIds, int[] Labels, int[] SequenceLengths, int? Tag = null)
{
    public const int IgnoreIndex = -100;

    /// <summary>Values of <see cref="Tag"/> (KTO's kto_tag).</summary>
    public const int Desirable = 1, Undesirable = 0;

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
    /// <summary>Every sample is a preference pair: sequences [chosen, rejected] sharing one prompt.</summary>
    public bool Paired { get; init; }
    /// <summary>Every sample is a KTO sample: sequences [completion, KL completion] and a tag.</summary>
    public bool Kto { get; init; }
    /// <summary>KTO samples tagged desirable (the rest are undesirable); 0 for other files.</summary>
    public long Desirable { get; init; }
}

/// <summary>
/// A compact, memory-mapped file of tokenized samples (<c>.ftds</c>). Layout (little-endian):
/// a 128-byte header (magic "FTDS", version, flags, counts, SHA-256 of the body), then
/// int64 token offsets [count+1], int64 sequence offsets [count+1], int32 input ids, int32 labels,
/// int32 sequence lengths, and for KTO files int32 tags [count]. Sample i spans tokens [offset[i], offset[i+1]).
/// Header: 0 magic, 4 version, 8 flags (1 packed, 2 neat_packing, 4 paired, 8 kto), 16 samples, 24 tokens,
/// 32 sequences, 40 trained tokens, 48 truncated, 56 dropped, 64 SHA-256, 96 desirable (kto), 104–127 zero.
/// The new flags and fields are zero in supervised files, whose bytes are those of the first version.
/// </summary>
public sealed unsafe class TokenizedDataset : IDisposable
{
    public const int Version = 1;
    private const int HeaderSize = 128;
    private const int PackedFlag = 1, NeatPackingFlag = 2, PairedFlag = 4, KtoFlag = 8, KnownFlags = 15;
    private static ReadOnlySpan<byte> Magic => "FTDS"u8;

    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly long* _tokenOffsets;
    private readonly long* _sequenceOffsets;
    private readonly int* _ids;
    private readonly int* _labels;
    private readonly int* _sequenceLengths;
    private readonly int* _tags;

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
        if ((flags & ~KnownFlags) != 0)
            throw new DatasetException($"{path}: tokenized dataset flags 0x{flags:x} name features this FineTune does not read. Re-run the split stage with this FineTune.");
        Count = checked((int)BinaryPrimitives.ReadInt64LittleEndian(header[16..]));
        var tokens = BinaryPrimitives.ReadInt64LittleEndian(header[24..]);
        var sequences = BinaryPrimitives.ReadInt64LittleEndian(header[32..]);
        Stats = new TokenizedDatasetStats
        {
            Samples = Count, Tokens = tokens,
            TrainedTokens = BinaryPrimitives.ReadInt64LittleEndian(header[40..]),
            Truncated = BinaryPrimitives.ReadInt64LittleEndian(header[48..]),
            Dropped = BinaryPrimitives.ReadInt64LittleEndian(header[56..]),
            Packed = (flags & PackedFlag) != 0, NeatPacking = (flags & NeatPackingFlag) != 0,
            Paired = (flags & PairedFlag) != 0, Kto = (flags & KtoFlag) != 0,
            Desirable = BinaryPrimitives.ReadInt64LittleEndian(header[96..]),
        };
        ContentHash = Convert.ToHexStringLower(header.Slice(64, 32));
        var expected = HeaderSize + 16L * (Count + 1) + 8 * tokens + 4 * sequences + (Stats.Kto ? 4L * Count : 0);
        if (length < expected)
            throw new DatasetException($"{path}: truncated tokenized dataset ({length} bytes, header says {expected}). Re-run the split stage.");
        _tokenOffsets = (long*)(basePtr + HeaderSize);
        _sequenceOffsets = _tokenOffsets + Count + 1;
        _ids = (int*)(_sequenceOffsets + Count + 1);
        _labels = _ids + tokens;
        _sequenceLengths = _labels + tokens;
        _tags = Stats.Kto ? _sequenceLengths + sequences : null;
    }

    public string Path { get; }
    public int Count { get; }
    public TokenizedDatasetStats Stats { get; }
    /// <summary>SHA-256 (hex) of everything after the header: offsets, ids, labels, sequence lengths.</summary>
    public string ContentHash { get; }

    public ReadOnlySpan<int> InputIds(int index) => Span(_ids, _tokenOffsets, index);
    public ReadOnlySpan<int> Labels(int index) => Span(_labels, _tokenOffsets, index);
    public ReadOnlySpan<int> SequenceLengths(int index) => Span(_sequenceLengths, _sequenceOffsets, index);

    /// <summary>Each sample is a preference pair: <see cref="SequenceLengths"/> is [chosen, rejected].</summary>
    public bool IsPaired => Stats.Paired;
    /// <summary>Each sample is a KTO sample: <see cref="SequenceLengths"/> is [completion, KL completion], <see cref="Tag"/> its kto_tag.</summary>
    public bool IsKto => Stats.Kto;

    /// <summary>The kto_tag of a KTO sample: <see cref="TokenizedSample.Desirable"/> (1) or <see cref="TokenizedSample.Undesirable"/> (0).</summary>
    public int Tag(int index)
    {
        if (_tags is null) throw new InvalidOperationException($"{Path} is not a KTO dataset; its samples carry no tags.");
        if ((uint)index >= (uint)Count) throw new ArgumentOutOfRangeException(nameof(index), index, $"{Path} holds {Count} samples.");
        return _tags[index];
    }

    public TokenizedSample this[int index] => new(InputIds(index).ToArray(), Labels(index).ToArray(), SequenceLengths(index).ToArray(), IsKto ? Tag(index) : null);

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
        var paired = stats?.Paired == true;
        var kto = stats?.Kto == true;
        if (paired && kto) throw new ArgumentException("a tokenized dataset holds preference pairs or KTO samples, not both");
        long tokens = 0, sequences = 0, trained = 0, desirable = 0;
        foreach (var s in list)
        {
            if ((paired || kto) && s.SequenceLengths.Length != 2)
                throw new ArgumentException($"a {(kto ? "KTO" : "paired")} sample has two sequences, this one {s.SequenceLengths.Length}");
            if (kto != s.Tag.HasValue)
                throw new ArgumentException(kto ? "a KTO sample needs a tag" : "only KTO samples carry a tag");
            if (s.Tag is { } tag and not (TokenizedSample.Desirable or TokenizedSample.Undesirable))
                throw new ArgumentException($"a KTO tag is 1 (desirable) or 0 (undesirable), got {tag}");
            if (s.Tag == TokenizedSample.Desirable) desirable++;
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
                if (kto)
                {
                    int[] tags = [.. list.Select(s => s.Tag!.Value)];
                    Put(MemoryMarshal.AsBytes(tags.AsSpan()));
                }

                var header = new byte[HeaderSize];
                Magic.CopyTo(header);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), Version);
                var flags = (stats?.Packed == true ? PackedFlag : 0) | (stats?.NeatPacking == true ? NeatPackingFlag : 0) |
                            (paired ? PairedFlag : 0) | (kto ? KtoFlag : 0);
                BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), flags);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(16), list.Count);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(24), tokens);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(32), sequences);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(40), trained);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(48), stats?.Truncated ?? 0);
                BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(56), stats?.Dropped ?? 0);
                if (kto) BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(96), desirable);
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
