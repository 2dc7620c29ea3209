using System.CommandLine;
using System.Text.RegularExpressions;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Import;
using FineTune.Pipeline.Validation;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune new NAME`: a pipeline folder that `dotnet build NAME` runs — pipeline.yaml (all seven stages, validated before
/// it is written) and pipeline.proj importing FineTune's targets — so no project file has to be copied by hand.
/// </summary>
public sealed partial class NewCommand : ICliCommand
{
    public Command Create()
    {
        var name = new Argument<string>("name") { Description = "The folder to create (its last part names the pipeline), e.g. pipelines/mine." };
        var model = new Option<string>("--model", "-m") { Description = "model.source: hf://org/name[@revision], a model directory, or scratch (a tiny generated Qwen3, the default).", DefaultValueFactory = _ => "scratch" };
        var template = new Option<string>("--template", "-t") { Description = "The chat template (qwen3, llama3, chatml, …).", DefaultValueFactory = _ => "qwen3" };
        var dataset = new Option<string>("--dataset", "-d") { Description = "Datasets in dataset_info.json, comma-separated.", DefaultValueFactory = _ => "identity" };
        var command = new Command("new", "Create a pipeline folder (pipeline.yaml + pipeline.proj) that `finetune run` and `dotnet build` run.") { name, model, template, dataset };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var dir = Path.GetFullPath(r.GetValue(name)!);
            var file = Path.Combine(dir, PipelineLoader.DefaultFileName);
            if (File.Exists(file)) throw new PipelineUserException($"{file} exists; choose another folder.");
            var pipelineName = Regex.Replace(Path.GetFileName(dir.TrimEnd('/', '\\')), "[^A-Za-z0-9._-]+", "-").Trim('-');
            if (pipelineName.Length == 0) throw new PipelineUserException($"{r.GetValue(name)}: give the folder a name of letters, digits, '.', '_' or '-'.");
            var checkout = FineTuneCheckout.Find(dir);
            var yaml = Yaml(pipelineName, r.GetValue(model)!, r.GetValue(template)!, r.GetValue(dataset)!, checkout, dir);
            // Validate before writing: a pipeline folder that cannot run is not created.
            var loaded = PipelineLoader.Parse(yaml, file);
            Directory.CreateDirectory(dir);
            AtomicFile.WriteAllText(file, yaml);
            Console.WriteLine($"wrote {file}");
            if (checkout is not null)
            {
                var project = Path.Combine(dir, "pipeline.proj");
                AtomicFile.WriteAllText(project, checkout.ProjectFor(dir));
                Console.WriteLine($"wrote {project} (`dotnet build {r.GetValue(name)}` runs the pipeline)");
            }
            else
                Console.WriteLine("no FineTune checkout found above the folder or the finetune binary: no pipeline.proj written; run it with `finetune run`.");
            Console.WriteLine($"valid: {string.Join(" → ", loaded.Stages.Select(s => s.Name))}");
            return 0;
        }));
        return command;
    }

    private static string Yaml(string name, string model, string template, string datasets, FineTuneCheckout? checkout, string dir)
    {
        var q = LlamaFactoryImport.Scalar;
        var names = datasets.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var lines = new List<string>();
        if (checkout is not null)
            lines.Add($"# yaml-language-server: $schema={Path.GetRelativePath(dir, checkout.Schema).Replace('\\', '/')}");
        lines.Add($"name: {q(name)}");
        lines.Add("");
        lines.Add("model:");
        lines.Add($"  source: {q(model)}");
        if (model == "scratch")
        {
            lines.Add("  # A tiny generated Qwen3: trains on the CPU in seconds. Replace with hf://Qwen/Qwen3-0.6B or a model directory.");
            lines.Add("  scratch: {architecture: qwen3, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4,");
            lines.Add("            num_key_value_heads: 2, head_dim: 32, max_position_embeddings: 1024, tie_word_embeddings: false, seed: 0}");
        }
        lines.Add("");
        lines.Add("data:");
        // Outside the checkout no data/ is found walking up from the folder: name FineTune's own registry.
        var registry = new FineTune.Pipeline.Config.DataSection().ResolveDatasetDir(dir);
        if (!File.Exists(Path.Combine(registry, "dataset_info.json")) && checkout is not null)
            lines.Add($"  dataset_dir: {q(Path.GetRelativePath(dir, Path.Combine(checkout.Root, "data")).Replace('\\', '/'))}");
        lines.Add($"  dataset: [{string.Join(", ", names.Select(q))}]");
        lines.Add($"  template: {q(template)}");
        if (names.Contains("identity"))
            lines.Add("  placeholders: {name: FineTune Assistant, author: the FineTune team}");
        lines.Add("");
        lines.Add("stages:");
        lines.Add("  download: {}");
        lines.Add("  register: {}");
        lines.Add("  split: {val_size: 0.1, cutoff_len: 1024}");
        lines.Add("  train:");
        lines.Add("    finetuning_type: lora");
        lines.Add("    lora_rank: 8");
        lines.Add("    lora_target: all");
        lines.Add("    learning_rate: 1.0e-4");
        lines.Add("    num_train_epochs: 3");
        lines.Add("    per_device_train_batch_size: 8");
        lines.Add("    lr_scheduler_type: cosine");
        lines.Add("  eval: {}");
        lines.Add("  merge: {}");
        lines.Add("  export: {formats: [hf]}");
        return string.Join("\n", lines) + "\n";
    }
}
