using System.CommandLine;

namespace FineTune.Cli.Commands;

/// <summary>A `finetune` subcommand. Implement it in its own file under Commands/; Program finds it by reflection.</summary>
public interface ICliCommand
{
    Command Create();
}
