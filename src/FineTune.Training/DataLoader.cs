using FineTune.Models;

namespace FineTune.Training;

/// <summary>One sample as the loader reads it: token ids, HF-aligned labels (labels[t] is token t itself or −100),
/// and the lengths of the sequences packed into it (one entry when not packed).</summary>
public sealed record LoaderSample(int[] InputIds, int[] Labels, int[] SequenceLengths);

/// <summary>Where the loader stands: the epoch and the index of the next micro-batch within it. Saved in checkpoints.</summary>
public readonly record struct DataPosition(int Epoch, int MicroBatch);

/// <summary>
/// A deterministic loader: each epoch visits every sample once in an order shuffled from (seed, epoch)
/// (or in file order without shuffle), groups them into micro-batches of <c>per_device_train_batch_size</c>
/// (the last one may be smaller) and collates each into a <see cref="TokenBatch"/>. Because the order is a
/// pure function of (seed, epoch), a <see cref="DataPosition"/> is all a checkpoint needs to continue.
/// </summary>
public sealed class DataLoader
{
    readonly Func<int, LoaderSample> _read;
    readonly ulong _seed;
    readonly bool _shuffle;
    int[]? _order;
    int _orderEpoch = -1;

    public DataLoader(int sampleCount, Func<int, LoaderSample> read, int batchSize, ulong seed, bool shuffle, int padTokenId)
    {
        if (sampleCount <= 0) throw new TrainingException("The dataset has no samples; check the split stage's output (train.ftds) and the dataset it was built from.");
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batch size must be positive");
        SampleCount = sampleCount;
        _read = read;
        BatchSize = batchSize;
        _seed = seed;
        _shuffle = shuffle;
        PadTokenId = padTokenId;
    }

    public int SampleCount { get; }
    public int BatchSize { get; }
    public int PadTokenId { get; }
    public DataPosition Position { get; set; }

    /// <summary>⌈samples / batch size⌉.</summary>
    public int MicroBatchesPerEpoch => (SampleCount + BatchSize - 1) / BatchSize;

    /// <summary>Optimizer steps per epoch with <paramref name="accumulation"/> micro-batches per step: ⌈micro-batches / accumulation⌉
    /// (an epoch's last step takes the micro-batches that remain).</summary>
    public int StepsPerEpoch(int accumulation) => (MicroBatchesPerEpoch + accumulation - 1) / accumulation;

    /// <summary>Sample indices of one epoch, in visiting order.</summary>
    public int[] EpochOrder(int epoch)
    {
        if (_orderEpoch != epoch)
        {
            _order = _shuffle ? TrainingRng.EpochPermutation(_seed, epoch, SampleCount) : Enumerable.Range(0, SampleCount).ToArray();
            _orderEpoch = epoch;
        }
        return _order!;
    }

    /// <summary>The micro-batch at a position (does not move the loader).</summary>
    public TokenBatch MicroBatch(DataPosition at) => MicroBatch(at, out _);

    /// <summary>The micro-batch at a position and its number of real (non-padding) tokens.</summary>
    public TokenBatch MicroBatch(DataPosition at, out long tokens)
    {
        var order = EpochOrder(at.Epoch);
        int start = at.MicroBatch * BatchSize;
        int end = Math.Min(start + BatchSize, SampleCount);
        var rows = new LoaderSample[end - start];
        tokens = 0;
        for (int i = start; i < end; i++)
        {
            rows[i - start] = _read(order[i]);
            tokens += rows[i - start].InputIds.Length;
        }
        return Collate(rows, PadTokenId);
    }

    /// <summary>
    /// The micro-batches of the next optimizer step: up to <paramref name="accumulation"/> from the current epoch
    /// (fewer at its end); the position then moves on, to the next epoch after the last micro-batch.
    /// </summary>
    public IReadOnlyList<TokenBatch> NextStep(int accumulation) => NextStep(accumulation, out _);

    /// <inheritdoc cref="NextStep(int)"/>
    public IReadOnlyList<TokenBatch> NextStep(int accumulation, out long tokens) =>
        NextStepBatches(accumulation, out tokens).Select(b => b.Batch).ToList();

