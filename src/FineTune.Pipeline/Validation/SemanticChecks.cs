using System.Text.RegularExpressions;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Validation;

/// <summary>Rules that span keys or touch the file system, run after binding (errors join the binder's list).</summary>
internal static partial class SemanticChecks
{
    [GeneratedRegex(@"^hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(@[A-Za-z0-9._/-]+)?$")]
    private static partial Regex HubSource();

    /// <summary>
    /// The training objective in one place, per train stage: its <c>stage</c> key (LLaMA-Factory's) or, when absent, the
    /// older <c>stage</c> of the split stage it reads. pt/sft are written onto both blocks, since split tokenizes for them and
    /// register checks the records for them; a pipeline that sets both differently is told which to keep, and two train
    /// stages that want one split tokenized two ways are told to give one its own split.
    /// </summary>
    private static PipelineDefinition ResolveObjective(PipelineDefinition def, PipelineLoader.Binder b)
    {
        var claimed = new Dictionary<string, (string Train, TrainingStage Stage)>(StringComparer.Ordinal);
        foreach (var name in def.Stages.OfKind(StageKind.Train).Select(t => t.Name).ToArray())
        {
            var stages = def.Stages;
            var trainStage = stages[name]!;
            var train = (TrainConfig)trainStage.Block;
            var splitStage = stages.Provider(trainStage, StageKind.Split);
            var split = splitStage?.Block as SplitConfig;
            var at = $"$.stages.{name}.stage";
            if (train.Stage is not { } objective)
            {
                var implied = split?.Stage == TrainingStage.Pt ? TrainingObjective.Pt : TrainingObjective.Sft;
                def = def with { Stages = stages.With(trainStage with { Block = train with { Stage = implied } }) };
                if (splitStage is not null) claimed.TryAdd(splitStage.Name, (name, split!.Stage));
                continue;
            }
            // dpo, kto and rm read pairs or tagged samples, which split writes from the data itself (DatasetChecks checks it).
            if (objective is not (TrainingObjective.Pt or TrainingObjective.Sft)) continue;
            var wanted = objective == TrainingObjective.Pt ? TrainingStage.Pt : TrainingStage.Sft;
            if (splitStage is null || split is null) continue;
            if (split.Stage != wanted && b.Positions.ContainsKey($"$.stages.{splitStage.Name}.stage"))
            {
                b.Error(at, $"stage {Name(objective)} contradicts stages.{splitStage.Name}.stage: {Name(split.Stage)}; keep one (stages.{name}.stage is LLaMA-Factory's place, stages.{splitStage.Name}.stage the older one)");
                continue;
            }
            if (claimed.TryGetValue(splitStage.Name, out var other) && other.Stage != wanted)
            {
                b.Error(at, $"stage {Name(objective)} needs stages.{splitStage.Name} tokenized for {Name(wanted)}, but stage {other.Train} trains {Name(other.Stage)} on it; give {name} a split stage of its own (from:)");
                continue;
            }
            claimed[splitStage.Name] = (name, wanted);
            def = def with { Stages = stages.With(splitStage with { Block = split with { Stage = wanted } }) };
        }
        return def;
    }

    /// <summary>Each stage's providers (<see cref="StageInstance.Reads"/>), with the provider rule's errors located at the stage or its from:.</summary>
    private static PipelineDefinition ResolveProviders(PipelineDefinition def, PipelineLoader.Binder b)
    {
        var problems = new List<(string JsonPath, string Message)>();
        var resolved = def.Stages.All.Select(s => s with { Reads = StageProviders.Resolve(def.Stages, s, problems) }).ToArray();
        foreach (var (path, message) in problems)
            // A from: naming a stage whose own key was already reported wrong would only repeat that error.
            if (!b.FailedStages.Any(f => message.StartsWith($"no stage named '{f}' ", StringComparison.Ordinal)))
                b.Error(path, message);
        return def with { Stages = def.Stages with { All = resolved } };
    }

    private static string Name(Enum value) => value.ToString().ToLowerInvariant();

