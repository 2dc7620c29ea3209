using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Models.Tests.Hub;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>What the engine must not trust: a cached hub model edited in place, damaged manifests and locks, leftovers of killed writers.</summary>
public sealed class TrustTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _file;
    private readonly string _counter;
    private readonly List<string> _notes = [];

    public TrustTests()
    {
        _file = TestPipelines.Write(_dir);
        _counter = Path.Combine(_dir.Path, "runs.txt");
    }

    public void Dispose() => _dir.Dispose();

    private string LockPath => Path.Combine(_dir.Path, LockFile.FileName);

    private RunReport Run(IReadOnlyList<IStageExecutor>? executors = null, string? file = null) =>
        new PipelineRunner(executors ?? FakeStage.All(_counter)).Run(PipelineLoader.Load(file ?? _file),
            new RunOptions { OnInfo = _notes.Add }, new NullStageProgress(), CancellationToken.None);

    private static StageOutcome Stage(RunReport r, StageKind kind) => r.Stages.Single(s => s.Kind == kind);

    [Fact]
    public void HubModelEditedInPlaceInTheCacheIsRebuiltFromAFreshDownload()
    {
        using var hub = new LoopbackHub();
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, _dir.File("src"));
        hub.Add(new LoopbackHub.Repo("acme/tiny", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Directory.GetFiles(_dir.File("src")).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes), new HashSet<string> { "model.safetensors" }, null));
        var file = _dir.Write("hub/pipeline.yaml", "name: hub\nmodel:\n  source: hf://acme/tiny\nstages:\n  download: {}\n");
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint };
        IStageExecutor[] download = [new DownloadStage(k => env.GetValueOrDefault(k))];
        var weights = Path.Combine(Stage(Run(download, file), StageKind.Download).OutputDirectory!, "model.safetensors");
        var original = File.ReadAllBytes(weights);

        // Edit the cached weights in place (the same inode as the downloaded blob when the cache hard-links it).
        using (var s = new FileStream(weights, FileMode.Open, FileAccess.ReadWrite))
        {
            s.Position = s.Length - 1;
            int b = s.ReadByte();
            s.Position = s.Length - 1;
            s.WriteByte((byte)(b ^ 0xFF));
        }
        File.SetLastWriteTimeUtc(weights, DateTime.UtcNow.AddMinutes(1));

        var again = Stage(Run(download, file), StageKind.Download);
        Assert.Equal(StageState.Ran, again.State);
        Assert.StartsWith("cached file model.safetensors was modified", again.Reason);
        Assert.Equal(File.ReadAllBytes(_dir.File("src/model.safetensors")), File.ReadAllBytes(Path.Combine(again.OutputDirectory!, "model.safetensors")));
        Assert.Equal(original, File.ReadAllBytes(Path.Combine(again.OutputDirectory!, "model.safetensors")));
    }

    [Fact]
    public void CacheManifestWithoutFilesIsTreatedAsAbsentRebuiltAndNoted()
    {
        var split = Stage(Run(), StageKind.Split);
        var manifest = Path.Combine(Path.GetDirectoryName(split.OutputDirectory!)!, "manifest.json");
        var o = JsonNode.Parse(File.ReadAllText(manifest))!.AsObject();
        o.Remove("Files");
        File.WriteAllText(manifest, o.ToJsonString());

        var status = Stage(new PipelineRunner(FakeStage.All(_counter)).Status(PipelineLoader.Load(_file)), StageKind.Split);
        Assert.Equal(StageState.Stale, status.State);
        Assert.Equal("cache manifest is damaged (\"Files\" is missing); treated as absent", status.Reason);

        var report = Run();
        Assert.Equal(StageState.Ran, Stage(report, StageKind.Split).State);
        Assert.Equal(StageState.UpToDate, Stage(report, StageKind.Train).State); // same bytes again: downstream reused
        Assert.Equal([$"{manifest}: cache manifest is damaged (\"Files\" is missing); treated as absent and rebuilt."], _notes);
        Assert.All(Run().Stages, s => Assert.Equal(StageState.UpToDate, s.State));
    }

    [Fact]
    public void DamagedCacheManifestsNeverThrow()
    {
        var split = Stage(Run(), StageKind.Split);
        var cache = StageCache.Beside(_dir.Path);
        var manifest = Path.Combine(cache.EntryDirectory(split.Fingerprint!), "manifest.json");
        var hasher = new ContentHasher(null);
        var thrown = new List<string>();
        foreach (var (label, text) in JsonFuzz.Mutations(File.ReadAllText(manifest)))
        {
            File.WriteAllText(manifest, text);
            try { cache.Check(split.Fingerprint!, hasher); }
            catch (Exception e) { thrown.Add($"{label}: {e.GetType().Name}: {e.Message}"); }
        }
        Assert.Empty(thrown);
    }

    [Fact]
    public void DamagedHashIndexOnlyCostsRehashing()
    {
        Run();
        var index = StageCache.Beside(_dir.Path).IndexPath;
        var data = Path.Combine(_dir.Path, "data", "identity.json");
        var sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(data)));
        var wrong = new List<string>();
        foreach (var (label, text) in JsonFuzz.Mutations(File.ReadAllText(index)))
        {
            File.WriteAllText(index, text);
            try
            {
                var hash = new ContentHasher(index).HashFile(data);
                if (hash != sha) wrong.Add($"{label}: hash {hash}");
            }
            catch (Exception e) { wrong.Add($"{label}: {e.GetType().Name}: {e.Message}"); }
        }
        Assert.Empty(wrong);
    }

    [Fact]
    public void LockWithValuesOfTheWrongTypeIsReportedIgnoredAndRewritten()
    {
        Run();
        var good = File.ReadAllText(LockPath);
        var o = JsonNode.Parse(good)!;
        o["stages"]!["register"]!["fingerprint"] = 5;
        File.WriteAllText(LockPath, o.ToJsonString());

        var report = Run();

        Assert.All(report.Stages, s => Assert.Equal(StageState.UpToDate, s.State));
        Assert.Equal([$"{LockPath}: \"stages.register.fingerprint\" is a number, expected a string; the damaged lock is ignored and rewritten from this run."], _notes);
        Assert.Equal(good, File.ReadAllText(LockPath));
    }

    [Fact]
    public void TheCommittedLockReadsBackToItsOwnBytes()
    {
        var committed = Path.Combine(RepoRoot.Path, "pipelines", "identity", LockFile.FileName);
        Assert.Equal(File.ReadAllText(committed), LockFile.Read(committed).Serialize());
    }

    [Fact]
    public void LockOfAnotherFormatVersionIsReportedAsSuch()
    {
        Run();
        File.WriteAllText(LockPath, File.ReadAllText(LockPath).Replace("\"version\": 1,", "\"version\": 2,"));
        var e = Assert.Throws<LockFileDamagedException>(() => LockFile.Read(LockPath));
        Assert.Equal($"{LockPath}: \"version\" is 2, expected 1 (the lock format this FineTune reads and writes); restore it (`git checkout pipeline.lock`) or delete it, then run again.", e.Message);
    }

    [Fact]
    public void DamagedLockFilesAreUserErrorsNeverACrash()
    {
        Run();
        var good = File.ReadAllText(LockPath);
        var bad = JsonFuzz.Misbehaving<PipelineUserException>(good, text =>
        {
            File.WriteAllText(LockPath, text);
            LockFile.Read(LockPath);
        });
        Assert.Empty(bad);
    }

    [Fact]
    public void CleanRefusesToDecideFromADamagedLock()
    {
        Run();
        var o = JsonNode.Parse(File.ReadAllText(LockPath))!;
        o["stages"]!["train"]!["files"] = new JsonArray(1, 2);
        File.WriteAllText(LockPath, o.ToJsonString());

        var e = Assert.Throws<PipelineUserException>(() => CacheCleaner.Clean(PipelineLoader.Load(_file), all: false, TimeSpan.FromSeconds(5)));

        Assert.Equal($"{LockPath}: \"stages.train.files\" is an array, expected an object; clean decides from the lock what to keep, so it removed nothing: " +
            "restore the lock (`git checkout pipeline.lock`) or run the pipeline to rewrite it, then clean again.", e.Message);
        Assert.Equal(7, StageCache.Beside(_dir.Path).Fingerprints().Count());
    }

    [Fact]
    public void TempFilesOfKilledLockWritersAreSweptByTheNextRun()
    {
        // What a writer killed between writing and renaming leaves beside the lock (and the hash index).
        var dead = Path.Combine(_dir.Path, $"{LockFile.FileName}.{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        var live = Path.Combine(_dir.Path, $"{LockFile.FileName}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        var deadIndex = Path.Combine(StageCache.Beside(_dir.Path).IndexPath + $".{int.MaxValue}.{Guid.NewGuid():N}.tmp");
        File.WriteAllText(dead, "{\"version\": 1, \"sta");
        File.WriteAllText(live, "{}");
        _dir.Write(Path.GetRelativePath(_dir.Path, deadIndex), "{");

        Run();

        Assert.False(File.Exists(dead));
        Assert.False(File.Exists(deadIndex));
        Assert.True(File.Exists(live)); // its writer (this process) may still rename it
    }

    [Fact]
    public void GitIgnoresTempFiles()
    {
        var psi = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-C", RepoRoot.Path, "check-ignore", "--no-index", "pipelines/identity/pipeline.lock.4242.0123abcd.tmp" })
            psi.ArgumentList.Add(a);
        using var git = Process.Start(psi)!;
        var output = git.StandardOutput.ReadToEnd();
        git.WaitForExit();
        Assert.Equal("pipelines/identity/pipeline.lock.4242.0123abcd.tmp\n", output);
    }
}
