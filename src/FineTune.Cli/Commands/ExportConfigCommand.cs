using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Import;

namespace FineTune.Cli.Commands;

/// <summary>`finetune export-config llamafactory PIPELINE --output FILE.yaml`: a train stage as a LLaMA-Factory config.</summary>
public sealed class ExportConfigCommand : ICliCommand
{
    public Command Create()
    {
        var pipeline = CliSupport.PipelineArgument();
        var stage = new Option<string?>("--stage", "-s") { Description = "The train stage to export, by name (default: the pipeline's only train stage, or train)." };
        var output = new Option<string>("--output", "-o") { Description = "The LLaMA-Factory YAML to write.", Required = true };
        var llamaFactory = new Command("llamafactory", "Write a train stage (with its data, split and eval settings) as a LLaMA-Factory training YAML for `llamafactory-cli train`.")
        {
            pipeline, stage, output,
        };
        llamaFactory.SetAction(r => CliSupport.Guard(_ =>
        {
            var loaded = CliSupport.Load(r.GetValue(pipeline)!);
            var trains = loaded.Definition.Stages.OfKind(StageKind.Train);
            var name = r.GetValue(stage) is { } s ? PipelineRunner.StageNamed(loaded, s, "--stage")
                : trains.Count == 1 ? trains[0].Name : trains.Any(t => t.Name == "train") ? "train"
                : throw new PipelineUserException($"{loaded.FilePath} has {trains.Count} train stages ({string.Join(", ", trains.Select(t => t.Name))}); pass --stage.");
            // A scratch model exists only as the download stage's output: name that directory when it is up to date.
            string? modelDirectory = null;
            if (loaded.Definition.Model.IsScratch)
                modelDirectory = PipelineRunner.CreateDefault().Status(loaded).Stages
                    .FirstOrDefault(o => o.Kind == StageKind.Download && o.State == StageState.UpToDate)?.OutputDirectory;
            var file = Path.GetFullPath(r.GetValue(output)!);
            var (yaml, notCarried) = LlamaFactoryExport.Export(loaded, name, file, modelDirectory);
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            AtomicFile.WriteAllText(file, yaml);
            Console.WriteLine($"wrote {file} (stage {name})");
            foreach (var note in notCarried)
                Console.WriteLine($"  not carried: {note}");
            return 0;
        }));
        return new Command("export-config", "Write a pipeline as another tool's config.") { llamaFactory };
    }
}
