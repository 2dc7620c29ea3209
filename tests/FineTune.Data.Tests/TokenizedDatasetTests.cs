using FineTune.Data.Preprocessing;

namespace FineTune.Data.Tests;

public sealed class TokenizedDatasetTests
{
    private static readonly TokenizedSample[] Samples =
    [
        new([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5], [3, 2]),
        TokenizedSample.Single([7, 8], [7, 8]),
        TokenizedSample.Single([], []),
    ];

    [Fact]
    public void WrittenSamplesReadBackThroughTheMemoryMap()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "train.ftds");
        TokenizedDataset.Write(path, Samples);
        using var ds = TokenizedDataset.Open(path);
        Assert.Equal(3, ds.Count);
        Assert.Equal([1, 2, 3, 4, 5], ds.InputIds(0).ToArray());
        Assert.Equal([-100, -100, 3, 4, 5], ds.Labels(0).ToArray());
        Assert.Equal([3, 2], ds.SequenceLengths(0).ToArray());
        Assert.Equal([7, 8], ds[1].InputIds);
        Assert.Empty(ds[2].InputIds);
    }

    [Fact]
    public void HeaderHoldsCountsAndFlags()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "train.ftds");
        TokenizedDataset.Write(path, Samples, new TokenizedDatasetStats { Truncated = 4, Dropped = 2, Packed = true, NeatPacking = true });
        using var ds = TokenizedDataset.Open(path);
        Assert.Equal((3L, 7L, 5L, 4L, 2L, true, true), (ds.Stats.Samples, ds.Stats.Tokens, ds.Stats.TrainedTokens, ds.Stats.Truncated, ds.Stats.Dropped, ds.Stats.Packed, ds.Stats.NeatPacking));
        // 128-byte header, 2×4 offsets of 8 bytes, 7 ids + 7 labels + 4 sequence lengths of 4 bytes.
        Assert.Equal(128 + 64 + 72, new FileInfo(path).Length);
    }

    [Fact]
    public void ContentHashIsDeterministicAndVerifies()
    {
        using var tmp = new TempDir();
        var a = TokenizedDataset.Write(Path.Combine(tmp.Path, "a.ftds"), Samples);
        var b = TokenizedDataset.Write(Path.Combine(tmp.Path, "b.ftds"), Samples);
        var c = TokenizedDataset.Write(Path.Combine(tmp.Path, "c.ftds"), Samples[..2]);
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.Equal(64, a.Length);
        using var ds = TokenizedDataset.Open(Path.Combine(tmp.Path, "a.ftds"));
        Assert.Equal(a, ds.ContentHash);
        Assert.True(ds.VerifyContentHash());
    }

    [Fact]
    public void CorruptedBodyFailsVerification()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.ftds");
        TokenizedDataset.Write(path, Samples);
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 1;
        File.WriteAllBytes(path, bytes);
        using var ds = TokenizedDataset.Open(path);
        Assert.False(ds.VerifyContentHash());
    }

    [Fact]
    public void TruncatedFileIsRejectedWithAHint()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.ftds");
        TokenizedDataset.Write(path, Samples);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^8]);
        var e = Assert.Throws<DatasetException>(() => TokenizedDataset.Open(path));
        Assert.Contains("truncated tokenized dataset", e.Message);
    }

    [Fact]
    public void NotADatasetIsRejected()
    {
        using var tmp = new TempDir();
        var path = tmp.Write("x.ftds", new string('x', 200));
        var e = Assert.Throws<DatasetException>(() => TokenizedDataset.Open(path));
        Assert.Contains("bad magic", e.Message);
    }
}

/// <summary>The paired and KTO flavours of .ftds, and the supervised bytes they must leave alone.</summary>
public sealed class PreferenceDatasetFileTests
{
    private static readonly TokenizedSample[] Pairs =
    [
        new([1, 2, 3, 1, 2, 4, 5], [-100, -100, 3, -100, -100, 4, 5], [3, 4]),
        new([6, 7, 6, 8], [-100, 7, -100, 8], [2, 2]),
    ];

    private static readonly TokenizedSample[] KtoSamples =
    [
        new([1, 2, 1, 3], [-100, 2, -100, 3], [2, 2], TokenizedSample.Desirable),
        new([4, 5, 4, 2], [-100, 5, -100, 2], [2, 2], TokenizedSample.Undesirable),
        new([6, 7, 6, 5], [-100, 7, -100, 5], [2, 2], TokenizedSample.Desirable),
    ];

