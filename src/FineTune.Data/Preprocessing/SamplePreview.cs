using FineTune.Tokenizers;

namespace FineTune.Data.Preprocessing;

/// <summary>A stretch of a sample's text whose tokens are all trained or all masked.</summary>
public sealed record PreviewSegment(string Text, bool Trained, int Tokens);

/// <summary>
/// The text of a tokenized sample cut where training switches on or off — what `finetune data preview` colours.
/// Each stretch is decoded on its own (special tokens shown), so the stretches joined are the sample's text.
/// </summary>
public static class SamplePreview
{
    public static IReadOnlyList<PreviewSegment> Segments(Tokenizer tokenizer, ReadOnlySpan<int> inputIds, ReadOnlySpan<int> labels)
    {
        var segments = new List<PreviewSegment>();
        var start = 0;
        for (var i = 1; i <= inputIds.Length; i++)
        {
            if (i < inputIds.Length && Trained(labels[i]) == Trained(labels[start])) continue;
            segments.Add(new PreviewSegment(tokenizer.Decode(inputIds[start..i]), Trained(labels[start]), i - start));
            start = i;
        }
        return segments;
    }

    /// <summary>
    /// The sequences a conversation becomes, titled for the preview: one for sft/pt; "chosen" and "rejected" for a
    /// preference pair; for a KTO sample the completion (titled with its tag) and the KL sequence, whose completion is
    /// <paramref name="previous"/>'s (split takes the sample before it in the split's order; the preview, in the
    /// registered order).
    /// </summary>
    public static IReadOnlyList<PreviewSequence> Sequences(Preprocessor preprocessor, PreprocessStage stage, Conversation conversation, Conversation? previous)
    {
        if (stage == PreprocessStage.Pt)
        {
            var sample = preprocessor.Process([conversation]).Samples[0];
            return [new PreviewSequence("text", sample.InputIds, sample.Labels, false)];
        }
        if (conversation.IsPair)
        {
            var pair = preprocessor.EncodePair(conversation);
            return [new("chosen", pair.Chosen.InputIds, pair.Chosen.Labels, pair.Truncated), new("rejected", pair.Rejected.InputIds, pair.Rejected.Labels, pair.Truncated)];
        }
        if (conversation.KtoTag.HasValue)
        {
            var kto = preprocessor.EncodeKto(conversation, (previous ?? conversation).Messages[^1]);
            return [new(kto.Desirable ? "kto_tag true (desirable)" : "kto_tag false (undesirable)", kto.Completion.InputIds, kto.Completion.Labels, kto.Truncated),
                    new($"KL: its prompt, the completion of {(previous ?? conversation).Source}", kto.Kl.InputIds, kto.Kl.Labels, kto.Truncated)];
        }
        var (ids, labels, truncated) = preprocessor.EncodeSupervised(conversation);
        return [new PreviewSequence("", ids, labels, truncated)];
    }

    private static bool Trained(int label) => label != TokenizedSample.IgnoreIndex;
}

/// <summary>One sequence of a previewed sample: what it is (empty for a plain supervised sample), ids, labels.</summary>
public sealed record PreviewSequence(string Title, int[] InputIds, int[] Labels, bool Truncated);
