namespace FineTune.Training;

/// <summary>The scheduler names of Hugging Face's <c>lr_scheduler_type</c> that FineTune supports.</summary>
public enum LrSchedulerType { Linear, Cosine, Constant, ConstantWithWarmup }

/// <summary>
/// A learning-rate schedule computed exactly as <c>transformers.get_scheduler</c> does: a multiplier
/// λ(step) of the base rate, where <c>step</c> is the number of optimizer steps already taken
/// (the update with index 0 uses λ(0), so a run with warmup starts at lr 0).
/// </summary>
public sealed record LearningRateSchedule(LrSchedulerType Type, double BaseLearningRate, int WarmupSteps, int TotalSteps)
{
    /// <summary>HF's <c>get_warmup_steps</c>: <c>warmup_steps</c> if positive, else ⌈total · warmup_ratio⌉.</summary>
    public static int ResolveWarmupSteps(int warmupSteps, double warmupRatio, int totalSteps)
    {
        if (warmupSteps < 0) throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, "warmup_steps must be >= 0.");
        if (warmupRatio < 0 || warmupRatio > 1) throw new ArgumentOutOfRangeException(nameof(warmupRatio), warmupRatio, "warmup_ratio must lie in [0, 1].");
        return warmupSteps > 0 ? warmupSteps : (int)Math.Ceiling(totalSteps * warmupRatio);
    }

    /// <summary>Parses LLaMA-Factory's <c>lr_scheduler_type</c> spelling (linear, cosine, constant, constant_with_warmup).</summary>
    public static LrSchedulerType ParseType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "linear" => LrSchedulerType.Linear,
        "cosine" => LrSchedulerType.Cosine,
        "constant" => LrSchedulerType.Constant,
        "constant_with_warmup" => LrSchedulerType.ConstantWithWarmup,
        _ => throw new ArgumentException(
            $"lr_scheduler_type '{name}' is not supported; use linear, cosine, constant or constant_with_warmup.", nameof(name)),
    };

    /// <summary>λ(step), the factor applied to the base learning rate.</summary>
    public double Multiplier(int step)
    {
        double warm = WarmupSteps;
        switch (Type)
        {
            case LrSchedulerType.Constant:
                return 1.0;
            case LrSchedulerType.ConstantWithWarmup:
                // step / max(1, warmup) during warmup, then 1.
                return step < WarmupSteps ? step / Math.Max(1.0, warm) : 1.0;
            case LrSchedulerType.Linear:
                // Warmup, then max(0, (total - step) / max(1, total - warmup)).
                if (step < WarmupSteps) return step / Math.Max(1.0, warm);
                return Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps));
            case LrSchedulerType.Cosine:
            {
                // Warmup, then max(0, ½(1 + cos(π · 2 · num_cycles · progress))) with num_cycles = 0.5.
                if (step < WarmupSteps) return step / Math.Max(1.0, warm);
                double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
            }
            default:
                throw new InvalidOperationException($"Unknown scheduler {Type}.");
        }
    }

    /// <summary>The learning rate the optimizer uses for the update that follows <paramref name="step"/> completed steps.</summary>
    public double LearningRate(int step) => BaseLearningRate * Multiplier(step);
}
