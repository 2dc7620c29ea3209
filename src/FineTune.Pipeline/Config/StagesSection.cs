using System.ComponentModel;

namespace FineTune.Pipeline.Config;

/// <summary>The <c>stages</c> block. A stage is part of the pipeline when its block is present (an empty block means all defaults).</summary>
public sealed record StagesSection
{
    [Description("Fetch or generate the base model.")] public DownloadConfig? Download { get; init; }
    [Description("Read and check the datasets named in data.dataset.")] public RegisterConfig? Register { get; init; }
    [Description("Apply the chat template, tokenize, split train/val, pack.")] public SplitConfig? Split { get; init; }
    [Description("Fine-tune (LoRA, freeze or full).")] public TrainConfig? Train { get; init; }
    [Description("Evaluate on the validation split (loss, perplexity, generation metrics).")] public EvalConfig? Eval { get; init; }
    [Description("Merge the adapter into the base model.")] public MergeConfig? Merge { get; init; }
    [Description("Write deployable formats (HF safetensors, GGUF + Ollama Modelfile).")] public ExportConfig? Export { get; init; }

    /// <summary>The block of one stage, or null when the pipeline omits it.</summary>
    public object? For(StageKind kind) => StageTable.Of(kind).Block(this);
}
