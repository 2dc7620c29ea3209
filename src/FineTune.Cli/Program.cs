using System.CommandLine;
using System.Reflection;
using FineTune.Cli.Commands;

namespace FineTune.Cli;

internal static class Program
{
    private static int Main(string[] args)
    {
        CliSupport.ConfigureConsole(Console.Out);
        var root = new RootCommand("FineTune: declarative, cached fine-tuning of LLMs (pipeline.yaml → download, register, split, train, eval, merge, export).");
        // Every ICliCommand in this assembly is a subcommand: adding a command is adding one file under Commands/.
        foreach (var type in typeof(Program).Assembly.GetTypes()
                     .Where(t => t is { IsClass: true, IsAbstract: false } && typeof(ICliCommand).IsAssignableFrom(t))
                     .OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            var command = (ICliCommand)Activator.CreateInstance(type)!;
            root.Subcommands.Add(command.Create());
        }
        return root.Parse(args).Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
    }
}
