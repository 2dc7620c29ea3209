using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

/// <summary>
/// <c>cache</c>: where finished stage outputs are kept. By default in .finetune/cache beside the pipeline; a shared
/// directory lets several clones and CI runners reuse each other's outputs by fingerprint. Not part of any fingerprint:
/// where an output is stored does not change it.
/// </summary>
public sealed record CacheSection
{
    public const string Variable = "FINETUNE_CACHE";

    [Required, Description("A directory shared by several clones (relative to the pipeline file, or absolute); FINETUNE_CACHE, when set, takes its place. Stage outputs are stored there by fingerprint; checkpoints, partial downloads and the hash index stay in .finetune/ beside the pipeline.")]
    public string Dir { get; init; } = "";
}
