namespace FineTune.Training.Evaluation;

/// <summary>One generation task: the prompt's token ids and the reference answer's token ids.</summary>
public sealed record PredictionPrompt(int[] PromptIds, int[] LabelIds);

/// <summary>Turns tokenized validation samples into prompts to complete, as LLaMA-Factory's predict does.</summary>
public static class PredictionSet
{
    /// <summary>
    /// For each sequence of a (possibly packed) sample: the label is the last run of trained tokens (the final
    /// assistant answer) and the prompt is everything before it (system, history, the last user turn).
    /// Sequences without a trained token yield nothing.
    /// </summary>
    public static IEnumerable<PredictionPrompt> FromSample(int[] inputIds, int[] labels, int[] sequenceLengths)
    {
        int start = 0;
        foreach (int len in sequenceLengths)
        {
            int end = start + len;
            int last = end - 1;
            while (last >= start && labels[last] == -100) last--;
            if (last >= start)
            {
                int first = last;
                while (first - 1 >= start && labels[first - 1] != -100) first--;
                yield return new PredictionPrompt(inputIds[start..first], labels[first..(last + 1)]);
            }
            start = end;
        }
    }
}
