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

    private static bool Trained(int label) => label != TokenizedSample.IgnoreIndex;
}
