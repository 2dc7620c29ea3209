namespace FineTune.Pipeline.Engine;

/// <param name="SharedStore">The shared store the pipeline's entries live in (clean leaves it to `finetune gc`), or null.</param>
public sealed record CleanReport(int EntriesRemoved, long BytesFreed, int EntriesKept, int FinishedRunsRemoved = 0, string? SharedStore = null);

/// <summary>
/// `finetune clean`: drops cache entries that pipeline.lock does not reference and the checkpoints of training runs that
/// finished (their result is a cache entry; an interrupted run's checkpoints stay for resume_from_checkpoint), or with
/// --all the whole .finetune/.
/// </summary>
public static class CacheCleaner
{
    public static CleanReport Clean(Validation.LoadedPipeline p, bool all, TimeSpan lockTimeout)
    {
        var cache = StageCache.For(p);
        var shared = cache.IsShared ? cache.StoreRoot : null;
        if (!Directory.Exists(cache.Root)) return new CleanReport(0, 0, 0, SharedStore: shared);
        using (RunLock.Acquire(cache.Root, lockTimeout, null, CancellationToken.None))
        {
            var keep = all ? [] : ReadLock(p).Stages.Values.Select(s => s.Fingerprint).ToHashSet();
            int removed = 0, kept = 0;
            long bytes = 0;
            // A shared store holds other clones' entries, which this lock knows nothing of: only `finetune gc`, given
            // every pipeline that uses the store, decides what goes there.
            foreach (var fp in shared is null ? cache.Fingerprints().ToList() : [])
            {
                if (keep.Contains(fp)) { kept++; continue; }
                var dir = cache.EntryDirectory(fp);
                bytes += new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
                cache.Remove(dir);
                removed++;
            }
            cache.SweepTemp();
            int finished = 0;
            // Every train stage keeps its runs' checkpoints in its own work directory.
            foreach (var train in p.Stages.Where(s => !all && s.Kind == StageKind.Train))
            {
                var runs = Path.Combine(cache.WorkDirectory(train.Name), "checkpoints");
                if (!Directory.Exists(runs)) continue;
                foreach (var run in Directory.EnumerateDirectories(runs).ToList())
                {
                    if (!new FineTune.Training.CheckpointStore(run).IsFinished) continue;
                    bytes += new DirectoryInfo(run).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
                    Directory.Delete(run, recursive: true);
                    finished++;
                }
            }
            if (all)
            {
                foreach (var d in Directory.EnumerateDirectories(cache.Root))
                    Directory.Delete(d, recursive: true);
                foreach (var f in Directory.EnumerateFiles(cache.Root).Where(f => Path.GetFileName(f) is not "run.lock" and not "run.owner"))
                    File.Delete(f);
            }
            else
            {
                var hasher = new ContentHasher(cache.IndexPath);
                hasher.Prune();
                hasher.Save();
            }
            return new CleanReport(removed, bytes, kept, finished, shared);
        }
    }

    /// <summary>The lock that says what to keep; a damaged one stops clean before it removes anything.</summary>
    private static LockFile ReadLock(Validation.LoadedPipeline p)
    {
        try
        {
            return LockFile.Read(LockFile.PathBeside(p.FilePath));
        }
        catch (LockFileDamagedException e)
        {
            throw new PipelineUserException($"{e.LockPath}: {e.Problem}; clean decides from the lock what to keep, so it removed nothing: " +
                $"restore the lock (`git checkout {LockFile.FileName}`) or run the pipeline to rewrite it, then clean again.", e);
        }
    }
}
