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

    [ScalarOrList, OmittedWhenUnset, Description("Datasets (names in dataset_info.json) this register stage reads instead of data.dataset: a second register stage for other data (pref_register: {kind: register, dataset: [identity_pref]}).")]
    public IReadOnlyList<string>? Dataset { get; init; }

    /// <summary>The datasets this stage reads: its own list, else data.dataset.</summary>
    public IReadOnlyList<string> DatasetsOr(DataSection data) => Dataset ?? data.Dataset;
}
