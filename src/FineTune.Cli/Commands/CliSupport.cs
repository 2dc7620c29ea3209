using System.CommandLine;
using FineTune.Pipeline;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Import;
using FineTune.Pipeline.Validation;
using Spectre.Console;

namespace FineTune.Cli.Commands;

/// <summary>Pieces shared by the commands: the pipeline argument, error handling, output.</summary>
public static class CliSupport
{
    /// <summary>
    /// Spectre.Console writing to <paramref name="output"/>: with colours and live progress on a terminal; plain text (no
    /// ANSI codes, not even bold) when NO_COLOR is set or the output is redirected, and then no hard wraps either, so a
    /// CI log or a file holds each line whole (a path is never split at column 80).
    /// </summary>
    public static void ConfigureConsole(TextWriter output)
    {
        var redirected = Console.IsOutputRedirected || !ReferenceEquals(output, Console.Out);
        var noColor = !string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NO_COLOR"));
        if (!redirected && !noColor) return;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(output),
        });
        if (redirected) console.Profile.Width = 1 << 16;
        AnsiConsole.Console = console;
    }

    /// <summary>The option `--json` of run and status: one JSON object on stdout, the human lines on stderr.</summary>
    public static Option<bool> JsonOption() => new("--json") { Description = "Print one JSON object (stages, states, reasons, fingerprints, metrics) on stdout for machines; progress goes to stderr." };

    /// <summary>
    /// For `--json`: human output (Spectre and plain lines) goes to stderr from now on; returns the stdout writer the JSON goes to.
    /// </summary>
    public static TextWriter HumanOutputToStderr()
    {
        var stdout = Console.Out;
        Console.SetOut(Console.Error);
        ConfigureConsole(Console.Error);
        return stdout;
    }

    /// <summary>A run or status report as JSON: metrics as numbers, states in the words `status` prints.</summary>
    public static string ReportJson(LoadedPipeline pipeline, RunReport report)
    {
        var stages = new System.Text.Json.Nodes.JsonArray();
        foreach (var s in report.Stages)
        {
            var metrics = new System.Text.Json.Nodes.JsonObject();
            foreach (var (k, v) in (s.Metrics ?? new Dictionary<string, double>()).OrderBy(kv => kv.Key, StringComparer.Ordinal))
                metrics[k] = double.IsFinite(v) ? v : null;
            stages.Add(new System.Text.Json.Nodes.JsonObject
            {
                ["name"] = s.Name,
                ["kind"] = FineTune.Pipeline.StageGraph.Name(s.Kind),
                ["state"] = s.State.Word(),
                ["reason"] = s.Reason,
                ["fingerprint"] = s.Fingerprint,
                ["seconds"] = s.Seconds,
                ["output"] = s.OutputDirectory,
                ["metrics"] = metrics,
            });
        }
        var root = new System.Text.Json.Nodes.JsonObject
        {
            ["pipeline"] = pipeline.Definition.Name,
            ["file"] = pipeline.FilePath,
            ["overrides"] = new System.Text.Json.Nodes.JsonArray(pipeline.Overrides.Select(o => (System.Text.Json.Nodes.JsonNode?)o).ToArray()),
            ["stages"] = stages,
            ["overhead_seconds"] = report.OverheadSeconds,
            ["lock_changed"] = report.LockChanged,
        };
        return root.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n";
    }


    public const int ExitUserError = 2;
    public const int ExitFailure = 1;
    /// <summary>An eval gate (stages.eval.require) failed: the pipeline ran as asked, its result missed a bound.</summary>
    public const int ExitGateFailed = 3;

    public static Argument<string[]> OverridesArgument() => new("overrides")
    {
        Description = "Values set over the pipeline file before validation, as dotted paths: stages.train.learning_rate=1e-4 data.dataset=[identity] (recorded in pipeline.lock).",
        Arity = ArgumentArity.ZeroOrMore,
    };

    public static Argument<string> PipelineArgument() => new("pipeline")
    {
        Description = "The pipeline.yaml, or the directory that holds it (default: the current directory).",
        DefaultValueFactory = _ => ".",
    };

    /// <summary>
    /// Runs a command body; user errors become one message per line on stderr and exit code 2, never a stack trace.
    /// Ctrl-C (SIGINT) cancels the body's token instead of killing the process, and so does SIGTERM (what <c>timeout</c>,
    /// CI runners and <c>docker stop</c> send) for a body that honours the token (<paramref name="stopOnSigterm"/>; any
    /// other keeps the default, which ends the process at once): training stops after the step in flight and saves it as
    /// a checkpoint. The exit code is then 128 + the signal number, as a shell reports a process the signal stopped: 130
    /// or 143.
    /// </summary>
    public static int Guard(Func<CancellationToken, int> body, bool stopOnSigterm = false)
    {
        using var cts = new CancellationTokenSource();
        int signal = 0;
        void Stop(int number)
        {
            Interlocked.CompareExchange(ref signal, number, 0);
            cts.Cancel();
        }
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; Stop(2); };
        Console.CancelKeyPress += onCancel;
        using var onTerminate = stopOnSigterm ? OnSigterm(() => Stop(15)) : null;
        try
        {
            return body(cts.Token);
        }
        catch (GateFailedException e)
        {
            Console.Error.WriteLine(e.Message);
            return ExitGateFailed;
        }
        catch (PipelineValidationException e)
        {
            foreach (var error in e.Errors)
                Console.Error.WriteLine(error.Line == 0 ? $"{error.File}: error: {error.JsonPath}: {error.Message}"
                    : $"{error.File}:{error.Line}:{error.Column}: error: {error.JsonPath}: {error.Message}");
            Console.Error.WriteLine($"{e.Errors.Count} error(s).");
            return ExitUserError;
        }
        catch (PipelineUserException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return ExitUserError;
        }
        catch (Exception e) when (IsUserError(e))
        {
            // Errors a user can cause in the lower layers carry a located, actionable message of their own.
            Console.Error.WriteLine($"error: {e.Message}");
            return ExitUserError;
        }
        catch (FineTune.Engine.Collectives.CollectiveException e)
        {
            // A rank of a several-process run died, hung or diverged from the others: the message names it and the activity.
            Console.Error.WriteLine($"error: {e.Message}");
            return ExitFailure;
        }
        catch (FineTune.Engine.Cuda.CudaException e)
        {
            // No driver/GPU for device: cuda, out of device memory (with the numbers and what to lower), a failed launch.
            Console.Error.WriteLine($"error: {e.Message}");
            return ExitFailure;
        }
        catch (Exception e) when (Cancelled(e) is { } oce)
        {
            // A training run says where its checkpoint is; other stages keep nothing half-written.
            Console.Error.WriteLine(oce is FineTune.Training.TrainingCancelledException t
                ? $"cancelled: {t.Message}" : "cancelled; nothing half-written was kept.");
            return 128 + (Volatile.Read(ref signal) is > 0 and var n ? n : 2);
        }
        catch (StageFailedException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            if (Environment.GetEnvironmentVariable("FINETUNE_DEBUG") == "1")
                Console.Error.WriteLine(e.InnerException);
            else
                Console.Error.WriteLine("(set FINETUNE_DEBUG=1 for the stack trace)");
            return ExitFailure;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>Handles SIGTERM with <paramref name="stop"/> (the default would end the process at once); null where the platform has none.</summary>
    public static IDisposable? OnSigterm(Action stop)
    {
        try
        {
            return System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, context =>
            {
                context.Cancel = true;
                stop();
            });
        }
        catch (PlatformNotSupportedException)
        {
            return null;
        }
    }

    /// <summary>The cancellation behind <paramref name="e"/>, also when a stage runner wrapped it.</summary>
    private static OperationCanceledException? Cancelled(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is OperationCanceledException oce) return oce;
        return null;
    }

    private static bool IsUserError(Exception e) => e is FineTune.Models.ModelFormatException or FineTune.Models.Hub.HubException
        or FineTune.Data.DatasetException or FineTune.Tokenizers.TokenizerFormatException or FineTune.Training.TrainingException;

    public static string StateText(StageState s) => s switch
    {
        StageState.UpToDate => "[green]up to date[/]",
        StageState.Ran => "[blue]ran[/]",
        StageState.Stale => "[yellow]stale[/]",
        StageState.NoExecutor => "[grey]no executor yet[/]",
        StageState.Blocked => "[grey]blocked[/]",
        _ => s.ToString(),
    };

    public static string Seconds(double s) => s < 1 ? $"{s * 1000:0} ms" : s < 120 ? $"{s:0.0} s" : $"{s / 60:0.0} min";

    /// <summary>Every metric of a stage, by name, numbers as <see cref="NumberText"/> writes them.</summary>
    public static string Metrics(IReadOnlyDictionary<string, double>? m) =>
        m is null || m.Count == 0 ? "" : string.Join(", ", m.OrderBy(kv => kv.Key, StringComparer.Ordinal)
            .Select(kv => $"{kv.Key}={NumberText.Format(kv.Value)}"));

    public static void PrintMissingExecutors(RunReport report)
    {
        var missing = report.Stages.Where(s => s.State == StageState.NoExecutor).Select(s => s.Name).ToArray();
        var blocked = report.Stages.Where(s => s.State == StageState.Blocked).Select(s => s.Name).ToArray();
        if (missing.Length == 0) return;
        AnsiConsole.MarkupLine($"[yellow]note:[/] no executor yet for: {string.Join(", ", missing)}" +
            (blocked.Length > 0 ? $"; not run because they need those: {string.Join(", ", blocked)}" : "") + ".");
    }

    /// <summary>
    /// The pipeline file or folder; a LLaMA-Factory config (YAML/JSON or a llamafactory-cli command) is imported in memory,
    /// anchored at its own directory (its .finetune/ cache and pipeline.lock go there), its notes on stderr.
    /// </summary>
    public static LoadedPipeline Load(string pipeline, IReadOnlyList<string>? overrides = null)
    {
        // `finetune run stages.train.learning_rate=1e-4`: the first word is an override, the pipeline the current directory.
        if (pipeline.Contains('=') && !File.Exists(pipeline) && !Directory.Exists(pipeline))
            (pipeline, overrides) = (".", [pipeline, .. overrides ?? []]);
        var full = Path.GetFullPath(pipeline);
        if (!File.Exists(full) || !LlamaFactoryArguments.IsLlamaFactoryFile(full))
            return PipelineLoader.Load(pipeline, overrides);
        var imported = LlamaFactoryImport.Import(full, Path.GetDirectoryName(full)!, full, overrides: overrides);
        Console.Error.WriteLine($"{pipeline}: a LLaMA-Factory config, imported in memory (`finetune import llamafactory` writes it as a pipeline).");
        foreach (var note in imported.Notes)
            Console.Error.WriteLine($"  {note}");
        return imported.Pipeline;
    }

    /// <summary>What `finetune import` wrote and every argument it could not carry, once each.</summary>
    public static void PrintImport(ImportedPipeline imported, string pipelineFile, string? project)
    {
        Console.WriteLine($"wrote {pipelineFile}" + (project is null ? "" : $" and {project}"));
        if (project is null)
            Console.WriteLine("  no FineTune checkout found above the folder or the finetune binary: no pipeline.proj written; run it with `finetune run`.");
        var ignored = imported.Notes.Where(n => n.Fate == KeyFate.Ignored).ToArray();
        var unsupported = imported.Notes.Where(n => n.Fate == KeyFate.Unsupported).ToArray();
        Console.WriteLine($"{ignored.Length} ignored, {unsupported.Length} unsupported (every other argument is carried):");
        foreach (var note in ignored.Concat(unsupported))
            Console.WriteLine($"  {note}");
        var stages = imported.Pipeline.Stages.Select(s => s.Name);
        Console.WriteLine($"valid: {string.Join(" → ", stages)}");
    }
}
