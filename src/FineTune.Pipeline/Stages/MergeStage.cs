using FineTune.Models;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>
/// merge: the trained model as one complete Hugging Face directory. A LoRA run's adapter is folded into
/// the downloaded base model (W + s·B·A, in the base dtype unless export_dtype says otherwise); a full or
/// freeze run already wrote a whole model, which is copied (and converted when export_dtype is set).
/// </summary>
public sealed class MergeStage : IStageExecutor
{
    /// <summary>Reads the base model and what train produced.</summary>
    public static StageDescription Description { get; } = new(StageKind.Merge, [StageKind.Download, StageKind.Train], typeof(MergeConfig),
        null, () => new MergeStage());

    public StageKind Kind => Description.Kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx)
    {
        if (ModelOutput.Find(ctx)?.Directory is not { } baseDir)
            throw new PipelineUserException("stages.merge needs the download stage (the base model); add a stages.download block.");
        if (TrainOutput.Find(ctx) is not { } train)
            throw new PipelineUserException("stages.merge needs the train stage's output; add a stages.train block or remove stages.merge.");
        string trainDir = train.Directory;
        var dtype = ctx.Block<MergeConfig>().ExportDtype switch
        {
            ExportDtype.Bfloat16 => SafetensorsDType.BF16,
            ExportDtype.Float16 => SafetensorsDType.F16,
            ExportDtype.Float32 => SafetensorsDType.F32,
            _ => (SafetensorsDType?)null,
        };
        LoraMergeResult result;
        var notes = new List<string>();
        try
        {
            using var task = ctx.Progress.Start("merge", 1);
            if (train.IsAdapter)
            {
                var quantizedBase = Models.Quantization.QuantizedBaseFile.Read(trainDir);
                result = LoraMerge.Merge(baseDir, trainDir, ctx.OutputDirectory, dtype, quantizedBase: quantizedBase);
                notes.Add($"folded LoRA into {result.MergedWeights} weights (scale {result.Scale:G4}){(result.ReplacedWeights > 0 ? $", replaced {result.ReplacedWeights} trained modules" : "")}");
                if (quantizedBase is not null)
                    notes.Add($"QLoRA: folded into the dequantized {quantizedBase.Describe()} base, written as {dtype?.ToTorchDtype() ?? ModelConfig.Load(baseDir).TorchDtype} (every decoder linear is the base as the adapter saw it)");
            }
            else if (train.IsModel)
            {
                result = LoraMerge.CopyModel(trainDir, ctx.OutputDirectory, dtype);
                // A full/freeze run's directory may lack the tokenizer; the base model has it.
                foreach (var f in LoraMerge.CompanionFiles)
                {
                    var target = Path.Combine(ctx.OutputDirectory, f);
                    var src = Path.Combine(trainDir, f);
                    if (!File.Exists(src)) src = Path.Combine(baseDir, f);
                    if (File.Exists(src) && !File.Exists(target))
                        File.Copy(src, target);
                }
                notes.Add("copied the fully trained model (no adapter to merge)");
            }
            else
                throw new PipelineUserException($"the train stage's output {trainDir} holds neither adapter_config.json (LoRA) nor config.json (full/freeze); re-run train.");
            task.Increment(1);
        }
        catch (ModelFormatException e)
        {
            throw new PipelineUserException(e.Message, e);
        }
        var config = ModelConfig.Load(ctx.OutputDirectory);
        notes.Add($"{config.ModelType} in {config.TorchDtype}, {result.Files.Count} files");
        return new StageResult(new Dictionary<string, double>
        {
            ["merged_weights"] = result.MergedWeights,
            ["replaced_weights"] = result.ReplacedWeights,
            ["lora_scale"] = result.Scale,
        }, notes);
    }
}
