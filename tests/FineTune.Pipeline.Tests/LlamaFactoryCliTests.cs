using FineTune.Models.Tests;

namespace FineTune.Pipeline.Tests;

/// <summary>`finetune import llamafactory`, `export-config llamafactory` and a LLaMA-Factory file given to validate, as users run them.</summary>
public sealed class LlamaFactoryCliTests
{
    [Fact]
    public void ImportWritesPipelineAndProjectAndListsEachDroppedArgumentOnce()
    {
        using var dir = new TempDir();
        var source = LlamaFactoryImportTests.Fixture("qwen3_lora_sft.yaml");
        var output = dir.File("qwen3");
        var (code, stdout, err) = CliTests.Finetune("import", "llamafactory", source, "--base-dir", RepoRoot.Path, "--output", output);
        Assert.Equal("", err);
        Assert.Equal(0, code);
        Assert.Equal(
            $"wrote {output}/pipeline.yaml and {output}/pipeline.proj\n" +
            "8 ignored, 0 unsupported (every other argument is carried):\n" +
            "  ignored     trust_remote_code (line 4): FineTune runs no model code from the hub; it has its own implementations of the architectures it supports\n" +
            "  ignored     preprocessing_num_workers (line 18): FineTune's data loader is in-process and needs no workers\n" +
            "  ignored     dataloader_num_workers (line 19): FineTune's data loader is in-process and needs no workers\n" +
            "  ignored     output_dir (line 22): the stage cache (.finetune/) decides where outputs go; `finetune path PIPELINE --stage NAME` prints it\n" +
            "  ignored     overwrite_output_dir (line 26): the stage cache (.finetune/) decides where outputs go; `finetune path PIPELINE --stage NAME` prints it\n" +
            "  ignored     save_only_model (line 27): checkpoints in .finetune/work hold what resume needs; the stage output holds the model\n" +
            "  ignored     bf16 (line 37): FineTune's engine picks the precision: bf16 weights and activations with fp32 master weights on CUDA, fp32 on the CPU\n" +
            "  ignored     ddp_timeout (line 38): FineTune trains in one process on one device\n" +
            "valid: download → register → split → train\n", stdout);
        // The temp folder lies outside the checkout: the project imports the checkout's targets by a relative path that exists.
        var project = File.ReadAllText(Path.Combine(output, "pipeline.proj"));
        var import = System.Text.RegularExpressions.Regex.Match(project, "Import Project=\"([^\"]+)\"").Groups[1].Value;
        Assert.Equal(Path.Combine(RepoRoot.Path, "build", "FineTune.targets"), Path.GetFullPath(Path.Combine(output, import)));
        Assert.StartsWith("# yaml-language-server: $schema=", File.ReadAllText(Path.Combine(output, "pipeline.yaml")));

        (code, stdout, err) = CliTests.Finetune("validate", output);
        Assert.Equal(0, code);
        Assert.Contains("valid", stdout);

        // A second import does not overwrite without --force.
        (code, _, err) = CliTests.Finetune("import", "llamafactory", source, "--base-dir", RepoRoot.Path, "--output", output);
        Assert.Equal(2, code);
        Assert.Equal($"error: {output}/pipeline.yaml exists; pass --force to replace it, or another --output.\n", err);
    }

    [Fact]
    public void BrokenLlamaFactoryFileIsALocatedUserErrorAndWritesNothing()
    {
        using var dir = new TempDir();
        var source = dir.Write("bad.yaml", "model_name_or_path: Qwen/Qwen3-0.6B\nstage: ppo\ndataset: identity\n");
        var (code, _, err) = CliTests.Finetune("import", "llamafactory", source, "--base-dir", RepoRoot.Path, "--output", dir.File("out"));
        Assert.Equal(2, code);
        Assert.Equal($"{source}:2:1: error: stage: stage: ppo is unsupported in FineTune (PPO: generation in the training loop); pt, sft, dpo, kto and rm are\n1 error(s).\n", err);
        Assert.False(Directory.Exists(dir.File("out")));
    }

    [Fact]
    public void ValidateTakesALlamaFactoryFileDirectly()
    {
        using var dir = new TempDir();
        // dataset_dir relative to the file's directory, as LLaMA-Factory run there would resolve it.
        var source = dir.Write("run.yaml", $"model_name_or_path: Qwen/Qwen3-0.6B\nstage: dpo\ndataset: identity_pref\ndataset_dir: {Path.Combine(RepoRoot.Path, "data")}\ntemplate: qwen3\nbf16: true\n");
        var (code, stdout, err) = CliTests.Finetune("validate", source);
        Assert.Equal(0, code);
        Assert.Equal($"{source}: a LLaMA-Factory config, imported in memory (`finetune import llamafactory` writes it as a pipeline).\n" +
            "  ignored     bf16 (line 6): FineTune's engine picks the precision: bf16 weights and activations with fp32 master weights on CUDA, fp32 on the CPU\n", err);
        Assert.Contains("valid (4 stages: download → register → split → train)", stdout.Replace("\n", ""));
    }

