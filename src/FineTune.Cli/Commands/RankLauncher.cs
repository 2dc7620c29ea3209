using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using FineTune.Engine.Collectives;

namespace FineTune.Cli.Commands;

/// <summary>
/// `finetune run P --nproc-per-node N`: torchrun's job for FineTune. Starts N child processes of this same command (the
/// launcher flags removed) with torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE), forwards Ctrl-C and SIGTERM to them as SIGTERM (they stop after the same step and rank 0 saves
/// it; not as SIGINT, which a job started in the background of a non-interactive shell inherits as ignored, and .NET
/// then keeps ignoring: its ranks would never stop), and when
/// one dies before the others it gives them a few seconds to stop on their own (they see its closed connection at once
/// and say so), then kills the rest; the exit code is the first failed rank's (a rank killed by a signal before one that exited).
/// </summary>
public static class RankLauncher
{
    /// <summary>Flags of `run` that the launcher consumes (each with a value); the children get every other argument.</summary>
    public static readonly string[] Flags = ["--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"];

    /// <summary>Seconds the other ranks get to stop on their own after one died, before they are killed.</summary>
    const int GraceSeconds = 15;

    public sealed record Settings(int ProcsPerNode, int Nodes, int NodeRank, string MasterAddr, int? MasterPort);

    public static int Launch(Settings s, string[] childArguments, CancellationToken ct)
    {
        if (s.ProcsPerNode < 1) throw new Pipeline.PipelineUserException($"--nproc-per-node {s.ProcsPerNode}: start at least one process.");
        if (s.Nodes < 1 || s.NodeRank < 0 || s.NodeRank >= s.Nodes)
            throw new Pipeline.PipelineUserException($"--node-rank {s.NodeRank} is not in 0…{s.Nodes - 1} (--nnodes {s.Nodes}).");
        if (s.Nodes > 1 && s.MasterPort is null)
            throw new Pipeline.PipelineUserException("--nnodes above 1 needs --master-port (and --master-addr, the host of node 0), the same on every node.");
        int port = s.MasterPort ?? FreePort();
        int world = s.Nodes * s.ProcsPerNode;
        var (program, prefix) = Self();
        var children = new Process[s.ProcsPerNode];
        for (int local = 0; local < s.ProcsPerNode; local++)
        {
            var rv = new Rendezvous(s.MasterAddr, port, s.NodeRank * s.ProcsPerNode + local, world, local, s.ProcsPerNode);
            var start = new ProcessStartInfo(program) { UseShellExecute = false };
            foreach (var a in prefix.Concat(childArguments)) start.ArgumentList.Add(a);
            foreach (var (k, v) in rv.Variables()) start.Environment[k] = v;
            start.Environment.TryAdd("NCCL_NVLS_ENABLE", "0");
            children[local] = Process.Start(start) ?? throw new InvalidOperationException($"could not start rank {rv.Rank}");
        }
        int Rank(int local) => s.NodeRank * s.ProcsPerNode + local;
        bool forwarded = false;
        int? failed = null;
        Stopwatch? sinceFailure = null;
        while (true)
        {
            if (ct.IsCancellationRequested && !forwarded)
            {
                forwarded = true;
                foreach (var c in children) if (!c.HasExited) _ = kill(c.Id, 15); // SIGTERM: see the summary
            }
            if (failed is null && !forwarded)
            {
                // Several ranks may have ended by this poll: a rank killed by a signal is the cause (the others then fail
                // on its closed connection, within milliseconds), so it is the one reported, whatever its rank.
                var ended = Enumerable.Range(0, children.Length).Where(i => children[i].HasExited && children[i].ExitCode != 0).ToList();
                if (ended.Count > 0)
                {
                    int i = ended.FirstOrDefault(j => children[j].ExitCode > 128, ended[0]);
                    failed = i;
                    sinceFailure = Stopwatch.StartNew();
                    Console.Error.WriteLine($"finetune run: rank {Rank(i)} (pid {children[i].Id}) {Ending(children[i].ExitCode)}; stopping the other ranks.");
                }
            }
            if (children.All(c => c.HasExited)) break;
            if (sinceFailure is { } t && t.Elapsed > TimeSpan.FromSeconds(GraceSeconds))
            {
                foreach (var c in children)
                    if (!c.HasExited) { c.Kill(entireProcessTree: true); c.WaitForExit(); }
                break;
            }
            Thread.Sleep(50);
        }
        if (failed is int f) return Clamp(children[f].ExitCode);
        var first = children.Select((c, i) => (c.ExitCode, i)).FirstOrDefault(x => x.ExitCode != 0);
        return first.ExitCode == 0 ? 0 : Clamp(first.ExitCode);
    }

    static int Clamp(int code) => code is > 0 and < 256 ? code : 1;

    /// <summary>"exited with code 2", or for a signal "was killed by signal 9 (SIGKILL)" (.NET reports 128 + signal).</summary>
    static string Ending(int code) => code switch
    {
        137 => "was killed by signal 9 (SIGKILL: the OOM killer or kill -9)",
        _ when code > 128 && code < 160 => $"was stopped by signal {code - 128}",
        _ => $"exited with code {code}",
    };

    /// <summary>How to start this same program again: the apphost or single-file binary, or `dotnet finetune.dll`.</summary>
    static (string Program, string[] Prefix)  Self()
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("the path of this process is unknown");
        string name = Path.GetFileNameWithoutExtension(process);
        return name.Equals("dotnet", StringComparison.OrdinalIgnoreCase) ? (process, [typeof(RankLauncher).Assembly.Location]) : (process, []);
    }

    static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>The command line without the launcher's flags (`--flag value` and `--flag=value`).</summary>
    public static string[] WithoutLauncherFlags(IReadOnlyList<string> args)
    {
        var kept = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (Flags.Contains(a)) { i++; continue; }
            if (Flags.Any(f => a.StartsWith(f + "=", StringComparison.Ordinal))) continue;
            kept.Add(a);
        }
        return [.. kept];
    }

    [DllImport("libc")]
    static extern int kill(int pid, int signal);

    internal static string Format(int v) => v.ToString(CultureInfo.InvariantCulture);
}
