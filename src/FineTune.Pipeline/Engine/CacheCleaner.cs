namespace FineTune.Pipeline.Engine;

public sealed record CleanReport(int EntriesRemoved, long BytesFreed, int EntriesKept);

/// <summary>`finetune clean`: drops cache entries that pipeline.lock does not reference (or the whole .finetune/).</summary>
public static class CacheCleaner
{
    public static CleanReport Clean(Validation.LoadedPipeline p, bool all, TimeSpan lockTimeout)
    {
        var cache = StageCache.Beside(p.Directory);
        if (!Directory.Exists(cache.Root)) return new CleanReport(0, 0, 0);
        using (RunLock.Acquire(cache.Root, lockTimeout, null, CancellationToken.None))
        {
            var keep = all ? [] : LockFile.Read(LockFile.PathBeside(p.FilePath)).Stages.Values.Select(s => s.Fingerprint).ToHashSet();
            int removed = 0, kept = 0;
            long bytes = 0;
            foreach (var fp in cache.Fingerprints().ToList())
            {
                if (keep.Contains(fp)) { kept++; continue; }
                var dir = cache.EntryDirectory(fp);
                bytes += new DirectoryInfo(dir).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
                cache.Remove(dir);
                removed++;
            }
            cache.SweepTemp();
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
            return new CleanReport(removed, bytes, kept);
        }
    }
}
