using System.CommandLine;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Cli.Commands;

/// <summary>`finetune schema`: print or write the pipeline JSON Schema generated from the configuration records.</summary>
public sealed class SchemaCommand : ICliCommand
{
    public Command Create()
    {
        var output = new Option<string?>("--output", "-o") { Description = "Write to this file (e.g. schemas/pipeline.schema.json) instead of stdout." };
        var command = new Command("schema", "Print the pipeline JSON Schema (regenerate schemas/pipeline.schema.json with -o).") { output };
        command.SetAction(r => CliSupport.Guard(_ =>
        {
            var json = PipelineSchema.GenerateJson();
            if (r.GetValue(output) is { } path) AtomicFile.WriteAllText(path, json);
            else Console.Write(json);
            return 0;
        }));
        return command;
    }
}
