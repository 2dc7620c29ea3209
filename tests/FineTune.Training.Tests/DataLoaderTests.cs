using FineTune.Training;

namespace FineTune.Training.Tests;

public sealed class DataLoaderTests
{
    // Sample i: ids 10i+1 .. 10i+len, labels equal to ids except the first token (a one-token "prompt").
    static LoaderSample Sample(int i, int len)
    {
        var ids = Enumerable.Range(10 * i + 1, len).ToArray();
        var labels = ids.Select((t, k) => k == 0 ? -100 : t).ToArray();
        return new LoaderSample(ids, labels, [len]);
    }

    static DataLoader Loader(int count, int batch, bool shuffle = true, ulong seed = 3) =>
        new(count, i => Sample(i, 2 + i % 3), batch, seed, shuffle, padTokenId: 0);

    [Fact]
    public void Collate_right_pads_shifts_labels_and_gives_padding_its_own_segment()
    {
        var b = DataLoader.Collate([new LoaderSample([5, 6, 7], [-100, 6, 7], [3]), new LoaderSample([8, 9], [-100, 9], [2])], padTokenId: 0);
        Assert.Equal((2, 3), (b.BatchSize, b.SeqLen));
        Assert.Equal([5, 6, 7, 8, 9, 0], b.InputIds);
        Assert.Equal([6, 7, -100, 9, -100, -100], b.Labels);
        Assert.Equal([0, 1, 2, 0, 1, 0], b.PositionIds);
        Assert.Equal([0, 0, 0, 0, 0, 1], b.SegmentIds);
    }

    [Fact]
    public void Collate_restarts_positions_and_segments_per_packed_sequence()
    {
        // Two packed sequences (3 + 2 tokens); no label crosses from the first into the second.
        var b = DataLoader.Collate([new LoaderSample([1, 2, 3, 4, 5], [-100, 2, 3, -100, 5], [3, 2])], padTokenId: 0);
        Assert.Equal([0, 1, 2, 0, 1], b.PositionIds);
        Assert.Equal([0, 0, 0, 1, 1], b.SegmentIds);
        Assert.Equal([2, 3, -100, 5, -100], b.Labels);
    }

    [Fact]
    public void Collate_rejects_lengths_that_do_not_cover_the_sample()
    {
        var e = Assert.Throws<TrainingException>(() => DataLoader.Collate([new LoaderSample([1, 2, 3], [1, 2, 3], [2])], 0));
        Assert.Contains("re-run the split stage", e.Message);
    }

    [Fact]
    public void An_epoch_visits_every_sample_once_in_micro_batches_with_a_short_last_one()
    {
        var loader = Loader(count: 7, batch: 3);
        var firstIds = new List<int>();
        var sizes = new List<int>();
        for (int k = 0; k < 3; k++)
        {
            var step = loader.NextStep(1);
            sizes.Add(step[0].BatchSize);
            for (int r = 0; r < step[0].BatchSize; r++) firstIds.Add(step[0].InputIds[r * step[0].SeqLen]);
        }
        Assert.Equal([3, 3, 1], sizes);
        Assert.Equal(Enumerable.Range(0, 7).Select(i => 10 * i + 1), firstIds.Order());
        Assert.Equal(new DataPosition(1, 0), loader.Position);
    }

    [Fact]
    public void Steps_per_epoch_round_up_and_the_last_step_takes_what_remains()
    {
        var loader = Loader(count: 10, batch: 2); // 5 micro-batches
        Assert.Equal(3, loader.StepsPerEpoch(2));
        loader.NextStep(2); loader.NextStep(2);
        Assert.Single(loader.NextStep(2));
        Assert.Equal(new DataPosition(1, 0), loader.Position);
    }

    [Fact]
    public void A_loader_placed_at_a_saved_position_continues_with_the_same_batches()
    {
        var a = Loader(count: 9, batch: 2);
        a.NextStep(1); a.NextStep(1); a.NextStep(1);
        var saved = a.Position;
        var expected = a.NextStep(2);
        var b = Loader(count: 9, batch: 2);
        b.Position = saved;
        var actual = b.NextStep(2);
        Assert.Equal(expected.SelectMany(x => x.InputIds), actual.SelectMany(x => x.InputIds));
    }

    [Fact]
    public void Different_seeds_shuffle_differently() =>
        Assert.NotEqual(Loader(20, 4, seed: 1).EpochOrder(0), Loader(20, 4, seed: 2).EpochOrder(0));

    [Fact]
    public void Without_shuffle_the_order_is_the_file_order() =>
        Assert.Equal(Enumerable.Range(0, 5), Loader(5, 2, shuffle: false).EpochOrder(3));

    [Fact]
    public void Step_tokens_count_real_tokens_only()
    {
        var loader = Loader(count: 3, batch: 3, shuffle: false); // lengths 2, 3, 4
        loader.NextStep(1, out long tokens);
        Assert.Equal(9, tokens);
    }
}
