using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Engine;

/// <summary>One cache entry gc removed (or, in a dry run, would remove).</summary>
public sealed record CollectedEntry(string Store, string Fingerprint, string? Kind, long Bytes);

/// <param name="Kept">Entries a lock references, per store.</param>
public sealed record CollectReport(IReadOnlyList<CollectedEntry> Removed, int Kept, bool DryRun)
{
    public long Bytes => Removed.Sum(r => r.Bytes);
}

/// <summary>
/// `finetune gc P…`: in each cache the given pipelines use (their .finetune/ or a shared store), removes the entries that
/// none of their pipeline.lock files references — DVC's gc over the named workspaces. Every pipeline that shares a store
/// must be named, or its entries go too (a later run rebuilds them). Each entry is removed under its entry lock; a
/// damaged lock stops gc before it removes anything.
/// </summary>
public static class CacheCollector
{
    public static CollectReport Collect(IReadOnlyList<LoadedPipeline> pipelines, bool dryRun, Func<string, string?>? environment = null)
    {
        var stores = new Dictionary<string, (StageCache Cache, HashSet<string> Keep)>(StringComparer.Ordinal);
        foreach (var p in pipelines)
        {
            var cache = StageCache.For(p, environment);
            if (!stores.TryGetValue(cache.StoreRoot, out var store))
                stores[cache.StoreRoot] = store = (cache, new HashSet<string>(StringComparer.Ordinal));
            foreach (var s in ReadLock(p).Stages.Values) store.Keep.Add(s.Fingerprint);
        }
        var removed = new List<CollectedEntry>();
        int kept = 0;
        foreach (var (root, (cache, keep)) in stores.OrderBy(s => s.Key, StringComparer.Ordinal))
            foreach (var fp in cache.Fingerprints().Order(StringComparer.Ordinal).ToList())
            {
                if (keep.Contains(fp)) { kept++; continue; }
                var dir = cache.EntryDirectory(fp);
                using var held = dryRun ? null : cache.LockEntry(fp);
                if (!Directory.Exists(dir)) continue;
                var bytes = new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
                removed.Add(new CollectedEntry(root, fp, KindOf(cache, fp), bytes));
                if (!dryRun) cache.Remove(dir);
            }
        return new CollectReport(removed, kept, dryRun);
    }

    /// <summary>The stage kind the entry's manifest names, for the listing; null when it cannot be read.</summary>
    private static string? KindOf(StageCache cache, string fingerprint)
    {
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cache.ManifestPath(fingerprint)))?["Kind"]?.GetValue<string>();
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException or InvalidOperationException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static LockFile ReadLock(LoadedPipeline p)
    {
        try
        {
            return LockFile.Read(LockFile.PathBeside(p.FilePath));
        }
        catch (LockFileDamagedException e)
        {
            throw new PipelineUserException($"{e.LockPath}: {e.Problem}; gc decides from the locks what to keep, so it removed nothing: " +
                $"restore the lock (`git checkout {LockFile.FileName}`) or run the pipeline to rewrite it, then gc again.", e);
        }
    }
}
