using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Import;
using FineTune.Pipeline.Validation;
using FineTune.Training;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// LLaMA-Factory configs modelled on its examples/train_lora (and a LlamaBoard command preview), imported, written, then
/// loaded from disk by the real pipeline loader: every training value arrives as written.
/// </summary>
public sealed class LlamaFactoryImportTests
{
    public static string Fixture(string name) => Path.Combine(RepoRoot.Path, "tests", "FineTune.Pipeline.Tests", "Fixtures", "llamafactory", name);

    /// <summary>Imports as if LLaMA-Factory ran in the repository root (its data/ holds the datasets), writes, reloads.</summary>
    private static (LoadedPipeline Pipeline, ImportedPipeline Imported) ImportAndReload(TempDir dir, string fixture)
    {
        var file = dir.File("pipeline.yaml");
        var imported = LlamaFactoryImport.Import(Fixture(fixture), RepoRoot.Path, file);
        File.WriteAllText(file, imported.Yaml);
        return (PipelineLoader.Load(file), imported);
    }

    private static string[] NoteKeys(ImportedPipeline imported, KeyFate fate) =>
        imported.Notes.Where(n => n.Fate == fate).Select(n => n.Key).ToArray();

    [Fact]
    public void Llama3LoraSftKeepsEveryTrainingValue()
    {
        using var dir = new TempDir();
        var (p, imported) = ImportAndReload(dir, "llama3_lora_sft.yaml");
        var d = p.Definition;
        Assert.Equal("llama3_lora_sft", d.Name);
        Assert.Equal("hf://meta-llama/Meta-Llama-3-8B-Instruct", d.Model.Source);
        Assert.Equal(["identity", "alpaca_mini"], d.Data.Dataset);
        Assert.Equal("llama3", d.Data.Template);
        Assert.Equal(Path.Combine(RepoRoot.Path, "data"), d.Data.ResolveDatasetDir(p.Directory));
        Assert.Equal(1000, d.Stages.Register!.MaxSamples);
        var split = d.Stages.Split!;
        Assert.Equal(2048, split.CutoffLen);
        Assert.Equal(0.1, split.ValSize);
        var t = d.Stages.Train!;
        Assert.Equal(TrainingObjective.Sft, t.Stage);
        Assert.Equal(FinetuningType.Lora, t.FinetuningType);
        Assert.Equal(8, t.LoraRank);
        Assert.Equal(["all"], t.LoraTarget);
        Assert.Equal(10, t.LoggingSteps);
        Assert.Equal(500, t.SaveSteps);
        Assert.True(t.PlotLoss);
        Assert.Equal(1, t.PerDeviceTrainBatchSize);
        Assert.Equal(8, t.GradientAccumulationSteps);
        Assert.Equal(1.0e-4, t.LearningRate);
        Assert.Equal(3.0, t.NumTrainEpochs);
        Assert.Equal(LrSchedulerType.Cosine, t.LrSchedulerType);
        Assert.Equal(0.1, t.WarmupRatio);
        Assert.Null(t.ResumeFromCheckpoint);
        Assert.Equal(500, t.EvalSteps);
        Assert.Equal(1, d.Stages.Eval!.PerDeviceEvalBatchSize);
        Assert.Equal(["download", "register", "split", "train", "eval"], p.Stages.Select(s => s.Name));
        Assert.Equal(["trust_remote_code", "overwrite_cache", "preprocessing_num_workers", "dataloader_num_workers", "output_dir",
            "overwrite_output_dir", "save_only_model", "bf16", "ddp_timeout"], NoteKeys(imported, KeyFate.Ignored));
        Assert.Equal(ReportTo.None, t.ReportTo);
        Assert.Empty(NoteKeys(imported, KeyFate.Unsupported));
        Assert.StartsWith("# Imported from llama3_lora_sft.yaml (LLaMA-Factory) by `finetune import llamafactory`.\nname: llama3_lora_sft\n", imported.Yaml);
    }

    [Fact]
    public void Qwen3NothinkTemplateIsLlamaFactorysQwenFormatWithoutThinking()
    {
        using var dir = new TempDir();
        var (p, imported) = ImportAndReload(dir, "qwen3_lora_sft.yaml");
        Assert.Equal("hf://Qwen/Qwen3-4B-Instruct-2507", p.Definition.Model.Source);
        Assert.Equal("qwen3_nothink", p.Definition.Data.Template);
        Assert.Equal(["download", "register", "split", "train"], p.Stages.Select(s => s.Name));
        // LLaMA-Factory's qwen3_nothink: no default system prompt, no think block around the answer.
        var template = FineTune.Data.Templates.ChatTemplate.Get("qwen3_nothink");
        Assert.Equal("", template.DefaultSystem);
        Assert.False(template.Reasoning);
        Assert.Contains("trust_remote_code", NoteKeys(imported, KeyFate.Ignored));
    }

