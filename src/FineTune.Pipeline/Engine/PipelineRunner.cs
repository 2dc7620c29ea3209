using FineTune.Pipeline.Config;
using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Engine;

public enum StageState
{
    /// <summary>Cached output with this fingerprint exists and verifies.</summary>
    UpToDate,
    /// <summary>Executed in this run.</summary>
    Ran,
    /// <summary>Would execute (dry run / status).</summary>
    Stale,
    /// <summary>No executor is registered for this kind yet.</summary>
    NoExecutor,
    /// <summary>Cannot run because a stage it needs has no executor.</summary>
    Blocked,
}

public static class StageStates
{
    /// <summary>The words `status`, `run --json` and the board show for a state.</summary>
    public static string Word(this StageState s) => s switch
    {
        StageState.UpToDate => "up to date",
        StageState.Ran => "ran",
        StageState.Stale => "stale",
        StageState.NoExecutor => "no executor yet",
        StageState.Blocked => "blocked",
        _ => s.ToString(),
    };
}

/// <param name="Name">The stage's name (its key under stages).</param>
/// <param name="Reason">Why the stage is in this state: "up to date", "stages.train.learning_rate: 0.005 → 0.001", …</param>
public sealed record StageOutcome(
    string Name,
    StageKind Kind,
    StageState State,
    string Reason,
    string? Fingerprint = null,
    double Seconds = 0,
    string? OutputDirectory = null,
    IReadOnlyDictionary<string, double>? Metrics = null,
    IReadOnlyList<string>? Notes = null);

public sealed record RunOptions
{
    /// <summary>Run this stage (by name: <c>train</c>, <c>dpo</c>) and the stages it needs, nothing after it.</summary>
    public string? Stage { get; init; }
    /// <summary>Re-run even when up to date: every selected stage, or only <see cref="Stage"/> when one is named.</summary>
    public bool Force { get; init; }
    /// <summary>Report what would run; execute nothing, write nothing.</summary>
    public bool DryRun { get; init; }
    /// <summary>Re-read every cached file instead of trusting the size+mtime hash index.</summary>
    public bool Verify { get; init; }
    public TimeSpan LockTimeout { get; init; } = TimeSpan.FromHours(1);
    /// <summary>A stage starts: its name and why it runs.</summary>
    public Action<string, string>? OnStageStart { get; init; }
    public Action<StageOutcome>? OnStageDone { get; init; }
    public Action<string>? OnInfo { get; init; }
    /// <summary>The processes of a several-process run (rank 0 runs the pipeline; train stages run on all); null: one process.</summary>
    public TrainingRanks? Ranks { get; init; }
}

/// <param name="OverheadSeconds">Wall time of the run minus the stages' own execution: FineTune's bookkeeping.</param>
/// <param name="BytesHashed">Bytes read for hashing (0 when the hash index covered everything).</param>
/// <param name="InputFiles">Every file the stages' external inputs cover (absolute paths): what MSBuild's quick
/// up-to-date check must watch besides the pipeline file.</param>
public sealed record RunReport(IReadOnlyList<StageOutcome> Stages, double OverheadSeconds, long BytesHashed, bool LockChanged,
    IReadOnlyList<string> InputFiles)
{
    public IReadOnlyList<StageOutcome> MissingExecutors => Stages.Where(s => s.State is StageState.NoExecutor or StageState.Blocked).ToArray();

    /// <summary>The eval gates (<c>stages.eval.require</c>) checked in this run, passed and failed; none in a dry run.</summary>
    public IReadOnlyList<GateResult> Gates { get; init; } = [];
}

/// <summary>A stage's executor threw something other than a user error.</summary>
public sealed class StageFailedException(string name, StageKind kind, Exception inner)
    : Exception($"stage {name} failed: {inner.Message}", inner)
{
    public string Name { get; } = name;
    public StageKind Kind { get; } = kind;
}