    public static PipelineDefinition Apply(PipelineDefinition def, PipelineLoader.Binder b)
    {
        var dir = Path.GetDirectoryName(b.FilePath)!;
        var model = def.Model;

        if (model.Source.StartsWith("hf://", StringComparison.Ordinal))
        {
            if (!HubSource().IsMatch(model.Source))
                b.Error("$.model.source", $"'{model.Source}' is not a Hub source: expected hf://org/name or hf://org/name@revision");
        }
        else if (model.Source.Length > 0 && !model.IsScratch)
        {
            if (!Directory.Exists(Path.Combine(dir, model.Source)))
                b.Error("$.model.source", $"model directory '{model.Source}' does not exist (relative to {Path.GetFileName(b.FilePath)}); expected hf://org/name[@revision], a local model directory or 'scratch'");
        }

        if (model.Scratch is not null && !model.IsScratch && model.Source.Length > 0)
            b.Error("$.model.scratch", "scratch settings need model.source: scratch");
        if (model.IsScratch && model.Scratch is null)
            def = def with { Model = model with { Scratch = new ScratchConfig() } };

        if (def.Model.Scratch is { } s)
        {
            if (s.NumAttentionHeads % s.NumKeyValueHeads != 0)
                b.Error("$.model.scratch.num_key_value_heads", $"num_attention_heads ({s.NumAttentionHeads}) must be a multiple of num_key_value_heads ({s.NumKeyValueHeads})");
            if (s.HeadDim % 2 != 0)
                b.Error("$.model.scratch.head_dim", $"head_dim must be even (RoPE rotates pairs of dimensions), got {s.HeadDim}");
            if (s.Tokenizer is not null && !File.Exists(Path.Combine(dir, s.Tokenizer)))
                b.Error("$.model.scratch.tokenizer", $"tokenizer file '{s.Tokenizer}' does not exist (relative to {Path.GetFileName(b.FilePath)})");
        }

        if (def.Data.DatasetDir is { } dd && !Directory.Exists(Path.Combine(dir, dd)))
            b.Error("$.data.dataset_dir", $"dataset directory '{dd}' does not exist (relative to {Path.GetFileName(b.FilePath)})");

        def = ResolveProviders(def, b);
        def = ResolveObjective(def, b);
        var stages = def.Stages;
        foreach (var register in stages.OfKind(StageKind.Register))
        {
            var own = ((RegisterConfig)register.Block).Dataset;
            if ((own ?? def.Data.Dataset).Count == 0)
                b.Error(own is null ? "$.data.dataset" : $"$.stages.{register.Name}.dataset",
                    own is null ? $"stage {register.Name} needs at least one dataset name in data.dataset" : $"stage {register.Name} needs at least one dataset name in its dataset");
        }
        foreach (var stage in stages.OfKind(StageKind.Split))
        {
            var split = (SplitConfig)stage.Block;
            if (split.ValSize >= 1 && split.ValSize != Math.Floor(split.ValSize))
                b.Error($"$.stages.{stage.Name}.val_size", $"{split.ValSize} is neither a fraction in [0, 1) nor a whole sample count");
            if (split.Stage == TrainingStage.Sft && def.Data.Template is null)
                b.Error("$.data.template", $"stage {stage.Name} with stage: sft needs data.template (e.g. qwen3, chatml, llama3)");
        }
        foreach (var stage in stages.OfKind(StageKind.Export))
            if (stage.Block is ExportConfig { Formats.Count: 0 })
                b.Error($"$.stages.{stage.Name}.formats", "list at least one format: hf, gguf");
        foreach (var stage in stages.OfKind(StageKind.Train))
            if (stage.Block is TrainConfig { EvalSteps: not null } && stages.Provider(stage, StageKind.Split) is { Block: SplitConfig { ValSize: 0 } } split)
                b.Error($"$.stages.{stage.Name}.eval_steps", $"eval_steps needs a validation split: set stages.{split.Name}.val_size > 0");
        foreach (var stage in stages.OfKind(StageKind.Eval))
            foreach (var (metric, text) in ((EvalConfig)stage.Block).Require ?? new Dictionary<string, string>())
                if (!Engine.EvalGate.TryParse(metric, text, out _, out var problem))
                    b.Error($"$.stages.{stage.Name}.require.{metric}", problem!);
        foreach (var stage in stages.OfKind(StageKind.Train))
            if (stage.Block is TrainConfig train) { QuantizationChecks(stage.Name, train, b); Fp8Checks(stage.Name, train, b); }
        ModuleNameChecks.Apply(def, b);
        return def;
    }

