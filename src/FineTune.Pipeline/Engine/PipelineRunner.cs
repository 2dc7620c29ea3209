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

/// <param name="Reason">Why the stage is in this state: "up to date", "stages.train.learning_rate: 0.005 → 0.001", …</param>
public sealed record StageOutcome(
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
    /// <summary>Run this stage and the stages it needs, nothing after it.</summary>
    public StageKind? Stage { get; init; }
    /// <summary>Re-run even when up to date: every selected stage, or only <see cref="Stage"/> when one is named.</summary>
    public bool Force { get; init; }
    /// <summary>Report what would run; execute nothing, write nothing.</summary>
    public bool DryRun { get; init; }
    /// <summary>Re-read every cached file instead of trusting the size+mtime hash index.</summary>
    public bool Verify { get; init; }
    public TimeSpan LockTimeout { get; init; } = TimeSpan.FromHours(1);
    public Action<StageKind, string>? OnStageStart { get; init; }
    public Action<StageOutcome>? OnStageDone { get; init; }
    public Action<string>? OnInfo { get; init; }
}

/// <param name="OverheadSeconds">Wall time of the run minus the stages' own execution: FineTune's bookkeeping.</param>
/// <param name="BytesHashed">Bytes read for hashing (0 when the hash index covered everything).</param>
/// <param name="InputFiles">Every file the stages' external inputs cover (absolute paths): what MSBuild's quick
/// up-to-date check must watch besides the pipeline file.</param>
public sealed record RunReport(IReadOnlyList<StageOutcome> Stages, double OverheadSeconds, long BytesHashed, bool LockChanged,
    IReadOnlyList<string> InputFiles)
{
    public IReadOnlyList<StageOutcome> MissingExecutors => Stages.Where(s => s.State is StageState.NoExecutor or StageState.Blocked).ToArray();
}

