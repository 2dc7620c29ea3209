using System.CommandLine;
using FineTune.Board;
using FineTune.Pipeline;

namespace FineTune.Cli.Commands;

/// <summary>`finetune board`: the web UI over the pipelines under a root (status and why, edit, run, live training, data, compare, chat, artifacts).</summary>
public sealed class BoardCommand : ICliCommand
{
    public Command Create()
    {
        var root = new Option<string>("--root") { Description = "The checkout whose pipelines/*/pipeline.yaml the board shows.", DefaultValueFactory = _ => "." };
        var host = new Option<string>("--host") { Description = "Address to bind; any but 127.0.0.1/::1/localhost needs --token.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0: any free port; the bound address is printed).", DefaultValueFactory = _ => 7860 };
        var token = new Option<string?>("--token") { Description = "Require this token on every request (default: $FINETUNE_BOARD_TOKEN); open the board as /?token=T." };
        var device = new Option<string>("--device") { Description = "Device of the Chat page's models: auto, cpu, cuda or cuda:N.", DefaultValueFactory = _ => "auto" };
        var command = new Command("board", "Web UI over the pipelines: stage graph and why, YAML editor with located errors, runs with live training, data, metrics across commits, chat, artifacts.")
        {
            root, host, port, token, device,
        };
        command.SetAction(r => CliSupport.Guard(ct =>
        {
            var options = new BoardOptions
            {
                Root = Path.GetFullPath(r.GetValue(root)!),
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                Token = r.GetValue(token) ?? Environment.GetEnvironmentVariable("FINETUNE_BOARD_TOKEN"),
                Device = r.GetValue(device)!,
            };
            try
            {
                using var board = new BoardServer(options);
                board.Run(Console.Out, ct);
                return 0;
            }
            catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException || e.Message.Contains("address", StringComparison.OrdinalIgnoreCase))
            {
                throw new PipelineUserException($"cannot listen on {options.Host}:{options.Port}: {e.Message}; pick another --port.");
            }
        }, stopOnSigterm: true));
        return command;
    }
}
