using System.ComponentModel;
using System.ComponentModel.DataAnnotations;

namespace FineTune.Pipeline.Config;

/// <summary>The whole pipeline file (<c>pipelines/&lt;name&gt;/pipeline.yaml</c>). Keys are the snake_case of the property names.</summary>
[Description("A FineTune pipeline: download → register → split → train → eval → merge → export.")]
public sealed record PipelineDefinition
{
    [Required, Description("Name of the pipeline (shown in reports; not part of any fingerprint).")]
    [RegularExpression(@"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    public string Name { get; init; } = "";

    [Required, Description("Where the base model comes from.")]
    public ModelSection Model { get; init; } = new();

    [Description("Datasets (LLaMA-Factory dataset_info.json registry) and the chat template.")]
    public DataSection Data { get; init; } = new();

    [Description("Where stage outputs are stored: a directory several clones share (default: .finetune/cache beside the pipeline). FINETUNE_CACHE overrides it.")]
    public CacheSection? Cache { get; init; }

    [Description("One block per stage; a stage runs when its block is present. Order: download, register, split, train, eval, merge, export.")]
    public StagesSection Stages { get; init; } = new();
}
