namespace FineTune.Models;

/// <summary>
/// One micro-batch of BatchSize rows of SeqLen tokens, row-major. Labels use -100 for positions that carry no
/// loss and are already aligned with the prediction: Labels[t] is the token the model should predict at
/// position t (the caller shifts, as HF's collator does: labels[t] = input_ids[t+1]).
/// SegmentIds: attention is causal and only between tokens with the same segment id (packed sequences;
/// padding gets its own segment); segments are contiguous runs within a row.
/// PositionIds restart at 0 in every packed sequence.
/// </summary>
public sealed record TokenBatch(int BatchSize, int SeqLen, int[] InputIds, int[] Labels, int[] PositionIds, int[] SegmentIds)
{
    public int TokenCount => BatchSize * SeqLen;

    /// <summary>
    /// HF's attention_mask: 1 on tokens, 0 on padding (null: every position is a token). Attention reads the segment ids;
    /// this mask only weighs the tokens of the mixture-of-experts load-balancing loss, as transformers' does.
    /// </summary>
    public int[]? AttentionMask { get; init; }

    /// <summary>
    /// True when every row is one sequence (one segment id throughout), or one sequence followed by padding: a last
    /// segment that <see cref="AttentionMask"/> marks 0 everywhere and that carries no label. Attention over such rows
    /// may ignore the segment ids (<see cref="FineTune.Engine.AttentionShape.Unpacked"/>).
    /// </summary>
    public bool RowsAreSingleSequences
    {
        get
        {
            for (int r = 0; r < BatchSize; r++)
            {
                int o = r * SeqLen, t = 1;
                while (t < SeqLen && SegmentIds[o + t] == SegmentIds[o]) t++;
                if (t == SeqLen) continue;
                if (AttentionMask is not { } mask) return false;
                for (int p = t; p < SeqLen; p++)
                    if (SegmentIds[o + p] != SegmentIds[o + t] || mask[o + p] != 0 || Labels[o + p] != -100) return false;
                // The sequence's last position predicts nothing into the padding either (collators write -100 there).
            }
            return true;
        }
    }

    /// <summary>Number of positions with a label other than -100 (the loss's denominator).</summary>
    public int LabelCount
    {
        get
        {
            int n = 0;
            foreach (int l in Labels) if (l != -100) n++;
            return n;
        }
    }

    /// <summary>Checks that every array has BatchSize·SeqLen entries.</summary>
    public void Validate()
    {
        int n = BatchSize * SeqLen;
        if (BatchSize <= 0 || SeqLen <= 0) throw new ArgumentException($"token batch of {BatchSize}×{SeqLen} is empty");
        if (InputIds.Length != n || Labels.Length != n || PositionIds.Length != n || SegmentIds.Length != n)
            throw new ArgumentException($"token batch {BatchSize}×{SeqLen} needs {n} entries per array, got input_ids {InputIds.Length}, labels {Labels.Length}, position_ids {PositionIds.Length}, segment_ids {SegmentIds.Length}");
        if (AttentionMask is { } mask && mask.Length != n)
            throw new ArgumentException($"token batch {BatchSize}×{SeqLen} needs {n} attention_mask entries, got {mask.Length}");
    }

    /// <summary>
    /// A batch from unpacked rows: each row holds one sequence, right-padded with <paramref name="padId"/>.
    /// Labels are the next token (shifted by one; -100 at the end and on padding) unless given.
    /// </summary>
    public static TokenBatch FromSequences(IReadOnlyList<int[]> sequences, int seqLen, int padId = 0, IReadOnlyList<int[]>? labels = null)
    {
        int b = sequences.Count;
        var ids = new int[b * seqLen];
        var lab = new int[b * seqLen];
        var pos = new int[b * seqLen];
        var seg = new int[b * seqLen];
        Array.Fill(lab, -100);
        for (int r = 0; r < b; r++)
        {
            int[] s = sequences[r];
            if (s.Length > seqLen) throw new ArgumentException($"sequence {r} has {s.Length} tokens, more than the sequence length {seqLen}");
            for (int t = 0; t < seqLen; t++)
            {
                int i = r * seqLen + t;
                ids[i] = t < s.Length ? s[t] : padId;
                pos[i] = t < s.Length ? t : t - s.Length;
                seg[i] = t < s.Length ? 0 : 1;
                if (labels is not null) lab[i] = t < labels[r].Length ? labels[r][t] : -100;
                else if (t + 1 < s.Length) lab[i] = s[t + 1];
            }
        }
        var mask = new int[b * seqLen];
        for (int r = 0; r < b; r++)
            for (int t = 0; t < Math.Min(seqLen, sequences[r].Length); t++) mask[r * seqLen + t] = 1;
        return new TokenBatch(b, seqLen, ids, lab, pos, seg) { AttentionMask = mask };
    }
}

/// <summary>Summed token cross-entropy (nats) and the number of labelled tokens it sums over.</summary>
public sealed record LossResult(double SumLoss, int TokenCount)
{
    /// <summary>
    /// Mixture-of-experts models training with the load-balancing loss (<see cref="CausalLM.RouterAuxLossCoef"/> ≠ 0): the
    /// micro-batch's router aux loss (transformers' aux_loss, before the coefficient); coefficient × it is in the gradient,
    /// not in <see cref="SumLoss"/>. Null otherwise.
    /// </summary>
    public double? RouterAuxLoss { get; init; }

    public double MeanLoss => TokenCount == 0 ? 0 : SumLoss / TokenCount;
}
