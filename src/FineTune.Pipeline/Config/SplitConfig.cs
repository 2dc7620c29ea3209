using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

public enum TrainingStage { Sft, Pt }

/// <summary><c>stages.split</c>: template, tokenize, split into train/val, pack (LLaMA-Factory's data arguments).</summary>
public sealed record SplitConfig
{
    [Range(0.0, double.MaxValue), Description("Validation share: a fraction in [0, 1) or a sample count (an integer ≥ 1).")]
    public double ValSize { get; init; } = 0.0;

    [Range(0, int.MaxValue), Description("Seed of the shuffle before the split.")]
    public int Seed { get; init; } = 42;

    [Range(1, int.MaxValue), Description("Maximum tokens per sample after tokenization.")]
    public int CutoffLen { get; init; } = 2048;

    [Description("Also train on the prompt tokens.")]
    public bool TrainOnPrompt { get; init; }

    [Description("Train only on the last turn of multi-turn samples.")]
    public bool MaskHistory { get; init; }

    [Description("Pack sequences into cutoff_len samples (default: true for pt, false for sft).")]
    public bool? Packing { get; init; }

    [Description("Pack without cross-attention between packed sequences.")]
    public bool NeatPacking { get; init; }

    [Description("Enable thinking in templates that support it (qwen3).")]
    public bool EnableThinking { get; init; } = true;

    [Description("sft: supervised chat fine-tuning; pt: plain-text pre-training.")]
    public TrainingStage Stage { get; init; } = TrainingStage.Sft;

    /// <summary>Effective packing: the explicit setting, else true for pre-training.</summary>
    public bool ResolvedPacking => Packing ?? Stage == TrainingStage.Pt;
}