    /// <summary>The micro-batches of the next optimizer step with the dataset index of each row (objectives that keep per-sample state, such as reference log-probs, look them up by it).</summary>
    public IReadOnlyList<StepBatch> NextStepBatches(int accumulation, out long tokens)
    {
        var batches = new List<StepBatch>(accumulation);
        var pos = Position;
        tokens = 0;
        while (batches.Count < accumulation && pos.MicroBatch < MicroBatchesPerEpoch)
        {
            var order = EpochOrder(pos.Epoch);
            int start = pos.MicroBatch * BatchSize, end = Math.Min(start + BatchSize, SampleCount);
            batches.Add(new StepBatch(MicroBatch(pos, out long t), order[start..end]));
            tokens += t;
            pos = pos with { MicroBatch = pos.MicroBatch + 1 };
        }
        Position = pos.MicroBatch >= MicroBatchesPerEpoch ? new DataPosition(pos.Epoch + 1, 0) : pos;
        return batches;
    }

    /// <summary>All micro-batches of one pass in file order (evaluation).</summary>
    public IEnumerable<TokenBatch> Sequential()
    {
        for (int b = 0; b < MicroBatchesPerEpoch; b++)
        {
            int start = b * BatchSize, end = Math.Min(start + BatchSize, SampleCount);
            var rows = new LoaderSample[end - start];
            for (int i = start; i < end; i++) rows[i - start] = _read(i);
            yield return Collate(rows, PadTokenId);
        }
    }

    /// <summary>
    /// Right-pads rows to the longest one. Per packed sequence: positions restart at 0, the segment id is the
    /// sequence's index in its row, and labels are shifted for next-token prediction (the engine's convention):
    /// target[t] = labels[t+1] inside the sequence, −100 on its last token, so no sequence predicts into the next.
    /// Padding gets input id <paramref name="padTokenId"/>, label −100, its own segment (one past the last sequence)
    /// and positions counting from 0.
    /// </summary>
    public static TokenBatch Collate(IReadOnlyList<LoaderSample> rows, int padTokenId)
    {
        int seqLen = 0;
        foreach (var r in rows) seqLen = Math.Max(seqLen, r.InputIds.Length);
        int b = rows.Count, n = b * seqLen;
        var ids = new int[n];
        var labels = new int[n];
        var positions = new int[n];
        var segments = new int[n];
        var mask = new int[n]; // HF's attention_mask: 1 on tokens, 0 on padding (the MoE load-balancing loss reads it)
        for (int row = 0; row < b; row++)
        {
            var s = rows[row];
            if (s.Labels.Length != s.InputIds.Length)
                throw new TrainingException($"Sample with {s.InputIds.Length} input ids has {s.Labels.Length} labels; the tokenized dataset is damaged — re-run the split stage.");
            if (s.SequenceLengths.Sum() != s.InputIds.Length)
                throw new TrainingException($"Sample of {s.InputIds.Length} tokens declares packed sequence lengths summing to {s.SequenceLengths.Sum()}; the tokenized dataset is damaged — re-run the split stage.");
            int o = row * seqLen, t = 0;
            for (int seg = 0; seg < s.SequenceLengths.Length; seg++)
            {
                int len = s.SequenceLengths[seg];
                for (int i = 0; i < len; i++, t++)
                {
                    ids[o + t] = s.InputIds[t];
                    labels[o + t] = i + 1 < len ? s.Labels[t + 1] : -100;
                    positions[o + t] = i;
                    segments[o + t] = seg;
                    mask[o + t] = 1;
                }
            }
            for (int p = 0; t < seqLen; t++, p++)
            {
                ids[o + t] = padTokenId;
                labels[o + t] = -100;
                positions[o + t] = p;
                segments[o + t] = s.SequenceLengths.Length;
            }
        }
        return new TokenBatch(b, seqLen, ids, labels, positions, segments) { AttentionMask = mask };
    }
}

/// <summary>Loaders over the split stage's tokenized files.</summary>
public static class TokenizedDatasetLoader
{
    /// <summary>A loader over <paramref name="dataset"/> (at most <paramref name="maxSamples"/> samples, the first ones).</summary>
    public static DataLoader Create(FineTune.Data.Preprocessing.TokenizedDataset dataset, int batchSize, ulong seed, bool shuffle,
        int padTokenId, int? maxSamples = null)
    {
        int count = maxSamples is int m ? Math.Min(m, dataset.Count) : dataset.Count;
        if (count == 0)
            throw new TrainingException($"{dataset.Path} holds no samples; check the dataset and the split stage's cutoff_len/val_size.");
        return new DataLoader(count,
            i => new LoaderSample(dataset.InputIds(i).ToArray(), dataset.Labels(i).ToArray(), dataset.SequenceLengths(i).ToArray()),
            batchSize, seed, shuffle, padTokenId);
    }
}
