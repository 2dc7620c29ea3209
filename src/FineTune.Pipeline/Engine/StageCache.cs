using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Pipeline.Engine;

/// <summary>What a cache entry holds besides the files: written last, inside the temp dir, before the rename.</summary>
public sealed record CacheManifest(
    string Kind,
    string Fingerprint,
    string OutputHash,
    IReadOnlyList<FileHash> Files,
    IReadOnlyDictionary<string, double> Metrics,
    IReadOnlyList<string> Notes,
    double Seconds,
    IReadOnlyList<string>? Reports = null)
{
    /// <summary>The files that make up the result (everything but the reports).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public IEnumerable<FileHash> ResultFiles => Reports is { Count: > 0 } r ? Files.Where(f => !r.Contains(f.Path)) : Files;
}

/// <summary>Result of checking a cache entry against its manifest.</summary>
/// <param name="Damaged">The manifest itself cannot be read as FineTune writes it: the entry counts as absent.</param>
public sealed record CacheCheck(bool Valid, string? Problem, CacheManifest? Manifest, bool Damaged = false)
{
    public static CacheCheck Missing { get; } = new(false, "no cached output", null);
}

/// <summary>
/// The .finetune/ directory beside a pipeline: <c>cache/&lt;fingerprint&gt;/{out/, manifest.json}</c> holds finished
/// outputs keyed by fingerprint; <c>tmp/</c> the outputs being written (renamed into cache/ only when complete);
/// <c>work/&lt;stage name&gt;/</c> persistent scratch (partial downloads); <c>index.json</c> the hash index; <c>run.lock</c>
/// the inter-process lock.
/// </summary>
/// <remarks>
/// With a shared store (<c>cache: {dir}</c> or FINETUNE_CACHE) <c>cache/</c> and <c>tmp/</c> live there instead — tmp/
/// beside cache/ so that the rename stays on one file system — and <c>locks/&lt;fingerprint&gt;.lock</c> serialises the
/// writers and readers of one entry across clones (the per-pipeline run.lock cannot: each clone has its own). A temp
/// directory is owned through <c>tmp/&lt;name&gt;.lock</c>, held while the stage writes, so sweeping leftovers never takes
/// a directory another process is still writing.
/// </remarks>
public sealed class StageCache(string root, string? sharedRoot = null)
{
    public const string DirectoryName = ".finetune";

