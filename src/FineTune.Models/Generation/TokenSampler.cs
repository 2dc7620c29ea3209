using FineTune.Engine.Sampling;

namespace FineTune.Models.Generation;

/// <summary>
/// Picks the next token from one row of logits with Hugging Face generate()'s processors in order: repetition
/// penalty, then greedy argmax, or temperature → top-k → top-p → a draw from the kept tokens. The kept tokens are
/// ordered by descending logit with ties to the lower id, so a seed reproduces the same draw on every machine.
/// The arithmetic is the engine's reference (<see cref="TokenSampling"/>), which the backends' SampleRows run too.
/// </summary>
public static class TokenSampler
{
    public static int Pick(Span<float> logits, IReadOnlySet<int>? seen, GenerationOptions o, Random rng)
    {
        if (o.DoSample && o.Temperature <= 0) throw new ArgumentException($"temperature must be positive when sampling, got {o.Temperature}");
        int[] ids = o.RepetitionPenalty != 1.0 && seen is not null ? [.. seen] : [];
        return TokenSampling.Pick(logits, ids, Row(o, o.DoSample ? rng.NextDouble() : 0, 0, ids.Length));
    }

    /// <summary>The row settings of <paramref name="o"/> with the draw <paramref name="uniform"/>.</summary>
    internal static SamplingRow Row(GenerationOptions o, double uniform, int seenStart, int seenCount) =>
        new(o.DoSample, o.Temperature, o.TopK, o.TopP, o.RepetitionPenalty, uniform, seenStart, seenCount);

    /// <summary>The first index of the largest value (NaN never wins).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits) => TokenSampling.ArgMax(logits);
}
