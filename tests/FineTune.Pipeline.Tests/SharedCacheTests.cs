using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>Two clones of one pipeline sharing a cache directory (cache: {dir}): reuse by fingerprint, verification, concurrent writers, gc.</summary>
public sealed class SharedCacheTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _counter;
    private readonly string _a, _b;

    public SharedCacheTests()
    {
        _counter = _dir.File("runs.txt");
        _a = Clone("a");
        _b = Clone("b");
    }

    public void Dispose() => _dir.Dispose();

    private string Shared => _dir.File("shared");

    private string Clone(string name, string? yaml = null)
    {
        using var scratch = new TempDir();
        var file = TestPipelines.Write(scratch, (yaml ?? TestPipelines.Full).Replace("stages:\n", "cache: {dir: ../shared}\nstages:\n"));
        var target = _dir.File(name);
        foreach (var f in Directory.EnumerateFiles(scratch.Path, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(target, Path.GetRelativePath(scratch.Path, f));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(f, to);
        }
        return Path.Combine(target, "pipeline.yaml");
    }

    private RunReport Run(string file, List<string>? info = null, Action<StageContext>? trainDuring = null) =>
        new PipelineRunner(FakeStage.All(_counter, trainDuring)).Run(PipelineLoader.Load(file),
            new RunOptions { OnInfo = line => { lock (_dir) info?.Add(line); } }, new NullStageProgress(), CancellationToken.None);

    [Fact]
    public void A_second_clone_finds_every_stage_up_to_date_in_the_shared_cache_and_writes_the_same_lock()
    {
        Run(_a);
        var report = Run(_b);
        Assert.All(report.Stages, s => Assert.Equal((StageState.UpToDate, "up to date (output reused from the cache)"), (s.State, s.Reason)));
        Assert.Equal(7, FakeStage.Runs(_counter).Length);
        Assert.Equal(File.ReadAllBytes(LockFile.PathBeside(_a)), File.ReadAllBytes(LockFile.PathBeside(_b)));
        // Outputs live in the store, nothing in either clone's own cache; status there speaks of the same directories.
        Assert.Equal(7, Directory.GetDirectories(Path.Combine(Shared, "cache")).Length);
        Assert.False(Directory.Exists(_dir.File("a/.finetune/cache")));
        Assert.All(report.Stages, s => Assert.StartsWith(Path.Combine(Shared, "cache") + Path.DirectorySeparatorChar, s.OutputDirectory));
    }

    [Fact]
    public void Finetune_cache_variable_takes_the_place_of_cache_dir_relative_to_the_pipeline()
    {
        var p = PipelineLoader.Load(_a);
        Assert.Equal(Shared, StageCache.For(p, _ => null).StoreRoot);
        Assert.Equal(_dir.File("elsewhere"), StageCache.For(p, k => k == "FINETUNE_CACHE" ? "../elsewhere" : null).StoreRoot);
        Assert.Equal(Path.Combine(_dir.File("a"), ".finetune"), StageCache.For(p, _ => null).Root);
    }

    [Fact]
    public void A_tampered_entry_is_rerun_with_a_warning_and_replaced()
    {
        var first = Run(_a);
        var train = first.Stages.Single(s => s.Name == "train");
        var file = Path.Combine(train.OutputDirectory!, "out.txt");
        var expected = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file)));
        File.AppendAllText(file, "tampered");
        var actual = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file)));

        var info = new List<string>();
        var report = Run(_b, info);
        var entry = Path.Combine(Shared, "cache", train.Fingerprint!);
        Assert.Equal([$"warning: {entry}: cached file out.txt was modified (sha256 {actual[..12]}…, expected {expected[..12]}…); stage train runs again and replaces it."], info);
        Assert.Equal(StageState.Ran, report.Stages.Single(s => s.Name == "train").State);
        // The rebuilt output is what the fingerprint promises, so everything downstream is still reused.
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export", "train"], FakeStage.Runs(_counter));
        Assert.Equal(expected, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(file))));
    }

    [Fact]
    public void Two_clones_writing_the_same_entries_at_once_end_with_one_valid_entry_each_and_equal_locks()
    {
        // Both trains wait for each other inside Execute, so both write the train entry at the same time.
        using var both = new Barrier(2);
        var reports = new RunReport[2];
        Parallel.Invoke(
            () => reports[0] = Run(_a, trainDuring: _ => both.SignalAndWait(TimeSpan.FromMinutes(2))),
            () => reports[1] = Run(_b, trainDuring: _ => both.SignalAndWait(TimeSpan.FromMinutes(2))));
        Assert.All(reports, r => Assert.Equal(StageState.Ran, r.Stages.Single(s => s.Name == "train").State));
        Assert.Equal(File.ReadAllBytes(LockFile.PathBeside(_a)), File.ReadAllBytes(LockFile.PathBeside(_b)));
        var cache = StageCache.For(PipelineLoader.Load(_a));
        Assert.Equal(7, cache.Fingerprints().Count());
        var hasher = new ContentHasher(null);
        Assert.All(cache.Fingerprints(), fp => Assert.True(cache.Check(fp, hasher).Valid, fp));
        Assert.Empty(Directory.EnumerateFileSystemEntries(cache.TempRoot));
        Assert.All(Run(_a).Stages, s => Assert.Equal(StageState.UpToDate, s.State));
    }

    [Fact]
    public void Gc_removes_only_entries_no_given_lock_references()
    {
        Run(_a);
        Run(_b);
        File.WriteAllText(_a, File.ReadAllText(_a).Replace("learning_rate: 0.005", "learning_rate: 0.001"));
        Run(_a);
        var cache = StageCache.For(PipelineLoader.Load(_a));
        Assert.Equal(11, cache.Fingerprints().Count());
        var bLock = LockFile.Read(LockFile.PathBeside(_b));
        var onlyB = bLock.Stages.Where(s => s.Key is "train" or "eval" or "merge" or "export").Select(s => s.Value.Fingerprint).Order(StringComparer.Ordinal).ToList();

        Assert.Empty(CacheCollector.Collect([PipelineLoader.Load(_a), PipelineLoader.Load(_b)], dryRun: false).Removed);
        var dry = CacheCollector.Collect([PipelineLoader.Load(_a)], dryRun: true);
        Assert.Equal(onlyB, dry.Removed.Select(r => r.Fingerprint));
        Assert.Equal(["eval", "export", "merge", "train"], dry.Removed.Select(r => r.Kind).Order(StringComparer.Ordinal));
        Assert.Equal(11, cache.Fingerprints().Count());
        var bytes = onlyB.Sum(fp => new DirectoryInfo(cache.EntryDirectory(fp)).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length));
        Assert.Equal(bytes, dry.Bytes);
        Assert.Equal(7, dry.Kept);

        var done = CacheCollector.Collect([PipelineLoader.Load(_a)], dryRun: false);
        Assert.Equal(onlyB, done.Removed.Select(r => r.Fingerprint));
        Assert.Equal(bytes, done.Bytes);
        Assert.Equal(7, cache.Fingerprints().Count());
        Assert.All(Run(_a).Stages, s => Assert.Equal(StageState.UpToDate, s.State));
    }
}