    /// <summary>
    /// fp8 holds a frozen base on FP8 tensor cores: it needs frozen linears (lora or freeze), a CUDA device (the GPU's
    /// architecture is checked when the stage opens it) and no other way of holding the base (quantization_bit).
    /// </summary>
    private static void Fp8Checks(string stage, TrainConfig train, PipelineLoader.Binder b)
    {
        if (train.Fp8 != true)
        {
            foreach (var (key, set) in new[] { ("fp8_scaling", train.Fp8Scaling is not null), ("fp8_amax_history", train.Fp8AmaxHistory is not null) })
                if (set) b.Error($"$.stages.{stage}.{key}", $"{key} has no effect without fp8: add fp8: true, or remove {key}");
            return;
        }
        if (train.Fp8AmaxHistory is not null && train.Fp8Scaling != Fp8ScalingChoice.Delayed)
            b.Error($"$.stages.{stage}.fp8_amax_history", "fp8_amax_history is the history of delayed scaling: add fp8_scaling: delayed, or remove fp8_amax_history");
        string at = $"$.stages.{stage}.fp8";
        if (train.FinetuningType == Models.FinetuningType.Full)
            b.Error(at, "fp8 holds the frozen base weights in FP8, and finetuning_type: full trains every weight: use finetuning_type: lora (or freeze), or remove fp8");
        if (train.QuantizationBit is not null)
            b.Error(at, "fp8 and quantization_bit both choose how the frozen base is held (FP8 tensor cores, or bitsandbytes QLoRA): remove one of them");
        if (train.Device == "cpu")
            b.Error(at, "fp8 runs on the FP8 tensor cores of a Hopper GPU (sm_90) and the stage says device: cpu: set device: cuda (or auto on a GPU machine), or remove fp8");
    }

    /// <summary>QLoRA keys as LLaMA-Factory accepts them: 4 or 8 bits, bnb only, with LoRA only.</summary>
    private static void QuantizationChecks(string stage, TrainConfig train, PipelineLoader.Binder b)
    {
        string at = $"$.stages.{stage}";
        if (train.QuantizationMethod is { } method && method != QuantizationMethod.Bnb)
            b.Error($"{at}.quantization_method", $"{ConfigModel.EnumName(method)} is not implemented; FineTune quantizes with bnb (bitsandbytes' NF4/FP4 and LLM.int8 formats): use quantization_method: bnb or remove the key");
        if (train.QuantizationBit is not { } bits)
        {
            foreach (var (key, set) in new[] { ("quantization_type", train.QuantizationType is not null), ("double_quantization", train.DoubleQuantization is not null), ("quantization_method", train.QuantizationMethod is not null) })
                if (set) b.Error($"{at}.{key}", $"{key} has no effect without quantization_bit: add quantization_bit: 4 (or 8), or remove {key}");
            return;
        }
        if (bits is not (4 or 8))
            b.Error($"{at}.quantization_bit", $"{bits} is not a bitsandbytes width: use 4 (NF4/FP4) or 8 (LLM.int8)");
        if (train.FinetuningType != Models.FinetuningType.Lora)
            b.Error($"{at}.quantization_bit", $"quantization_bit needs finetuning_type: lora (a quantized base cannot be trained; LLaMA-Factory allows it with LoRA only), got finetuning_type: {ConfigModel.EnumName(train.FinetuningType)}");
        if (bits == 8 && (train.QuantizationType is not null || train.DoubleQuantization is not null))
            b.Error($"{at}.{(train.QuantizationType is not null ? "quantization_type" : "double_quantization")}", "quantization_type and double_quantization apply to quantization_bit: 4; LLM.int8 (8) has neither");
    }
}
