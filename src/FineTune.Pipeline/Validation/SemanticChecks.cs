using System.Text.RegularExpressions;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Validation;

/// <summary>Rules that span keys or touch the file system, run after binding (errors join the binder's list).</summary>
internal static partial class SemanticChecks
{
    [GeneratedRegex(@"^hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(@[A-Za-z0-9._/-]+)?$")]
    private static partial Regex HubSource();

    /// <summary>
    /// The training objective in one place: stages.train.stage (LLaMA-Factory's key) or, when it is absent, the older
    /// stages.split.stage. pt/sft are written onto both blocks, since split tokenizes for them and register checks the
    /// records for them; a pipeline that sets both differently is told which to keep.
    /// </summary>
    private static PipelineDefinition ResolveObjective(PipelineDefinition def, PipelineLoader.Binder b)
    {
        var stages = def.Stages;
        if (stages.Train is not { } train) return def;
        if (train.Stage is not { } objective)
            return def with { Stages = stages with { Train = train with { Stage = stages.Split?.Stage == TrainingStage.Pt ? TrainingObjective.Pt : TrainingObjective.Sft } } };
        if (objective is not (TrainingObjective.Pt or TrainingObjective.Sft))
        {
            b.Error("$.stages.train.stage", $"stage {Name(objective)} is not trained by this FineTune yet: it trains pt and sft (preference objectives are being added)");
            return def;
        }
        var wanted = objective == TrainingObjective.Pt ? TrainingStage.Pt : TrainingStage.Sft;
        if (stages.Split is not { } split) return def;
        if (split.Stage != wanted && b.Positions.ContainsKey("$.stages.split.stage"))
        {
            b.Error("$.stages.train.stage", $"stage {Name(objective)} contradicts stages.split.stage: {Name(split.Stage)}; keep one (stages.train.stage is LLaMA-Factory's place, stages.split.stage the older one)");
            return def;
        }
        return def with { Stages = stages with { Split = split with { Stage = wanted } } };
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

        def = ResolveObjective(def, b);
        var stages = def.Stages;
        if (stages.Register is not null && def.Data.Dataset.Count == 0)
            b.Error("$.data.dataset", "stage register needs at least one dataset name in data.dataset");
        if (stages.Split is { } split)
        {
            if (split.ValSize >= 1 && split.ValSize != Math.Floor(split.ValSize))
                b.Error("$.stages.split.val_size", $"{split.ValSize} is neither a fraction in [0, 1) nor a whole sample count");
            if (split.Stage == TrainingStage.Sft && def.Data.Template is null)
                b.Error("$.data.template", "stage split with stage: sft needs data.template (e.g. qwen3, chatml, llama3)");
        }
        if (stages.Export is { Formats.Count: 0 })
            b.Error("$.stages.export.formats", "list at least one format: hf, gguf");
        if (stages.Train is { EvalSteps: not null } && stages.Split is { ValSize: 0 })
            b.Error("$.stages.train.eval_steps", "eval_steps needs a validation split: set stages.split.val_size > 0");

        foreach (var kind in StageGraph.Order)
        {
            if (stages.For(kind) is null) continue;
            foreach (var up in StageGraph.Upstream(kind))
                if (stages.For(up) is null)
                    b.Error($"$.stages.{StageGraph.Name(kind)}", $"stage {StageGraph.Name(kind)} needs stage {StageGraph.Name(up)}: add a '{StageGraph.Name(up)}:' block to stages");
        }
        ModuleNameChecks.Apply(def, b);
        return def;
    }
}
