using FineTune.Pipeline.Config;

namespace FineTune.Pipeline;

/// <summary>The seven stages, in pipeline order.</summary>
public enum StageKind { Download, Register, Split, Train, Eval, Merge, Export }

/// <summary>
/// Runs one kind of stage. One instance per kind is registered in <see cref="StageRegistry"/>; it runs every stage of
/// its kind (<see cref="StageContext.Stage"/> says which, with its block); the engine decides whether it runs
/// (fingerprint) and where its output goes (cache).
/// </summary>
public interface IStageExecutor
{
    StageKind Kind { get; }

    /// <summary>
    /// Files or directories outside the cache whose content enters the fingerprint (dataset files, a local
    /// model directory, a tokenizer.json). Only their content is hashed, never their paths. Called before
    /// <see cref="Execute"/>; <see cref="StageContext.OutputDirectory"/> is empty at that point.
    /// A path that does not exist is reported as a user error by the engine.
    /// </summary>
    IReadOnlyList<string> ExternalInputs(StageContext ctx);

    /// <summary>
    /// Writes the stage's output into <see cref="StageContext.OutputDirectory"/> (an empty temporary
    /// directory that the engine renames into the content-addressed cache on success; on an exception or a
    /// kill nothing becomes visible). Returns metrics recorded in pipeline.lock.
    /// Throw <see cref="PipelineUserException"/> for errors the user can fix.
    /// </summary>
    StageResult Execute(StageContext ctx);

    /// <summary>
    /// What an interrupted run of this stage left to continue from, for the reason `finetune status` and a dry run show
    /// ("checkpoint-3 (step 3 of 8) can be resumed: …"); null when there is nothing. Reads only, writes nothing.
    /// </summary>
    string? Resumable(StageContext ctx) => null;
}

/// <param name="Pipeline">The validated pipeline file, defaults applied.</param>
/// <param name="PipelineDirectory">Absolute directory of the pipeline file; relative paths in it resolve against this.</param>
/// <param name="UpstreamOutputs">Output directory (read-only, in the cache) of the stage this one reads for each kind (the
/// provider <see cref="StageInstance.Reads"/> names: one stage per kind; a train stage built on another train stage finds
/// that one's output under <see cref="StageKind.Train"/>).</param>
/// <param name="OutputDirectory">Empty directory to write the output into ("" during <see cref="IStageExecutor.ExternalInputs"/>).</param>
/// <param name="Progress">Progress bars and info lines (console, MSBuild log or nothing).</param>
/// <param name="Cancellation">Set on Ctrl+C; stop soon and throw <see cref="OperationCanceledException"/>.</param>
/// <param name="WorkDirectory">Persistent scratch directory of this stage under .finetune/work/&lt;name&gt; (kept across runs,
/// e.g. partial downloads for resume); not part of the output.</param>
/// <param name="UpstreamHashes">Output hash (content) of every upstream stage, as its fingerprint records it; null when
/// the stage is run outside the engine (tests), where a stage that needs them hashes the upstream directories itself.</param>
public sealed record StageContext(
    PipelineDefinition Pipeline,
    string PipelineDirectory,
    IReadOnlyDictionary<StageKind, string> UpstreamOutputs,
    string OutputDirectory,
    IStageProgress Progress,
    CancellationToken Cancellation,
    string WorkDirectory = "",
    IReadOnlyDictionary<StageKind, string>? UpstreamHashes = null)
{
    /// <summary>
    /// The stage being run: its name, kind, block and providers. The engine always sets it; a context built by hand (a
    /// stage run outside the engine) may leave it null, and then <see cref="Block{T}"/> takes the pipeline's only stage
    /// whose block is a <typeparamref name="T"/>.
    /// </summary>
    public StageInstance? Stage { get; init; }

    /// <summary>The processes of a several-process run, for the train stage (null: one process).</summary>
    public TrainingRanks? Ranks { get; init; }

    /// <summary>This stage's own block (defaults when the pipeline built in code has none).</summary>
    public T Block<T>() where T : class, new()
    {
        if (Stage is not null)
            return Stage.Block as T ?? throw new InvalidOperationException($"stage {Stage.Name} is a {Stage.Kind} stage, not configured by {typeof(T).Name}");
        var candidates = Pipeline.Stages.All.Where(s => s.Block is T).ToArray();
        return candidates.Length switch
        {
            0 => new T(),
            1 => (T)candidates[0].Block,
            _ => throw new InvalidOperationException($"the pipeline has {candidates.Length} stages configured by {typeof(T).Name}; set StageContext.Stage"),
        };
    }

    /// <summary>The stage's name (its key under stages), for messages that point at its keys (<c>stages.dpo.device</c>).</summary>
    public string StageName<T>() where T : class, new() =>
        Stage?.Name ?? Pipeline.Stages.All.FirstOrDefault(s => s.Block is T)?.Name ?? StageTable.All.First(d => d.Block == typeof(T)).Name;

    /// <summary>Resolves a path written in the pipeline file (relative to it) to an absolute path.</summary>
    public string ResolvePath(string path) => Path.GetFullPath(Path.Combine(PipelineDirectory, path));
}

