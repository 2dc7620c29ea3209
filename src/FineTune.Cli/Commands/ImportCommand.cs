using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Import;

namespace FineTune.Cli.Commands;

/// <summary>`finetune import llamafactory FILE --output DIR`: a LLaMA-Factory config as a FineTune pipeline folder.</summary>
public sealed class ImportCommand : ICliCommand
{
    public Command Create()
    {
        var file = new Argument<string>("file") { Description = "A LLaMA-Factory YAML or JSON config, or a text file holding a `llamafactory-cli train …` command (LlamaBoard's preview)." };
        var output = new Option<string>("--output", "-o") { Description = "The pipeline folder to write (pipeline.yaml and pipeline.proj).", Required = true };
        var baseDir = new Option<string?>("--base-dir") { Description = "Where LLaMA-Factory would have run: relative model and dataset_dir paths start here (default: the file's directory)." };
        var force = new Option<bool>("--force", "-f") { Description = "Replace an existing pipeline.yaml in the folder." };
        var llamaFactory = new Command("llamafactory", "Import a LLaMA-Factory training config: writes DIR/pipeline.yaml (every value kept) and DIR/pipeline.proj, and lists each argument FineTune ignores or does not support.")
        {
            file, output, baseDir, force,
        };
        llamaFactory.SetAction(r => CliSupport.Guard(_ =>
        {
            var source = Path.GetFullPath(r.GetValue(file)!);
            if (!File.Exists(source)) throw new PipelineUserException($"{r.GetValue(file)}: no such file; pass a LLaMA-Factory config or command file.");
            var dir = Path.GetFullPath(r.GetValue(output)!);
            var pipelineFile = Path.Combine(dir, "pipeline.yaml");
            if (File.Exists(pipelineFile) && !r.GetValue(force))
                throw new PipelineUserException($"{pipelineFile} exists; pass --force to replace it, or another --output.");
            var checkout = FineTuneCheckout.Find(dir);
            var imported = LlamaFactoryImport.Import(source, r.GetValue(baseDir) ?? Path.GetDirectoryName(source)!, pipelineFile, checkout?.Schema);
            Directory.CreateDirectory(dir);
            AtomicFile.WriteAllText(pipelineFile, imported.Yaml);
            var project = Path.Combine(dir, "pipeline.proj");
            if (checkout is not null) AtomicFile.WriteAllText(project, checkout.ProjectFor(dir));
            CliSupport.PrintImport(imported, pipelineFile, checkout is null ? null : project);
            return 0;
        }));
        return new Command("import", "Turn another tool's config into a FineTune pipeline.") { llamaFactory };
    }
}