    [Fact]
    public void PairedFileRoundTripsWithItsFlag()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "train.ftds");
        TokenizedDataset.Write(path, Pairs, new TokenizedDatasetStats { Paired = true, Truncated = 1, Dropped = 2 });
        using var ds = TokenizedDataset.Open(path);
        Assert.True(ds.IsPaired);
        Assert.False(ds.IsKto);
        Assert.Equal([3, 4], ds.SequenceLengths(0).ToArray());
        Assert.Equal(Pairs[1], ds[1] with { }, new SampleComparer());
        Assert.Equal((2L, 11L, 5L, 1L, 2L), (ds.Stats.Samples, ds.Stats.Tokens, ds.Stats.TrainedTokens, ds.Stats.Truncated, ds.Stats.Dropped));
        var header = File.ReadAllBytes(path)[..128];
        Assert.Equal(4, BitConverter.ToInt32(header, 8));
        Assert.True(ds.VerifyContentHash());
        var e = Assert.Throws<InvalidOperationException>(() => ds.Tag(0));
        Assert.Equal($"{path} is not a KTO dataset; its samples carry no tags.", e.Message);
    }

    [Fact]
    public void KtoFileRoundTripsTagsAndTheDesirableCount()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "train.ftds");
        TokenizedDataset.Write(path, KtoSamples, new TokenizedDatasetStats { Kto = true });
        using var ds = TokenizedDataset.Open(path);
        Assert.True(ds.IsKto);
        Assert.False(ds.IsPaired);
        Assert.Equal([1, 0, 1], Enumerable.Range(0, ds.Count).Select(ds.Tag));
        Assert.Equal(TokenizedSample.Undesirable, ds[1].Tag);
        Assert.Equal(2L, ds.Stats.Desirable);
        var bytes = File.ReadAllBytes(path);
        Assert.Equal(8, BitConverter.ToInt32(bytes, 8));
        Assert.Equal(2L, BitConverter.ToInt64(bytes, 96));
        // 128-byte header, 2×4 offsets of 8 bytes, 12 ids + 12 labels + 6 sequence lengths + 3 tags of 4 bytes; the tags end the file.
        Assert.Equal(128 + 64 + 132, bytes.Length);
        Assert.Equal([1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], bytes[^12..]);
        Assert.True(ds.VerifyContentHash());
    }

    [Fact]
    public void ChangingATagChangesTheContentHash()
    {
        using var tmp = new TempDir();
        var a = TokenizedDataset.Write(Path.Combine(tmp.Path, "a.ftds"), KtoSamples, new TokenizedDatasetStats { Kto = true });
        var flipped = KtoSamples.Select((s, i) => i == 1 ? s with { Tag = TokenizedSample.Desirable } : s).ToArray();
        var b = TokenizedDataset.Write(Path.Combine(tmp.Path, "b.ftds"), flipped, new TokenizedDatasetStats { Kto = true });
        Assert.NotEqual(a, b);
    }

    [Fact]
    public void KtoFileCutBeforeItsTagsIsRejectedAsTruncated()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.ftds");
        TokenizedDataset.Write(path, KtoSamples, new TokenizedDatasetStats { Kto = true });
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..^4]);
        var e = Assert.Throws<DatasetException>(() => TokenizedDataset.Open(path));
        Assert.Equal($"{path}: truncated tokenized dataset (320 bytes, header says 324). Re-run the split stage.", e.Message);
    }

    [Fact]
    public void UnknownFlagsAreRefused()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.ftds");
        TokenizedDataset.Write(path, Pairs, new TokenizedDatasetStats { Paired = true });
        var bytes = File.ReadAllBytes(path);
        bytes[8] = 0x14;
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<DatasetException>(() => TokenizedDataset.Open(path));
        Assert.Equal($"{path}: tokenized dataset flags 0x14 name features this FineTune does not read. Re-run the split stage with this FineTune.", e.Message);
    }

    [Fact]
    public void PairedSampleOfOneSequenceIsRefusedAtWrite()
    {
        using var tmp = new TempDir();
        var e = Assert.Throws<ArgumentException>(() => TokenizedDataset.Write(Path.Combine(tmp.Path, "a.ftds"), [TokenizedSample.Single([1], [1])], new TokenizedDatasetStats { Paired = true }));
        Assert.Equal("a paired sample has two sequences, this one 1", e.Message);
        Assert.Empty(Directory.GetFiles(tmp.Path));
    }

    [Fact]
    public void SupervisedFileKeepsTheFirstVersionsHeaderBytes()
    {
        using var tmp = new TempDir();
        var path = Path.Combine(tmp.Path, "a.ftds");
        TokenizedDataset.Write(path, [new([1, 2], [-100, 2], [2])], new TokenizedDatasetStats { Packed = true });
        var header = File.ReadAllBytes(path)[..128];
        Assert.Equal("FTDS"u8.ToArray(), header[..4]);
        Assert.Equal((1, 1), (BitConverter.ToInt32(header, 4), BitConverter.ToInt32(header, 8)));
        Assert.All(header[96..], b => Assert.Equal(0, b));
        Assert.All(header[12..16], b => Assert.Equal(0, b));
    }

    private sealed class SampleComparer : IEqualityComparer<TokenizedSample>
    {
        public bool Equals(TokenizedSample? a, TokenizedSample? b) => a is not null && b is not null &&
            a.InputIds.SequenceEqual(b.InputIds) && a.Labels.SequenceEqual(b.Labels) && a.SequenceLengths.SequenceEqual(b.SequenceLengths) && a.Tag == b.Tag;
        public int GetHashCode(TokenizedSample s) => s.InputIds.Length;
    }
}