/// <summary>A stage's executor threw something other than a user error.</summary>
public sealed class StageFailedException(StageKind kind, Exception inner)
    : Exception($"stage {StageNames.Of(kind)} failed: {inner.Message}", inner)
{
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

    /// <summary>Stages to consider: all present ones, or <paramref name="target"/> and its upstream closure.</summary>
    public static IReadOnlyList<StageKind> Plan(LoadedPipeline p, StageKind? target)
    {
        var present = p.Stages;
        if (target is not { } t) return present;
        if (!present.Contains(t))
            throw new PipelineUserException($"{p.FilePath}: stage '{StageNames.Of(t)}' is not in this pipeline (it has: {string.Join(", ", present.Select(StageNames.Of))}).");
        var needed = new HashSet<StageKind>();
        void Visit(StageKind k) { if (needed.Add(k)) foreach (var u in StageGraph.Upstream(k)) Visit(u); }
        Visit(t);
        return present.Where(needed.Contains).ToArray();
    }

    /// <summary>Status of every stage without running or writing anything but the hash index.</summary>
    public RunReport Status(LoadedPipeline p, bool verify = false) =>
        Run(p, new RunOptions { DryRun = true, Verify = verify }, new NullStageProgress(), CancellationToken.None);

    public RunReport Run(LoadedPipeline p, RunOptions options, IStageProgress progress, CancellationToken ct)
    {
        var wall = Stopwatch.StartNew();
        var cache = StageCache.Beside(p.Directory);
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
        var outcomes = new Dictionary<StageKind, StageOutcome>();
        var outputHashes = new Dictionary<StageKind, string>();
        var stageSeconds = 0.0;
        var lockChanged = false;
        var inputFiles = new SortedSet<string>(StringComparer.Ordinal);

        try
        {
            foreach (var kind in plan)
            {
                ct.ThrowIfCancellationRequested();
                var outcome = Resolve(kind);
                outcomes[kind] = outcome;
                options.OnStageDone?.Invoke(outcome);
            }
        }
        finally
        {
            hasher.Save();
        }

        if (!options.DryRun)
        {
            // Forget stages the pipeline no longer has; keep entries of stages not selected this time.
            var pruned = lockFile.Only(p.Stages);
            lockChanged |= pruned.WriteIfChanged(lockPath);
        }

        return new RunReport(plan.Select(k => outcomes[k]).ToArray(), wall.Elapsed.TotalSeconds - stageSeconds, hasher.BytesHashed, lockChanged,
            inputFiles.ToArray());

        StageOutcome Resolve(StageKind kind)
        {
            var name = StageNames.Of(kind);
            if (!_executors.TryGetValue(kind, out var executor))
                return new StageOutcome(kind, StageState.NoExecutor, "no executor yet");
            foreach (var up in StageGraph.Upstream(kind))
            {
                var u = outcomes[up];
                if (u.State is StageState.NoExecutor or StageState.Blocked)
                    return new StageOutcome(kind, StageState.Blocked, $"needs stage {StageNames.Of(up)}, which cannot run yet");
                if (u.State == StageState.Stale)
                    return new StageOutcome(kind, StageState.Stale, $"upstream stage {StageNames.Of(up)} will run first");
            }

            var upstreamDirs = StageGraph.Upstream(kind).ToDictionary(u => u, u => outcomes[u].OutputDirectory!);
            var upstreamHashes = StageGraph.Upstream(kind).ToDictionary(u => u, u => outputHashes[u]);
            var ctx = new StageContext(p.Definition, p.Directory, upstreamDirs, "", progress, ct, cache.WorkDirectory(kind), upstreamHashes);
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
            var fp = new StageFingerprint(kind, StageFingerprint.ParametersOf(kind, p.Definition), upstreamHashes, inputs);
            var fingerprint = fp.Hash;
            var check = cache.Check(fingerprint, hasher);
            if (check.Damaged && !options.DryRun)
                options.OnInfo?.Invoke($"{cache.ManifestPath(fingerprint)}: {check.Problem} and rebuilt.");
            var forced = options.Force && (options.Stage is null || options.Stage == kind);

            if (check.Valid && !forced)
            {
                var m = check.Manifest!;
                outputHashes[kind] = m.OutputHash;
                var reason = lockFile.Stages.TryGetValue(kind, out var locked) && locked.Fingerprint == fingerprint
                    ? "up to date"
                    : "up to date (output reused from the cache)";
                Record(kind, fp, m);
                return new StageOutcome(kind, StageState.UpToDate, reason, fingerprint, 0, cache.OutputDirectory(fingerprint), m.Metrics, m.Notes);
            }

            var why = forced ? "forced" : Explain(kind, fp, fingerprint, check);
            if (executor.Resumable(ctx) is { } resumable)
                why += "; " + resumable;
            if (options.DryRun)
                return new StageOutcome(kind, StageState.Stale, why, fingerprint);

            options.OnStageStart?.Invoke(kind, why);
            var temp = cache.CreateTemp(kind);
            var clock = Stopwatch.StartNew();
            StageResult result;
            try
            {
                result = executor.Execute(ctx with { OutputDirectory = Path.Combine(temp, "out") });
            }
            catch (Exception e)
            {
                TryDelete(temp);
                stageSeconds += clock.Elapsed.TotalSeconds;
                throw e switch
                {
                    OperationCanceledException => e,
                    // Keys a stage could only check once it ran (against the downloaded model): located like load-time errors.
                    PipelineKeyException k => new PipelineValidationException(k.Errors.Select(x => p.ErrorAt(x.JsonPath, x.Message)).ToArray()),
                    PipelineUserException => new PipelineUserException($"stage {name}: {e.Message}", e),
                    _ => new StageFailedException(kind, e),
                };
            }
            var seconds = clock.Elapsed.TotalSeconds;
            stageSeconds += seconds;
            var manifest = cache.Commit(temp, kind, fingerprint, result, seconds, hasher);
            outputHashes[kind] = manifest.OutputHash;
            Record(kind, fp, manifest);
            hasher.Save();
            return new StageOutcome(kind, StageState.Ran, why, fingerprint, seconds, cache.OutputDirectory(fingerprint), manifest.Metrics, manifest.Notes);
        }

        void Record(StageKind kind, StageFingerprint fp, CacheManifest m)
        {
            if (options.DryRun) return;
            lockFile = lockFile.With(kind, new LockedStage(
                fp.Hash, fp.Parameters,
                fp.Upstream.ToDictionary(u => StageNames.Of(u.Key), u => u.Value),
                fp.Inputs.GroupBy(i => i.Name).ToDictionary(g => g.Key, g => g.First().Hash),
                m.OutputHash,
                m.ResultFiles.ToDictionary(f => f.Path, f => f.Sha256),
                m.Metrics.Where(kv => !StageResult.IsTiming(kv.Key)).ToDictionary(),
                m.Reports ?? []));
            lockChanged |= lockFile.WriteIfChanged(lockPath);
        }

        string Explain(StageKind kind, StageFingerprint fp, string fingerprint, CacheCheck check)
        {
            if (!lockFile.Stages.TryGetValue(kind, out var locked))
                return lockDamage is null ? "never ran (not in pipeline.lock)" : $"no record to compare with ({LockFile.FileName} is damaged and ignored)";
            if (locked.Fingerprint == fingerprint)
                return check.Problem ?? "cached output missing";
            var reasons = new List<string>();
            reasons.AddRange(ParameterChanges(locked.Parameters, fp.Parameters));
            foreach (var (up, hash) in fp.Upstream)
                if (!locked.Upstream.TryGetValue(StageNames.Of(up), out var old) || old != hash)
                    reasons.Add($"output of upstream stage {StageNames.Of(up)} changed");
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

    /// <summary>"stages.train.learning_rate: 0.005 → 0.001" for every leaf that differs.</summary>
    public static IReadOnlyList<string> ParameterChanges(JsonObject before, JsonObject after)
    {
        var a = Flatten(before);
        var b = Flatten(after);
        var changes = new List<string>();
        foreach (var key in a.Keys.Union(b.Keys).OrderBy(k => k, StringComparer.Ordinal))
        {
            var x = a.GetValueOrDefault(key, "(unset)");
            var y = b.GetValueOrDefault(key, "(unset)");
            if (x != y) changes.Add($"{Qualify(key)}: {x} → {y}");
        }
        return changes;
    }

    // Parameters are stored as {"train": {...}, "data": {...}}: stage blocks live under stages.* in the YAML.
    private static string Qualify(string key) =>
        key.StartsWith("model.", StringComparison.Ordinal) || key.StartsWith("data.", StringComparison.Ordinal) ? key : "stages." + key;

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

    private static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
