using FineTune.Training;

namespace FineTune.Training.Tests;

public sealed class TrainingRngTests
{
    [Fact]
    public void Restored_state_continues_the_same_stream()
    {
        var a = new TrainingRng(42);
        a.NextUInt64(); a.NextUInt64();
        var b = TrainingRng.FromState(a.State);
        Assert.Equal(Enumerable.Range(0, 5).Select(_ => a.NextUInt64()), Enumerable.Range(0, 5).Select(_ => b.NextUInt64()));
    }

    [Fact]
    public void Same_seed_gives_same_epoch_order_and_epochs_differ()
    {
        var e0 = TrainingRng.EpochPermutation(7, 0, 10);
        Assert.Equal(e0, TrainingRng.EpochPermutation(7, 0, 10));
        Assert.NotEqual(e0, TrainingRng.EpochPermutation(7, 1, 10));
        Assert.Equal(Enumerable.Range(0, 10), e0.Order());
    }

    [Fact]
    public void NextInt_stays_in_range()
    {
        var rng = new TrainingRng(1);
        var seen = new HashSet<int>();
        for (int i = 0; i < 1000; i++) seen.Add(rng.NextInt(5));
        Assert.Equal([0, 1, 2, 3, 4], seen.Order());
    }
}