    [Fact]
    public void Llama3LoraDpoKeepsThePreferenceKeys()
    {
        using var dir = new TempDir();
        var (p, _) = ImportAndReload(dir, "llama3_lora_dpo.yaml");
        var t = p.Definition.Stages.Train!;
        Assert.Equal(TrainingObjective.Dpo, t.Stage);
        Assert.Equal(0.1, t.PrefBeta);
        Assert.Equal(Training.Objectives.PreferenceLoss.Sigmoid, t.PrefLoss);
        Assert.Equal(5.0e-6, t.LearningRate);
        Assert.Equal(["identity_pref"], p.Definition.Data.Dataset);
    }

    [Fact]
    public void Llama3LoraKtoAndRewardKeepTheirObjectives()
    {
        using var dir = new TempDir();
        var (kto, _) = ImportAndReload(dir, "llama3_lora_kto.yaml");
        Assert.Equal(TrainingObjective.Kto, kto.Definition.Stages.Train!.Stage);
        Assert.Equal(0.1, kto.Definition.Stages.Train.PrefBeta);
        Assert.Equal(["identity_kto"], kto.Definition.Data.Dataset);
        using var dir2 = new TempDir();
        var (rm, _) = ImportAndReload(dir2, "llama3_lora_reward.yaml");
        Assert.Equal(TrainingObjective.Rm, rm.Definition.Stages.Train!.Stage);
        Assert.Equal(1.0e-4, rm.Definition.Stages.Train.LearningRate);
    }

    [Fact]
    public void LlamaBoardCommandPreviewImportsWithPythonBooleans()
    {
        using var dir = new TempDir();
        var (p, imported) = ImportAndReload(dir, "llamaboard_qwen3_sft.txt");
        var d = p.Definition;
        Assert.Equal("llamaboard_qwen3_sft", d.Name);
        Assert.Equal("hf://Qwen/Qwen3-0.6B", d.Model.Source);
        Assert.Equal("qwen3", d.Data.Template);
        Assert.Equal(1024, d.Stages.Split!.CutoffLen);
        Assert.False(d.Stages.Split.Packing);
        Assert.True(d.Stages.Split.EnableThinking);
        Assert.Equal(0.1, d.Stages.Split.ValSize);
        Assert.Equal(100000, d.Stages.Register!.MaxSamples);
        var t = d.Stages.Train!;
        Assert.Equal(5e-05, t.LearningRate);
        Assert.Equal(2, t.PerDeviceTrainBatchSize);
        Assert.Equal(8, t.GradientAccumulationSteps);
        Assert.Equal(1.0, t.MaxGradNorm);
        Assert.Equal(5, t.LoggingSteps);
        Assert.Equal(100, t.SaveSteps);
        Assert.Equal(0, t.WarmupSteps);
        Assert.True(t.PlotLoss);
        Assert.Equal(16.0, t.LoraAlpha);
        Assert.Equal(0.0, t.LoraDropout);
        Assert.Equal(100, t.EvalSteps);
        Assert.Equal(2, d.Stages.Eval!.PerDeviceEvalBatchSize);
        Assert.Equal(["preprocessing_num_workers", "flash_attn", "output_dir", "bf16", "trust_remote_code", "ddp_timeout",
            "include_num_input_tokens_seen"], NoteKeys(imported, KeyFate.Ignored));
    }

    [Fact]
    public void BrokenConfigGivesLocatedErrorsAtTheSourceArgument()
    {
        using var dir = new TempDir();
        var source = dir.Write("broken.yaml", "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndataset: identity\ntemplate: glm4\nlerning_rate: 1e-4\nlora_rank: many\n");
        var e = Assert.Throws<PipelineValidationException>(() => LlamaFactoryImport.Import(source, RepoRoot.Path, dir.File("out/pipeline.yaml")));
        Assert.Equal(
            $"{source}:4:1: template: template 'glm4' has no FineTune chat template yet; FineTune has {string.Join(", ", FineTune.Data.Templates.ChatTemplate.Names)}\n" +
            $"{source}:5:1: lerning_rate: unknown argument 'lerning_rate'; did you mean 'learning_rate'?", string.Join("\n", e.Errors));
        Assert.False(Directory.Exists(dir.File("out")));

        var second = dir.Write("second.yaml", "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndataset: identity\ntemplate: qwen3\nlora_rank: many\n");
        e = Assert.Throws<PipelineValidationException>(() => LlamaFactoryImport.Import(second, RepoRoot.Path, dir.File("out/pipeline.yaml")));
        Assert.Equal($"{second}:5:1: lora_rank: expected an integer in [1, 65536], got 'many' (as FineTune's stages.train.lora_rank)", Assert.Single(e.Errors).ToString());
    }

