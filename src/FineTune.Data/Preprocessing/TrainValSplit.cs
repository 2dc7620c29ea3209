namespace FineTune.Data.Preprocessing;

/// <summary>
/// The train/validation split, as Hugging Face's <c>train_test_split</c> makes it for LLaMA-Factory's val_size:
/// a fraction gives ceil(val_size · n) validation samples, a whole number ≥ 1 that many; a seeded permutation
/// puts its first n_val indices in validation and the rest, in permuted order, in training. val_size 0 keeps
/// every sample, in order, for training.
/// </summary>
public static class TrainValSplit
{
    public static int ValidationCount(double valSize, int total)
    {
        if (valSize < 0 || double.IsNaN(valSize)) throw new DatasetException($"val_size must be ≥ 0, got {valSize}.");
        var count = valSize < 1 ? (int)Math.Ceiling(valSize * total) : (int)valSize;
        if (valSize >= 1 && valSize != Math.Floor(valSize))
            throw new DatasetException($"val_size {valSize} is neither a fraction in [0, 1) nor a whole sample count.");
        if (count >= total && total > 0)
            throw new DatasetException($"val_size {valSize} leaves no training samples out of {total}; use a smaller fraction or count.");
        return count;
    }

    public static (IReadOnlyList<T> Train, IReadOnlyList<T> Validation) Split<T>(IReadOnlyList<T> samples, double valSize, int seed)
    {
        var nVal = ValidationCount(valSize, samples.Count);
        if (nVal == 0) return (samples, []);
        var perm = new SeededRandom(seed).Permutation(samples.Count);
        return (perm[nVal..].Select(i => samples[i]).ToList(), perm[..nVal].Select(i => samples[i]).ToList());
    }
}