    private static readonly JsonSerializerOptions ManifestJson = new()
    {
        WriteIndented = true,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private readonly Dictionary<string, FileStream> _tempOwners = new(StringComparer.Ordinal);

    public string Root { get; } = Path.GetFullPath(root);
    /// <summary>Where entries are stored: the shared directory, or <see cref="Root"/>.</summary>
    public string StoreRoot { get; } = Path.GetFullPath(sharedRoot ?? root);
    public bool IsShared { get; } = sharedRoot is not null;
    public string CacheRoot => Path.Combine(StoreRoot, "cache");
    public string TempRoot => Path.Combine(StoreRoot, "tmp");
    public string LocksRoot => Path.Combine(StoreRoot, "locks");
    public string IndexPath => Path.Combine(Root, "index.json");

    /// <summary>Waits this long for another clone's hold on one entry (it hashes or renames one directory: seconds).</summary>
    public TimeSpan EntryLockTimeout { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>The local cache beside a pipeline directory (no shared store).</summary>
    public static StageCache Beside(string pipelineDirectory) => new(Path.Combine(pipelineDirectory, DirectoryName));

    /// <summary>
    /// The pipeline's cache: .finetune/ beside it, its entries in the shared store that FINETUNE_CACHE or <c>cache.dir</c>
    /// names (the variable first, so a CI runner can point every clone at its store without editing the file; either
    /// relative to the pipeline file).
    /// </summary>
    public static StageCache For(Validation.LoadedPipeline p, Func<string, string?>? environment = null)
    {
        var shared = SharedDirectory(p, environment);
        return new StageCache(Path.Combine(p.Directory, DirectoryName), shared);
    }

    /// <summary>The shared store's directory for this pipeline, or null when it keeps its cache beside it.</summary>
    public static string? SharedDirectory(Validation.LoadedPipeline p, Func<string, string?>? environment = null)
    {
        var env = (environment ?? Environment.GetEnvironmentVariable)(Config.CacheSection.Variable);
        var dir = env is { Length: > 0 } ? env : p.Definition.Cache?.Dir is { Length: > 0 } d ? d : null;
        return dir is null ? null : Path.GetFullPath(dir, p.Directory);
    }

    public string EntryDirectory(string fingerprint) => Path.Combine(CacheRoot, fingerprint);
    public string OutputDirectory(string fingerprint) => Path.Combine(EntryDirectory(fingerprint), "out");
    /// <summary>The persistent scratch directory of the stage of this name (work/&lt;name&gt;).</summary>
    public string WorkDirectory(string stageName) => Path.Combine(Root, "work", stageName);

    public string ManifestPath(string fingerprint) => Path.Combine(EntryDirectory(fingerprint), "manifest.json");

    /// <summary>
    /// Checks that the entry's files are exactly those of its manifest, with the same hashes. A manifest that is not
    /// what <see cref="Commit"/> writes (cut short, a field missing or of the wrong type) makes the entry count as
    /// absent (<see cref="CacheCheck.Damaged"/>), so the stage is rebuilt and its commit replaces the entry.
    /// </summary>
    public CacheCheck Check(string fingerprint, ContentHasher hasher)
    {
        using var held = LockEntry(fingerprint);
        return CheckHeld(fingerprint, hasher);
    }

    private CacheCheck CheckHeld(string fingerprint, ContentHasher hasher)
    {
        var manifestPath = ManifestPath(fingerprint);
        if (!File.Exists(manifestPath)) return CacheCheck.Missing;
        var (manifest, damage) = ReadManifest(manifestPath, fingerprint);
        if (manifest is null)
            return new CacheCheck(false, $"cache manifest is damaged ({damage}); treated as absent", null, Damaged: true);
        var outDir = OutputDirectory(fingerprint);
        if (!Directory.Exists(outDir)) return new CacheCheck(false, "cached output directory is missing", manifest);
        var actual = hasher.HashTree(outDir);
        var expected = new Dictionary<string, FileHash>(StringComparer.Ordinal);
        foreach (var f in manifest.Files)
            expected[f.Path] = f;
        foreach (var f in actual)
        {
            if (!expected.TryGetValue(f.Path, out var e))
                return new CacheCheck(false, $"cached output has an unexpected file {f.Path}", manifest);
            if (e.Sha256 != f.Sha256 || e.Size != f.Size)
                return new CacheCheck(false, $"cached file {f.Path} was modified (sha256 {Short(f.Sha256)}…, expected {Short(e.Sha256)}…)", manifest);
        }
        if (actual.Count != expected.Count)
        {
            var missing = expected.Keys.Except(actual.Select(a => a.Path)).First();
            return new CacheCheck(false, $"cached file {missing} is missing", manifest);
        }
        var reports = manifest.Reports ?? [];
        if (ContentHasher.TreeHash(actual.Where(f => !reports.Contains(f.Path))) != manifest.OutputHash)
            return new CacheCheck(false, "cached output hash does not match its manifest", manifest);
        return new CacheCheck(true, null, manifest);
    }

    private static string Short(string sha256) => sha256.Length > 12 ? sha256[..12] : sha256;

    /// <summary>The manifest, or null and what is wrong with it.</summary>
    private static (CacheManifest? Manifest, string? Damage) ReadManifest(string path, string fingerprint)
    {
        CacheManifest? m;
        try
        {
            m = JsonSerializer.Deserialize<CacheManifest>(File.ReadAllText(path), ManifestJson);
        }
        catch (JsonException e)
        {
            return (null, $"not what FineTune writes, at {e.Path ?? "$"} line {(e.LineNumber ?? 0) + 1}");
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or ArgumentException or FormatException)
        {
            return (null, $"not what FineTune writes ({e.Message})");
        }
        // The deserializer leaves a missing field null (or 0): each one FineTune always writes must be there.
        string? damage = m switch
        {
            null => "it is null",
            { Kind: null } => Missing(nameof(m.Kind)),
            { Fingerprint: null } => Missing(nameof(m.Fingerprint)),
            { OutputHash: null } => Missing(nameof(m.OutputHash)),
            { Files: null } => Missing(nameof(m.Files)),
            { Metrics: null } => Missing(nameof(m.Metrics)),
            { Notes: null } => Missing(nameof(m.Notes)),
            _ when m.Fingerprint != fingerprint => $"\"{nameof(m.Fingerprint)}\" is not this entry's",
            _ when m.Files.Any(f => f is null || f.Path is null || f.Sha256 is null) => $"an entry of \"{nameof(m.Files)}\" lacks its Path or Sha256",
            _ when m.Notes.Any(n => n is null) || (m.Reports?.Any(r => r is null) ?? false) => "a note or report name is null",
            _ => null,
        };
        return damage is null ? (m, null) : (null, damage);

        static string Missing(string field) => $"\"{field}\" is missing";
    }

    /// <summary>A fresh empty directory under tmp/ for a stage to write into (the "out" subdirectory is the output).</summary>
    public string CreateTemp(string stageName)
    {
        var dir = Path.Combine(TempRoot, $"{stageName}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(TempRoot);
        // Owned before it exists: a sweep that finds the directory finds its lock held.
        _tempOwners[dir] = new FileStream(dir + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        Directory.CreateDirectory(Path.Combine(dir, "out"));
        return dir;
    }

    /// <summary>Deletes a temp output that will not be committed (the stage failed) and gives up its ownership.</summary>
    public void Discard(string tempDir)
    {
        try { Directory.Delete(tempDir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        Release(tempDir);
    }

    private void Release(string tempDir)
    {
        if (!_tempOwners.Remove(tempDir, out var owner)) return;
        owner.Dispose();
        try { File.Delete(tempDir + ".lock"); } catch (IOException) { }
    }

    /// <summary>
    /// Hashes a finished temp output, writes its manifest and renames it into cache/ (replacing a damaged entry). In a
    /// shared store another clone may have committed the same fingerprint meanwhile: its valid entry is kept (equal
    /// fingerprints give interchangeable outputs) and this one discarded.
    /// </summary>
    public CacheManifest Commit(string tempDir, StageKind kind, string fingerprint, StageResult result, double seconds, ContentHasher hasher)
    {
        using var held = LockEntry(fingerprint);
        if (IsShared && CheckHeld(fingerprint, hasher) is { Valid: true, Manifest: { } theirs })
        {
            Discard(tempDir);
            return theirs;
        }
        var files = hasher.HashTree(Path.Combine(tempDir, "out"));
        var reports = (result.Reports ?? []).Where(r => files.Any(f => f.Path == r)).Order(StringComparer.Ordinal).ToList();
        var manifest = new CacheManifest(StageNames.Of(kind), fingerprint, ContentHasher.TreeHash(files.Where(f => !reports.Contains(f.Path))), files,
            new SortedDictionary<string, double>(result.Metrics.ToDictionary(), StringComparer.Ordinal), result.Notes, Math.Round(seconds, 3),
            reports.Count > 0 ? reports : null);
        File.WriteAllText(Path.Combine(tempDir, "manifest.json"), JsonSerializer.Serialize(manifest, ManifestJson));
        var entry = EntryDirectory(fingerprint);
        Directory.CreateDirectory(CacheRoot);
        if (Directory.Exists(entry))
            Remove(entry);
        Directory.Move(tempDir, entry);
        Release(tempDir);
        // The renamed files keep size and mtime: record their hashes under the final paths instead of re-reading them.
        var outDir = OutputDirectory(fingerprint);
        foreach (var f in files)
            hasher.Remember(Path.Combine(outDir, f.Path), f.Sha256);
        hasher.Forget(tempDir);
        return manifest;
    }

    /// <summary>Deletes a directory by first renaming it out of sight, so a crash mid-delete leaves no half entry in cache/.</summary>
    public void Remove(string dir)
    {
        if (!Directory.Exists(dir)) return;
        Directory.CreateDirectory(TempRoot);
        var trash = Path.Combine(TempRoot, "trash-" + Guid.NewGuid().ToString("N"));
        Directory.Move(dir, trash);
        Directory.Delete(trash, recursive: true);
    }

    /// <summary>Removes leftovers of killed runs: tmp/ and the temp files of the hash index (call only while holding the run lock).</summary>
    public void SweepTemp()
    {
        AtomicFile.SweepStale(IndexPath);
        if (!Directory.Exists(TempRoot)) return;
        foreach (var d in Directory.EnumerateDirectories(TempRoot))
        {
            if (_tempOwners.ContainsKey(d)) continue;
            // A held lock is a live writer (another clone of a shared store); a lock nobody holds is a killed one's.
            FileStream? owner = null;
            if (File.Exists(d + ".lock"))
            {
                try { owner = new FileStream(d + ".lock", FileMode.Open, FileAccess.ReadWrite, FileShare.None); }
                catch (IOException) { continue; }
            }
            try { Directory.Delete(d, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            if (owner is not null)
            {
                owner.Dispose();
                try { File.Delete(d + ".lock"); } catch (IOException) { }
            }
        }
    }

    /// <summary>
    /// Holds <c>locks/&lt;fingerprint&gt;.lock</c> in a shared store (null, nothing to hold, in a local one, whose run.lock
    /// already admits one writer): checking, committing and removing an entry happen under it.
    /// </summary>
    public IDisposable? LockEntry(string fingerprint)
    {
        if (!IsShared) return null;
        Directory.CreateDirectory(LocksRoot);
        var path = Path.Combine(LocksRoot, fingerprint + ".lock");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            try { return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
            catch (IOException) when (clock.Elapsed < EntryLockTimeout)
            {
                Thread.Sleep(50);
            }
            catch (IOException e)
            {
                throw new PipelineUserException($"{path}: another process has held this cache entry for {EntryLockTimeout.TotalSeconds:0} s; " +
                    "if no finetune run uses the shared cache, delete the lock file and run again.", e);
            }
        }
    }

    public IEnumerable<string> Fingerprints() =>
        Directory.Exists(CacheRoot) ? Directory.EnumerateDirectories(CacheRoot).Select(Path.GetFileName).OfType<string>() : [];

    internal static JsonNode? MetricsNode(IReadOnlyDictionary<string, double> metrics) =>
        new JsonObject(metrics.OrderBy(m => m.Key, StringComparer.Ordinal)
            .Select(m => KeyValuePair.Create(m.Key, double.IsFinite(m.Value) ? (JsonNode?)JsonValue.Create(m.Value) : null)));
}
