using FineTune.Models;

namespace FineTune.Training.Evaluation;

/// <summary>Decoding settings with Hugging Face generate()'s names and meanings.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 64;
    public bool DoSample { get; init; }
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    public int TopK { get; init; } = 50;
    public double RepetitionPenalty { get; init; } = 1.0;
    public ulong Seed { get; init; } = 42;
    /// <summary>Generation stops after emitting any of these (EOS and the template's stop words); they are not returned.</summary>
    public IReadOnlyCollection<int> StopTokenIds { get; init; } = [];
}

/// <summary>
/// Greedy or sampled decoding that runs the whole prefix through <see cref="CausalLM.ForwardLogits"/> for every
/// new token — O(n²) but exact, and enough for evaluation on the small models CPU runs use. (A KV-cache
/// generator in the engine makes long generations fast; this one needs nothing but the forward pass.)
/// Logit processing follows HF's order: repetition penalty, temperature, top-k, top-p.
/// </summary>
public static class RecomputeDecoder
{
    public static int[] Generate(CausalLM model, int[] prompt, GenerationOptions options)
    {
        if (prompt.Length == 0) throw new ArgumentException("A prompt needs at least one token.", nameof(prompt));
        var rng = new TrainingRng(options.Seed);
        var sequence = new List<int>(prompt);
        var generated = new List<int>();
        int vocab = model.Spec.VocabSize;
        var scores = new double[vocab];
        while (generated.Count < options.MaxNewTokens && sequence.Count < model.Spec.MaxPositionEmbeddings)
        {
            var ids = sequence.ToArray();
            var logits = model.ForwardLogits(TokenBatch.FromSequences([ids], ids.Length));
            int offset = (ids.Length - 1) * vocab;
            for (int v = 0; v < vocab; v++) scores[v] = logits[offset + v];
            int next = Pick(scores, sequence, options, rng);
            if (options.StopTokenIds.Contains(next)) break;
            generated.Add(next);
            sequence.Add(next);
        }
        return [.. generated];
    }

    static int Pick(double[] scores, List<int> context, GenerationOptions o, TrainingRng rng)
    {
        // Repetition penalty (CTRL): a seen token's positive logit is divided by the penalty, a negative one multiplied.
        if (o.RepetitionPenalty != 1.0)
            foreach (int t in context.Distinct())
                scores[t] = scores[t] > 0 ? scores[t] / o.RepetitionPenalty : scores[t] * o.RepetitionPenalty;
        if (!o.DoSample || o.Temperature <= 0) return ArgMax(scores);

        for (int v = 0; v < scores.Length; v++) scores[v] /= o.Temperature;
        var order = Enumerable.Range(0, scores.Length).OrderByDescending(v => scores[v]).ThenBy(v => v).ToArray();
        int keep = o.TopK > 0 ? Math.Min(o.TopK, order.Length) : order.Length;
        double max = scores[order[0]];
        var probs = new double[keep];
        double total = 0;
        for (int i = 0; i < keep; i++) total += probs[i] = Math.Exp(scores[order[i]] - max);
        // Top-p: keep the smallest prefix whose probability reaches top_p (always at least one token).
        if (o.TopP < 1.0)
        {
            double cumulative = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++)
            {
                cumulative += probs[i] / total;
                if (cumulative >= o.TopP) { cut = i + 1; break; }
            }
            keep = cut;
            total = probs.Take(keep).Sum();
        }
        double u = rng.NextDouble() * total;
        for (int i = 0; i < keep; i++)
        {
            u -= probs[i];
            if (u < 0) return order[i];
        }
        return order[keep - 1];
    }

    static int ArgMax(double[] scores)
    {
        int best = 0;
        for (int v = 1; v < scores.Length; v++) if (scores[v] > scores[best]) best = v;
        return best;
    }
}