    [Fact]
    public void UnsupportedArgumentsAreNamedWithTheMissingFeature()
    {
        using var dir = new TempDir();
        var source = dir.Write("q.yaml", "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndataset: identity\ntemplate: qwen3\nquantization_bit: 4\nuse_dora: true\ndeepspeed: ds_z3_config.json\nreport_to: wandb\n");
        var imported = LlamaFactoryImport.Import(source, RepoRoot.Path, dir.File("pipeline.yaml"));
        Assert.Equal([
            "unsupported use_dora (line 6): DoRA (FineTune trains plain LoRA and rsLoRA: use_rslora)",
            "ignored     report_to (line 8): FineTune reports to tensorboard and mlflow only, not 'wandb'; trainer_log.jsonl and training_loss.svg are always written",
        ], imported.Notes.Select(n => n.ToString()));
        // QLoRA's keys are carried since FineTune trains on quantized bases.
        Assert.Contains("quantization_bit: 4", imported.Yaml);
    }

    [Fact]
    public void A_deepspeed_config_becomes_the_train_stages_zero_stage()
    {
        using var dir = new TempDir();
        const string head = "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndataset: identity\ntemplate: qwen3\nfinetuning_type: full\n";
        // LLaMA-Factory's example by name (the file is not here).
        var byName = LlamaFactoryImport.Import(dir.Write("a.yaml", head + "deepspeed: examples/deepspeed/ds_z3_config.json\n"), RepoRoot.Path, dir.File("a/pipeline.yaml"));
        Assert.Contains("zero_stage: 3", byName.Yaml);
        Assert.Empty(byName.Notes);
        // A config beside the YAML is read: its zero_optimization.stage, and its offload named as unsupported.
        dir.Write("ds.json", """{"train_batch_size": "auto", "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}""");
        var byFile = LlamaFactoryImport.Import(dir.Write("b.yaml", head + "deepspeed: ds.json\n"), RepoRoot.Path, dir.File("b/pipeline.yaml"));
        Assert.Contains("zero_stage: 2", byFile.Yaml);
        Assert.Equal(["unsupported deepspeed (line 6): ZeRO offload to the CPU (zero_stage: 2 is carried; every shard stays on its GPU)"], byFile.Notes.Select(n => n.ToString()));
        var unknown = LlamaFactoryImport.Import(dir.Write("c.yaml", head + "deepspeed: mine.json\n"), RepoRoot.Path, dir.File("c/pipeline.yaml"));
        Assert.DoesNotContain("zero_stage", unknown.Yaml);
        Assert.Equal(["unsupported deepspeed (line 6): the DeepSpeed config mine.json: no ZeRO stage 0–3 found (the file is not here and its name is not ds_z<N>_config.json); set stages.train.zero_stage"],
            unknown.Notes.Select(n => n.ToString()));
    }

    [Fact]
    public void EightBitAdamIsCarriedAsTheTrainStagesOptim()
    {
        using var dir = new TempDir();
        var source = dir.Write("full.yaml", "model_name_or_path: Qwen/Qwen3-0.6B\nstage: sft\ndataset: identity\ntemplate: qwen3\nfinetuning_type: full\noptim: adamw_bnb_8bit\n");
        var imported = LlamaFactoryImport.Import(source, RepoRoot.Path, dir.File("pipeline.yaml"));
        Assert.Contains("optim: adamw_8bit", imported.Yaml);
        Assert.Empty(NoteKeys(imported, KeyFate.Unsupported));
    }

