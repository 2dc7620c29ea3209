using System.ComponentModel;

namespace FineTune.Pipeline.Config;

public enum ExportDtype { Auto, Bfloat16, Float16, Float32 }

/// <summary><c>stages.merge</c>: fold the trained adapter into the base weights.</summary>
public sealed record MergeConfig
{
    [Description("dtype of the merged weights; auto keeps the base model's torch_dtype.")]
    public ExportDtype ExportDtype { get; init; } = ExportDtype.Auto;
}
