using FineTune.Training;
using Xunit;

namespace FineTune.Training.Tests;

public class CollateSequencesTests
{
    [Fact]
    public void The_data_loaders_collation_of_unpacked_rows_is_single_sequences_and_of_packed_rows_is_not()
    {
        var unpacked = DataLoader.Collate(
            [new LoaderSample([1, 2, 3], [1, 2, 3], [3]), new LoaderSample([4, 5], [4, 5], [2])], padTokenId: 0);
        Assert.True(unpacked.RowsAreSingleSequences);
        var packed = DataLoader.Collate(
            [new LoaderSample([1, 2, 3], [1, 2, 3], [2, 1]), new LoaderSample([4, 5], [4, 5], [2])], padTokenId: 0);
        Assert.False(packed.RowsAreSingleSequences);
    }
}