/// <summary>
/// The one stage engine behind the CLI, MSBuild and Cake: decides from fingerprints which stages are up to date,
/// runs the others into the cache, and records everything in pipeline.lock.
/// </summary>
public sealed class PipelineRunner
{
    private readonly Dictionary<StageKind, IStageExecutor> _executors;

    public PipelineRunner(IReadOnlyList<IStageExecutor> executors)
    {
        _executors = [];
        foreach (var e in executors)
            if (!_executors.TryAdd(e.Kind, e))
                throw new ArgumentException($"two executors registered for stage {StageNames.Of(e.Kind)}", nameof(executors));
    }

    public static PipelineRunner CreateDefault() => new(StageRegistry.CreateDefault());

    public bool HasExecutor(StageKind kind) => _executors.ContainsKey(kind);

    /// <summary>Stages to consider, in pipeline order: all, or <paramref name="target"/> and the stages it reads, transitively.</summary>
    public static IReadOnlyList<StageInstance> Plan(LoadedPipeline p, string? target)
    {
        var present = p.Stages;
        if (target is null) return present;
        var t = p.Definition.Stages[target] ?? throw new PipelineUserException(NotInPipeline(p, target));
        var needed = new HashSet<string>(StringComparer.Ordinal);
        void Visit(StageInstance s) { if (needed.Add(s.Name)) foreach (var u in s.Reads.Values) Visit(p.Definition.Stages[u]!); }
        Visit(t);
        return present.Where(s => needed.Contains(s.Name)).ToArray();
    }

    /// <summary>
    /// The stage a front end's option names (<c>--stage dpo</c>, <c>FineTuneStage=dpo</c>): its name, or a kind's name
    /// in another case (<c>Train</c>, as the Cake tasks spell it); anything else is a user error with a did-you-mean.
    /// </summary>
    public static string StageNamed(LoadedPipeline p, string name, string option)
    {
        if (p.Definition.Stages[name] is not null) return name;
        if (p.Stages.FirstOrDefault(s => s.Name.Equals(name, StringComparison.OrdinalIgnoreCase)) is { } other) return other.Name;
        var names = p.Stages.Select(s => s.Name).ToArray();
        var suggestion = DidYouMean.Suggest(name, names);
        throw new PipelineUserException($"{option} {name}: no such stage in {p.FilePath}; expected one of {string.Join(", ", names)}"
            + (suggestion is null ? "" : $"; did you mean '{suggestion}'?"));
    }

    /// <summary>"stage 'dpp' is not in this pipeline (it has: …); did you mean 'dpo'?"</summary>
    public static string NotInPipeline(LoadedPipeline p, string name)
    {
        var names = p.Stages.Select(s => s.Name).ToArray();
        var suggestion = DidYouMean.Suggest(name, names);
        return $"{p.FilePath}: stage '{name}' is not in this pipeline (it has: {string.Join(", ", names)})" + (suggestion is null ? "." : $"; did you mean '{suggestion}'?");
    }

    /// <summary>Status of every stage without running or writing anything but the hash index.</summary>
    public RunReport Status(LoadedPipeline p, bool verify = false) =>
        Run(p, new RunOptions { DryRun = true, Verify = verify }, new NullStageProgress(), CancellationToken.None);

