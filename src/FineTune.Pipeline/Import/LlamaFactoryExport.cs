using System.Globalization;
using System.Text;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Import;

/// <summary>
/// One train stage of a pipeline as a LLaMA-Factory training YAML (for users who leave): the same key table as the
/// import, read backwards. Every value of the stage and of the split, register and eval stages around it is written
/// explicitly (FineTune's defaults are not all Hugging Face's: logging_steps), so LLaMA-Factory trains what FineTune would.
/// </summary>
public static class LlamaFactoryExport
{
    /// <param name="trainStage">The train stage to export (its name under stages).</param>
    /// <param name="outputFile">The YAML to write: relative paths are written relative to its directory.</param>
    /// <param name="modelDirectory">The model directory to name for a scratch model (its download stage's output), else null.</param>
    /// <returns>The YAML, and what of the pipeline LLaMA-Factory has no argument for.</returns>
    public static (string Yaml, IReadOnlyList<string> NotCarried) Export(LoadedPipeline pipeline, string trainStage, string outputFile, string? modelDirectory)
    {
        var def = pipeline.Definition;
        var train = def.Stages[trainStage] is { Kind: StageKind.Train } t ? t
            : throw new PipelineUserException($"{pipeline.FilePath}: no train stage named '{trainStage}'; expected one of {string.Join(", ", def.Stages.OfKind(StageKind.Train).Select(s => s.Name))}.");
        var outDir = Path.GetDirectoryName(Path.GetFullPath(outputFile))!;
        var split = def.Stages.Provider(train, StageKind.Split);
        var register = split is null ? null : def.Stages.Provider(split, StageKind.Register);
        var eval = def.Stages.OfKind(StageKind.Eval).FirstOrDefault(e => def.Stages.Provider(e, StageKind.Train)?.Name == trainStage);
        var blocks = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["stages.train"] = train.Block, ["stages.split"] = split?.Block,
            ["stages.register"] = register?.Block, ["stages.eval"] = eval?.Block,
        };
        var notCarried = new List<string>();
        var sb = new StringBuilder();
        sb.Append($"# LLaMA-Factory training config exported from {Path.GetFileName(pipeline.FilePath)} (stage {trainStage}) by `finetune export-config llamafactory`.\n");
        sb.Append("# Run: llamafactory-cli train ").Append(Path.GetFileName(outputFile)).Append('\n');

        sb.Append("\n### model\n");
        string source;
        if (def.Model.IsHub) source = def.Model.Source["hf://".Length..].Split('@')[0];
        else if (def.Model.IsScratch)
            source = modelDirectory ?? throw new PipelineUserException(
                $"{pipeline.FilePath}: model.source is scratch, which LLaMA-Factory cannot generate; run the download stage first (finetune run {pipeline.FilePath} --stage download), then export again.");
        else source = Path.GetRelativePath(outDir, Path.GetFullPath(Path.Combine(pipeline.Directory, def.Model.Source))).Replace('\\', '/');
        Line(sb, "model_name_or_path", source);
        if (def.Model.IsHub && def.Model.Source.Contains('@')) Line(sb, "model_revision", def.Model.Source.Split('@')[1]);
        if (def.Stages.Download?.Revision is { } revision) Line(sb, "model_revision", revision);

        sb.Append("\n### method\n");
        Line(sb, "do_train", "true");
        var trainConfig = (TrainConfig)train.Block;
        if (def.Stages.Provider(train, StageKind.Train) is { } from)
            notCarried.Add($"stages.{trainStage}.from: {from.Name} (it trains on from {from.Name}'s result; LLaMA-Factory: adapter_name_or_path to that stage's output)");
        Section(sb, blocks, "stages.train", ["stage", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora",
            "loraplus_lr_ratio", "additional_target", "freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules",
            "pref_beta", "pref_ftx", "pref_loss", "dpo_label_smoothing", "simpo_gamma", "kto_chosen_weight", "kto_rejected_weight"]);

        sb.Append("\n### dataset\n");
        var datasets = register?.Block is RegisterConfig r ? r.DatasetsOr(def.Data) : def.Data.Dataset;
        Line(sb, "dataset", string.Join(",", datasets));
        Line(sb, "dataset_dir", Path.GetRelativePath(outDir, def.Data.ResolveDatasetDir(pipeline.Directory)).Replace('\\', '/'));
        if (def.Data.Template is { } template) Line(sb, "template", template);
        if (def.Data.Placeholders.Count > 0)
            notCarried.Add("data.placeholders (LLaMA-Factory reads the dataset text as written: replace {{name}} and the like in the files)");
        Section(sb, blocks, "stages.split", ["cutoff_len", "train_on_prompt", "mask_history", "packing", "neat_packing", "enable_thinking", "val_size"]);
        Section(sb, blocks, "stages.register", ["max_samples"]);
        if (split?.Block is SplitConfig sc && sc.Seed != trainConfig.Seed)
            notCarried.Add($"stages.{split.Name}.seed: {sc.Seed} (LLaMA-Factory splits with the training seed, {trainConfig.Seed})");