/// <param name="Metrics">Numbers recorded in pipeline.lock and shown by `finetune status` (e.g. train_loss, eval_loss, samples).</param>
/// <param name="Notes">Short lines shown after the stage ran (e.g. "resolved main → 3f2a…").</param>
/// <param name="Reports">Output files that report how this run went (logs, timings: HF's trainer_log.jsonl,
/// *_results.json with their runtimes). They are cached and checked like every file, but the output hash that
/// downstream fingerprints and pipeline.lock record covers the other files only, so a rerun that produces the same
/// weights leaves both unchanged.</param>
public sealed record StageResult(IReadOnlyDictionary<string, double> Metrics, IReadOnlyList<string> Notes, IReadOnlyList<string>? Reports = null)
{
    public static StageResult Empty { get; } = new(new Dictionary<string, double>(), []);

    /// <summary>Metrics that measure the run rather than the result (wall time, throughput): shown, not locked.</summary>
    public static bool IsTiming(string metric) =>
        metric.EndsWith("_runtime", StringComparison.Ordinal) || metric.EndsWith("_per_second", StringComparison.Ordinal)
        || metric.EndsWith("_seconds", StringComparison.Ordinal) || metric == "seconds";
}

/// <summary>Where a stage reports progress: the CLI draws Spectre.Console bars, MSBuild logs lines, tests ignore it.</summary>
public interface IStageProgress
{
    IProgressTask Start(string description, double total);
    void Info(string line);
}

public interface IProgressTask : IDisposable
{
    void Increment(double by);
    void SetDescription(string description);
}

/// <summary>Progress sink that drops everything.</summary>
public sealed class NullStageProgress : IStageProgress
{
    public IProgressTask Start(string description, double total) => new NullTask();
    public void Info(string line) { }

    private sealed class NullTask : IProgressTask
    {
        public void Increment(double by) { }
        public void SetDescription(string description) { }
        public void Dispose() { }
    }
}

/// <summary>An error the user can fix (bad pipeline value, missing file, gated model): printed without a stack trace, exit code 2.</summary>
public class PipelineUserException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Values of pipeline keys that a stage found wrong only once it could look (a module name checked against the downloaded
/// model): the engine locates each key in the pipeline file and reports them as validation errors (file:line:col).
/// </summary>
/// <param name="Errors">JSON path of each key (<c>$.stages.train.lora_target[1]</c>) and what is wrong with it.</param>
public sealed class PipelineKeyException(IReadOnlyList<(string JsonPath, string Message)> errors)
    : PipelineUserException(string.Join(Environment.NewLine, errors.Select(e => $"{e.JsonPath[2..]}: {e.Message}")))
{
    public IReadOnlyList<(string JsonPath, string Message)> Errors { get; } = errors;
}