    public RunReport Run(LoadedPipeline p, RunOptions options, IStageProgress progress, CancellationToken ct)
    {
        var wall = Stopwatch.StartNew();
        var cache = StageCache.For(p);
        var lockPath = LockFile.PathBeside(p.FilePath);
        var plan = Plan(p, options.Stage);

        using var runLock = options.DryRun ? null : RunLock.Acquire(cache.Root, options.LockTimeout, options.OnInfo, ct);
        if (runLock is not null)
        {
            cache.SweepTemp();
            AtomicFile.SweepStale(lockPath);
        }
        var hasher = new ContentHasher(cache.IndexPath, trustIndex: !options.Verify);
        var (lockFile, lockDamage) = ReadLock(lockPath, options);
        // Entries written after each stage keep the pipeline's order, a stage added in the middle included.
        lockFile = lockFile.InOrder(p.Stages.Select(s => s.Name)) with { Overrides = p.Overrides };
        var outcomes = new Dictionary<string, StageOutcome>(StringComparer.Ordinal);
        var outputHashes = new Dictionary<string, string>(StringComparer.Ordinal);
        var stageSeconds = 0.0;
        var lockChanged = false;
        var inputFiles = new SortedSet<string>(StringComparer.Ordinal);

        var gates = new List<GateResult>();
        var gateFailed = false;
        try
        {
            foreach (var stage in plan)
            {
                ct.ThrowIfCancellationRequested();
                var outcome = Resolve(stage);
                outcomes[stage.Name] = outcome;
                options.OnStageDone?.Invoke(outcome);
                // Gates judge the metrics of a stage that ran or was found up to date: changing a bound re-checks, never re-runs.
                if (stage.Block is EvalConfig { Require.Count: > 0 } eval && outcome.State is StageState.Ran or StageState.UpToDate)
                {
                    var checkedGates = GateResult.Check(stage.Name, eval.Require, outcome.Metrics ?? new Dictionary<string, double>());
                    gates.AddRange(checkedGates);
                    if (checkedGates.Any(g => !g.Passed)) { gateFailed = true; break; }
                }
            }
        }
        finally
        {
            hasher.Save();
        }

        if (!options.DryRun)
        {
            // Forget stages the pipeline no longer has; keep entries of stages not selected this time.
            var pruned = lockFile.Only(p.Stages.Select(s => s.Name));
            lockChanged |= pruned.WriteIfChanged(lockPath);
        }

        var report = new RunReport(plan.Where(s => outcomes.ContainsKey(s.Name)).Select(s => outcomes[s.Name]).ToArray(), wall.Elapsed.TotalSeconds - stageSeconds,
            hasher.BytesHashed, lockChanged, inputFiles.ToArray()) { Gates = gates };
        if (gateFailed)
            throw new GateFailedException(gates.Where(g => !g.Passed).ToArray(), report);
        return report;

        StageOutcome Resolve(StageInstance stage)
        {
            var (name, kind) = (stage.Name, stage.Kind);
            if (!_executors.TryGetValue(kind, out var executor))
                return new StageOutcome(name, kind, StageState.NoExecutor, "no executor yet");
            foreach (var up in stage.Reads.Values)
            {
                var u = outcomes[up];
                if (u.State is StageState.NoExecutor or StageState.Blocked)
                    return new StageOutcome(name, kind, StageState.Blocked, $"needs stage {up}, which cannot run yet");
                if (u.State == StageState.Stale)
                    return new StageOutcome(name, kind, StageState.Stale, $"upstream stage {up} will run first");
            }

            // Providers keyed by kind: a stage reads at most one stage of each kind (a train stage built on another finds it under Train).
            var upstreamDirs = stage.Reads.ToDictionary(u => u.Key, u => outcomes[u.Value].OutputDirectory!);
            var upstreamHashes = stage.Reads.ToDictionary(u => u.Key, u => outputHashes[u.Value]);
            var ctx = new StageContext(p.Definition, p.Directory, upstreamDirs, "", progress, ct, cache.WorkDirectory(name), upstreamHashes) { Stage = stage, Ranks = options.Ranks };
            var inputs = new List<(string Name, string Hash)>();
            foreach (var input in executor.ExternalInputs(ctx))
            {
                var full = Path.GetFullPath(input, p.Directory);
                if (!File.Exists(full) && !Directory.Exists(full))
                    throw new PipelineUserException($"{p.FilePath}: stage {name} reads '{input}', which does not exist.");
                inputs.Add((Path.GetRelativePath(p.Directory, full).Replace('\\', '/'), hasher.HashPath(full)));
                if (Directory.Exists(full)) inputFiles.UnionWith(Directory.EnumerateFiles(full, "*", SearchOption.AllDirectories));
                else inputFiles.Add(full);
            }
            var fp = new StageFingerprint(kind, StageFingerprint.ParametersOf(stage, p.Definition), upstreamHashes, inputs);
            var fingerprint = fp.Hash;
            var check = cache.Check(fingerprint, hasher);
            if (check.Damaged && !options.DryRun)
                options.OnInfo?.Invoke($"{cache.ManifestPath(fingerprint)}: {check.Problem} and rebuilt.");
            else if (!check.Valid && check.Manifest is not null && !options.DryRun)
                // An entry whose files no longer hash to its manifest (edited, truncated, tampered with): never reused.
                options.OnInfo?.Invoke($"warning: {cache.EntryDirectory(fingerprint)}: {check.Problem}; stage {name} runs again and replaces it.");
            var forced = options.Force && (options.Stage is null || options.Stage == name);

            if (check.Valid && !forced)
            {
                var m = check.Manifest!;
                outputHashes[name] = m.OutputHash;
                var reason = lockFile.Stages.TryGetValue(name, out var locked) && locked.Fingerprint == fingerprint
                    ? "up to date"
                    : "up to date (output reused from the cache)";
                Record(stage, fp, m);
                return new StageOutcome(name, kind, StageState.UpToDate, reason, fingerprint, 0, cache.OutputDirectory(fingerprint), m.Metrics, m.Notes);
            }

            var why = forced ? "forced" : Explain(stage, fp, fingerprint, check);
            if (executor.Resumable(ctx) is { } resumable)
                why += "; " + resumable;
            if (options.DryRun)
                return new StageOutcome(name, kind, StageState.Stale, why, fingerprint);

            options.OnStageStart?.Invoke(name, why);
            var temp = cache.CreateTemp(name);
            var clock = Stopwatch.StartNew();
            StageResult result;
            try
            {
                result = executor.Execute(ctx with { OutputDirectory = Path.Combine(temp, "out") });
            }
            catch (Exception e)
            {
                cache.Discard(temp);
                stageSeconds += clock.Elapsed.TotalSeconds;
                throw e switch
                {
                    OperationCanceledException => e,
                    // Keys a stage could only check once it ran (against the downloaded model): located like load-time errors.
                    PipelineKeyException k => new PipelineValidationException(k.Errors.Select(x => p.ErrorAt(x.JsonPath, x.Message)).ToArray()),
                    PipelineUserException => new PipelineUserException($"stage {name}: {e.Message}", e),
                    _ => new StageFailedException(name, kind, e),
                };
            }
            var seconds = clock.Elapsed.TotalSeconds;
            stageSeconds += seconds;
            var manifest = cache.Commit(temp, kind, fingerprint, result, seconds, hasher);
            outputHashes[name] = manifest.OutputHash;
            Record(stage, fp, manifest);
            hasher.Save();
            return new StageOutcome(name, kind, StageState.Ran, why, fingerprint, seconds, cache.OutputDirectory(fingerprint), manifest.Metrics, manifest.Notes);
        }

        void Record(StageInstance stage, StageFingerprint fp, CacheManifest m)
        {
            if (options.DryRun) return;
            lockFile = lockFile.With(stage.Name, new LockedStage(
                fp.Hash, fp.Parameters,
                // Keyed by the provider's name (the fingerprint keys them by kind: renaming a provider re-runs nothing).
                fp.Upstream.ToDictionary(u => stage.Reads[u.Key], u => u.Value),
                fp.Inputs.GroupBy(i => i.Name).ToDictionary(g => g.Key, g => g.First().Hash),
                m.OutputHash,
                m.ResultFiles.ToDictionary(f => f.Path, f => f.Sha256),
                m.Metrics.Where(kv => !StageResult.IsTiming(kv.Key)).ToDictionary(),
                m.Reports ?? []));
            lockChanged |= lockFile.WriteIfChanged(lockPath);
        }

        string Explain(StageInstance stage, StageFingerprint fp, string fingerprint, CacheCheck check)
        {
            if (!lockFile.Stages.TryGetValue(stage.Name, out var locked))
                return lockDamage is null ? "never ran (not in pipeline.lock)" : $"no record to compare with ({LockFile.FileName} is damaged and ignored)";
            if (locked.Fingerprint == fingerprint)
                return check.Problem ?? "cached output missing";
            var reasons = new List<string>();
            reasons.AddRange(ParameterChanges(locked.Parameters, fp.Parameters, stage));
            foreach (var (up, hash) in fp.Upstream)
                if (!locked.Upstream.TryGetValue(stage.Reads[up], out var old) || old != hash)
                    reasons.Add($"output of upstream stage {stage.Reads[up]} changed");
            var now = fp.Inputs.GroupBy(i => i.Name).ToDictionary(g => g.Key, g => g.First().Hash);
            foreach (var (inputName, hash) in now)
                if (!locked.Inputs.TryGetValue(inputName, out var old)) reasons.Add($"new input {inputName}");
                else if (old != hash) reasons.Add($"input {inputName} changed");
            foreach (var inputName in locked.Inputs.Keys.Except(now.Keys))
                reasons.Add($"input {inputName} removed");
            if (reasons.Count == 0)
                reasons.Add("FineTune's stage format changed");
            return string.Join("; ", reasons);
        }
    }