        sb.Append("\n### output\n");
        Line(sb, "output_dir", $"saves/{def.Name}/{trainStage}");
        Section(sb, blocks, "stages.train", ["logging_steps", "save_steps", "save_total_limit", "plot_loss", "resume_from_checkpoint"]);

        sb.Append("\n### train\n");
        Section(sb, blocks, "stages.train", ["per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs",
            "max_steps", "lr_scheduler_type", "warmup_steps", "warmup_ratio", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon",
            "max_grad_norm", "neftune_noise_alpha", "moe_aux_loss_coef", "seed", "fp8"]);
        Line(sb, "optim", "adamw_torch");
        // LLaMA-Factory has no auto: left unwritten, it checkpoints every layer (its default), and the file imports back as auto.
        if (trainConfig.GradientCheckpointing != GradientCheckpointingSetting.Auto)
            Line(sb, "disable_gradient_checkpointing", trainConfig.GradientCheckpointing == GradientCheckpointingSetting.False ? "true" : "false");
        Line(sb, "bf16", "true");
        // ZeRO: LLaMA-Factory's example DeepSpeed configs (examples/deepspeed) exist for stages 0, 2 and 3.
        if (trainConfig.ZeroStage is 2 or 3) Line(sb, "deepspeed", $"examples/deepspeed/ds_z{trainConfig.ZeroStage}_config.json");
        else if (trainConfig.ZeroStage == 1)
            notCarried.Add($"stages.{trainStage}.zero_stage: 1 (LLaMA-Factory's examples have no ZeRO-1 DeepSpeed config: write one with zero_optimization.stage 1 and pass it as deepspeed)");

        if (trainConfig.EvalSteps is not null || eval is not null)
        {
            sb.Append("\n### eval\n");
            if (trainConfig.EvalSteps is { } steps) { Line(sb, "eval_strategy", "steps"); Line(sb, "eval_steps", steps.ToString(CultureInfo.InvariantCulture)); }
            if (eval?.Block is EvalConfig ec)
            {
                Line(sb, "do_eval", "true");
                if (ec.PredictWithGenerate) Line(sb, "do_predict", "true");
                Section(sb, blocks, "stages.eval", ["per_device_eval_batch_size", "predict_with_generate", "max_new_tokens", "do_sample",
                    "temperature", "top_p", "top_k", "repetition_penalty"]);
                if (ec.MaxSamples is not null) notCarried.Add($"stages.{eval.Name}.max_samples (LLaMA-Factory evaluates the whole validation split)");
            }
        }
        if (def.Stages.OfKind(StageKind.Merge).Count > 0 || def.Stages.OfKind(StageKind.Export).Count > 0)
            notCarried.Add("merge and export stages (LLaMA-Factory merges with a separate `llamafactory-cli export` config: adapter_name_or_path, export_dir)");
        foreach (var note in notCarried)
            sb.Append("# not carried: ").Append(note).Append('\n');
        return (sb.ToString(), notCarried);
    }

    /// <summary>The LLaMA-Factory keys whose FineTune key lives in <paramref name="block"/>, with the block's values.</summary>
    private static void Section(StringBuilder sb, Dictionary<string, object?> blocks, string block, string[] names)
    {
        if (blocks[block] is not { } config) return;
        foreach (var name in names)
        {
            var key = LlamaFactoryKeys.Find(name)!;
            if (key.Block != block) continue;
            var configKey = ConfigModel.Keys(config.GetType()).First(k => k.Name == key.TargetKey);
            if (Value(configKey.Property.GetValue(config)) is { } value) Line(sb, name, value);
        }
    }

    private static string? Value(object? v) => v switch
    {
        null => null,
        bool b => b ? "true" : "false",
        double d => Number(d),
        int i => i.ToString(CultureInfo.InvariantCulture),
        Enum e => ConfigModel.EnumName(e),
        string s => s,
        IEnumerable<string> list => string.Join(",", list),
        _ => v.ToString(),
    };

    /// <summary>
    /// The shortest text that round-trips, with a dot in the mantissa: PyYAML (YAML 1.1), which LLaMA-Factory reads
    /// configs with, takes 5e-06 for a string and only 5.0e-06 for a float.
    /// </summary>
    public static string Number(double d)
    {
        var text = d.ToString("R", CultureInfo.InvariantCulture);
        var e = text.IndexOf('E');
        if (e < 0) return text;
        var mantissa = text[..e].Contains('.') ? text[..e] : text[..e] + ".0";
        var exponent = text[(e + 1)..];
        return $"{mantissa}e{(exponent.StartsWith('-') || exponent.StartsWith('+') ? exponent : "+" + exponent)}";
    }

    private static void Line(StringBuilder sb, string key, string value) =>
        sb.Append(key).Append(": ").Append(LlamaFactoryImport.Scalar(value)).Append('\n');
}