    [Fact]
    public void LlamaFactoryKeysInTheWrongBlockSayWhereTheyBelongNotANearbyWrongKey()
    {
        using var dir = new TempDir();
        var file = TestPipelines.Write(dir, TestPipelines.Full
            .Replace("    val_size: 0.1\n", "    val_size: 0.1\n    stage: dpo\n")
            .Replace("    max_steps: 10\n", "    max_steps: 10\n    per_device_eval_batch_size: 1\n    use_dora: true\n    bf16: true\n    disable_gradient_checkpointing: true\n    do_train: true\n"));
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        Assert.Equal([
            "$.stages.split.stage: expected one of sft, pt, got 'dpo'; dpo is a training objective: write stage: dpo in the train stage's block (stages.train.stage)",
            "$.stages.train.per_device_eval_batch_size: unknown key 'per_device_eval_batch_size' in stages.train; it belongs in stages.eval",
            "$.stages.train.use_dora: unknown key 'use_dora' in stages.train; LLaMA-Factory's use_dora is unsupported in FineTune (DoRA (FineTune trains plain LoRA and rsLoRA: use_rslora))",
            "$.stages.train.bf16: unknown key 'bf16' in stages.train; LLaMA-Factory's bf16 is ignored in FineTune (FineTune's engine picks the precision: bf16 weights and activations with fp32 master weights on CUDA, fp32 on the CPU): remove it",
            "$.stages.train.disable_gradient_checkpointing: unknown key 'disable_gradient_checkpointing' in stages.train; it belongs in stages.train as gradient_checkpointing (negated: LLaMA-Factory's disable_gradient_checkpointing: true is gradient_checkpointing: false)",
            "$.stages.train.do_train: unknown key 'do_train' in stages.train; LLaMA-Factory's do_train is implied by the stages.train block: remove it",
        ], e.Errors.Select(x => $"{x.JsonPath}: {x.Message}"));
    }

    [Theory]
    [InlineData("llama3_lora_sft.yaml")]
    [InlineData("llama3_lora_dpo.yaml")]
    [InlineData("llamaboard_qwen3_sft.txt")]
    public void ExportedLlamaFactoryConfigImportsBackToTheSameStages(string fixture)
    {
        using var dir = new TempDir();
        var (p, _) = ImportAndReload(dir, fixture);
        var exported = dir.File("lf/exported.yaml");
        Directory.CreateDirectory(dir.File("lf"));
        var (yaml, notCarried) = LlamaFactoryExport.Export(p, "train", exported, null);
        File.WriteAllText(exported, yaml);
        Assert.Empty(notCarried);
        using var back = new TempDir();
        var again = LlamaFactoryImport.Import(exported, dir.File("lf"), back.File("pipeline.yaml")).Pipeline.Definition;
        Assert.Equal(p.Definition.Model, again.Model);
        Assert.Equal(p.Definition.Data.Dataset, again.Data.Dataset);
        Assert.Equal(p.Definition.Data.Template, again.Data.Template);
        Assert.Equal(p.Definition.Data.ResolveDatasetDir(p.Directory), again.Data.ResolveDatasetDir(back.Path));
        // Records with list members compare lists by reference: compare their canonical fingerprint parameters instead.
        foreach (var stage in p.Stages)
            Assert.Equal(Engine.CanonicalJson.Serialize(Engine.StageFingerprint.ParametersOf(stage, p.Definition)),
                Engine.CanonicalJson.Serialize(Engine.StageFingerprint.ParametersOf(again.Stages[stage.Name]!, again)));
    }

    [Fact]
    public void ExportWritesFloatsPyYamlReadsAsFloats()
    {
        Assert.Equal("5.0e-06", LlamaFactoryExport.Number(5e-6));
        Assert.Equal("0.0001", LlamaFactoryExport.Number(1e-4));
        Assert.Equal("1.5e+20", LlamaFactoryExport.Number(1.5e20));
        Assert.Equal("3", LlamaFactoryExport.Number(3.0));
    }

    [Fact]
    public void ValuesAreQuotedWhereYamlWouldReadThemOtherwise()
    {
        Assert.Equal("hf://Qwen/Qwen3-0.6B", LlamaFactoryImport.Scalar("hf://Qwen/Qwen3-0.6B"));
        Assert.Equal("-1", LlamaFactoryImport.Scalar("-1"));
        Assert.Equal("1.0e-4", LlamaFactoryImport.Scalar("1.0e-4"));
        Assert.Equal("\"@home/model\"", LlamaFactoryImport.Scalar("@home/model"));
        Assert.Equal("\"-\"", LlamaFactoryImport.Scalar("-"));
        Assert.Equal("\"a b: c\"", LlamaFactoryImport.Scalar("a b: c"));
    }
}