    /// <summary>
    /// The lock, or — when it is damaged — an empty one and a one-line note: a run rewrites the lock from what it finds
    /// and produces, so a damaged lock costs its record of stages this run does not reach, never the run.
    /// </summary>
    private static (LockFile Lock, string? Damage) ReadLock(string lockPath, RunOptions options)
    {
        try
        {
            return (LockFile.Read(lockPath), null);
        }
        catch (LockFileDamagedException e)
        {
            options.OnInfo?.Invoke(options.DryRun
                ? $"{e.LockPath}: {e.Problem}; the damaged lock is ignored (the next run rewrites it)."
                : $"{e.LockPath}: {e.Problem}; the damaged lock is ignored and rewritten from this run.");
            return (LockFile.Empty, e.Problem);
        }
    }

    /// <summary>"stages.train.learning_rate: 0.005 → 0.001" for every leaf that differs (<c>stages.dpo.…</c> for a stage named dpo).</summary>
    public static IReadOnlyList<string> ParameterChanges(JsonObject before, JsonObject after, StageInstance? stage = null)
    {
        var a = Flatten(before);
        var b = Flatten(after);
        var changes = new List<string>();
        foreach (var key in a.Keys.Union(b.Keys).OrderBy(k => k, StringComparer.Ordinal))
        {
            var x = a.GetValueOrDefault(key, "(unset)");
            var y = b.GetValueOrDefault(key, "(unset)");
            if (x != y) changes.Add($"{Qualify(key, stage)}: {x} → {y}");
        }
        return changes;
    }

    // Parameters are stored as {"train": {...}, "data": {...}}: the block under its kind's name, which in the YAML is
    // stages.<the stage's name>.
    private static string Qualify(string key, StageInstance? stage)
    {
        if (key.StartsWith("model.", StringComparison.Ordinal) || key.StartsWith("data.", StringComparison.Ordinal)) return key;
        var kind = stage is null ? null : StageNames.Of(stage.Kind);
        if (kind is not null && (key == kind || key.StartsWith(kind + ".", StringComparison.Ordinal)))
            key = stage!.Name + key[kind.Length..];
        return "stages." + key;
    }

    private static Dictionary<string, string> Flatten(JsonNode? node, string prefix = "", Dictionary<string, string>? into = null)
    {
        into ??= new Dictionary<string, string>(StringComparer.Ordinal);
        if (node is JsonObject o)
            foreach (var (k, v) in o)
                Flatten(v, prefix.Length == 0 ? k : $"{prefix}.{k}", into);
        else
            into[prefix] = node is null ? "null" : CanonicalJson.Serialize(node);
        return into;
    }
}
