using FineTune.Models;
using Xunit;

namespace FineTune.Models.Tests;

public class TokenBatchSequencesTests
{
    static TokenBatch Batch(int[] segments, int[]? mask, int[]? labels = null, int seqLen = 4)
    {
        int n = segments.Length;
        return new TokenBatch(n / seqLen, seqLen, new int[n], labels ?? Enumerable.Repeat(-100, n).ToArray(), new int[n], segments) { AttentionMask = mask };
    }

    [Fact]
    public void Rows_of_one_segment_each_are_single_sequences()
    {
        Assert.True(Batch([0, 0, 0, 0, 0, 0, 0, 0], null).RowsAreSingleSequences);
        Assert.True(Batch([3, 3, 3, 3], null).RowsAreSingleSequences);
    }

    [Fact]
    public void A_sequence_then_masked_unlabelled_padding_is_a_single_sequence()
    {
        Assert.True(Batch([0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1, 1, 1]).RowsAreSingleSequences);
    }

    [Fact]
    public void Packed_rows_are_not_single_sequences()
    {
        // Two real sequences in row 0 (the second unmasked).
        Assert.False(Batch([0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]).RowsAreSingleSequences);
        // Without a mask, a second segment cannot be told from a sequence.
        Assert.False(Batch([0, 0, 1, 1], null).RowsAreSingleSequences);
        // Three segments: a sequence, another, then padding.
        Assert.False(Batch([0, 1, 2, 2], [1, 1, 0, 0]).RowsAreSingleSequences);
        // A labelled "padding" position carries loss: not padding.
        Assert.False(Batch([0, 0, 1, 1], [1, 1, 0, 0], [-100, -100, 5, -100]).RowsAreSingleSequences);
    }
}