    [Fact]
    public void ExportConfigWritesALlamaFactoryYaml()
    {
        using var dir = new TempDir();
        var pipeline = TestPipelines.Write(dir);
        var (code, stdout, err) = CliTests.Finetune("export-config", "llamafactory", dir.Path, "--output", dir.File("lf/train.yaml"));
        Assert.Equal(2, code);
        Assert.Equal($"error: {pipeline}: model.source is scratch, which LLaMA-Factory cannot generate; run the download stage first (finetune run {pipeline} --stage download), then export again.\n", err);
        File.WriteAllText(pipeline, File.ReadAllText(pipeline).Replace("source: scratch", "source: hf://Qwen/Qwen3-0.6B").Replace("  scratch:\n    hidden_size: 32\n", ""));
        (code, stdout, err) = CliTests.Finetune("export-config", "llamafactory", dir.Path, "--output", dir.File("lf/train.yaml"));
        Assert.Equal("", err);
        Assert.Equal(0, code);
        var yaml = File.ReadAllText(dir.File("lf/train.yaml"));
        Assert.Contains("\nmodel_name_or_path: Qwen/Qwen3-0.6B\n", yaml);
        Assert.Contains("\nlearning_rate: 0.005\nnum_train_epochs: 3\nmax_steps: 10\n", yaml);
        Assert.Contains("\ndataset: identity\ndataset_dir: ../data\ntemplate: qwen3\n", yaml);
        Assert.Contains("not carried: data.placeholders", stdout);
    }
}

/// <summary>`finetune new NAME`: a folder that finetune and dotnet build run without a copied project file.</summary>
public sealed class NewCommandTests
{
    [Fact]
    public void NewWritesAValidPipelineAndAProjectImportingTheTargets()
    {
        using var dir = new TempDir();
        // Outside the checkout the folder names FineTune's data/ (found from the finetune binary) as its dataset_dir.
        var folder = dir.File("mine");
        var (code, stdout, err) = CliTests.Finetune("new", folder, "--model", "hf://Qwen/Qwen3-0.6B", "--template", "qwen3_nothink");
        Assert.Equal("", err);
        Assert.Equal(0, code);
        var outside = FineTune.Pipeline.Validation.PipelineLoader.Load(folder).Definition;
        Assert.Equal("hf://Qwen/Qwen3-0.6B", outside.Model.Source);
        Assert.Equal("qwen3_nothink", outside.Data.Template);
        Assert.Equal(Path.Combine(RepoRoot.Path, "data"), outside.Data.ResolveDatasetDir(folder));
        (code, _, err) = CliTests.Finetune("new", folder);
        Assert.Equal(2, code);
        Assert.Equal($"error: {folder}/pipeline.yaml exists; choose another folder.\n", err);

        var inside = Path.Combine(RepoRoot.Path, "pipelines", $"new-test-{Guid.NewGuid():N}");
        try
        {
            (code, stdout, err) = CliTests.Finetune("new", inside);
            Assert.Equal("", err);
            Assert.Equal(0, code);
            Assert.Equal($"wrote {inside}/pipeline.yaml\nwrote {inside}/pipeline.proj (`dotnet build {inside}` runs the pipeline)\n" +
                "valid: download → register → split → train → eval → merge → export\n", stdout);
            Assert.Equal("<!-- `dotnet build` in this folder runs pipeline.yaml through FineTune's build/FineTune.targets. -->\n<Project DefaultTargets=\"Build\">\n" +
                "  <Import Project=\"../../build/FineTune.targets\" />\n</Project>\n", File.ReadAllText(Path.Combine(inside, "pipeline.proj")));
            var p = FineTune.Pipeline.Validation.PipelineLoader.Load(inside);
            Assert.Equal(Path.GetFileName(inside), p.Definition.Name);
            Assert.Equal("qwen3", p.Definition.Data.Template);
            Assert.StartsWith("# yaml-language-server: $schema=../../schemas/pipeline.schema.json\n", File.ReadAllText(Path.Combine(inside, "pipeline.yaml")));
        }
        finally
        {
            if (Directory.Exists(inside)) Directory.Delete(inside, recursive: true);
        }
    }
}
