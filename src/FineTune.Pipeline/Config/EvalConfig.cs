using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

/// <summary><c>stages.eval</c>: loss/perplexity on the validation split and optional generation metrics.</summary>
public sealed record EvalConfig
{
    [RegularExpression(TrainConfig.DevicePattern), NotFingerprinted, Description("auto, cpu, cuda or cuda:N (not part of the fingerprint).")]
    public string Device { get; init; } = "auto";

    [Range(1, 65536)] public int PerDeviceEvalBatchSize { get; init; } = 8;

    [Description("Generate answers and score them (BLEU-4, ROUGE) besides the loss.")]
    public bool PredictWithGenerate { get; init; }

    [Range(1, 1 << 20)] public int MaxNewTokens { get; init; } = 1024;
    public bool DoSample { get; init; } = true;
    [Range(0.0, 100.0)] public double Temperature { get; init; } = 0.95;
    [Range(0.0, 1.0)] public double TopP { get; init; } = 0.7;
    [Range(0, int.MaxValue)] public int TopK { get; init; } = 50;
    [Range(0.0, 100.0, MinimumIsExclusive = true)] public double RepetitionPenalty { get; init; } = 1.0;

    [Range(1, int.MaxValue), Description("Evaluate at most this many validation samples.")]
    public int? MaxSamples { get; init; }

    // A gate judges the result; it changes no byte of it. Kept out of the fingerprint, so changing a bound re-checks the
    // locked metrics instead of re-running the evaluation.
    [NotFingerprinted, Description("Gates on this stage's metrics, checked after it runs or is found up to date: metric → \"<op> <number>\" with op one of <, <=, >, >=, == (e.g. eval_loss: \"<= 0.2\", predict_bleu-4: \">= 40\"). A failing gate stops the run (exit code 3) before the stages after this one. Not part of the fingerprint.")]
    public IReadOnlyDictionary<string, string>? Require { get; init; }
}
