using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

/// <summary><c>stages.register</c>: read the datasets from the registry and normalise them.</summary>
public sealed record RegisterConfig
{
    [Description("Drop records that do not match the dataset's format (counted in the metrics) instead of failing.")]
    public bool SkipInvalid { get; init; }

    [Range(1, int.MaxValue), Description("Keep at most this many samples per dataset.")]
    public int? MaxSamples { get; init; }
}
