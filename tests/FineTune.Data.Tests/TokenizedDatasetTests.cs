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
