using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>The stage engine with fake executors on real files: what runs, what is reused, and why.</summary>
public sealed class EngineTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _file;
    private readonly string _counter;

    public EngineTests()
    {
        _file = TestPipelines.Write(_dir);
        _counter = Path.Combine(_dir.Path, "runs.txt");
    }

    public void Dispose() => _dir.Dispose();

    private RunReport Run(RunOptions? options = null, IReadOnlyList<IStageExecutor>? executors = null) =>
        new PipelineRunner(executors ?? FakeStage.All(_counter))
            .Run(PipelineLoader.Load(_file), options ?? new RunOptions(), new NullStageProgress(), CancellationToken.None);

    private RunReport Status() => new PipelineRunner(FakeStage.All(_counter)).Status(PipelineLoader.Load(_file));

    private static Dictionary<string, StageState> States(RunReport r) => r.Stages.ToDictionary(s => StageGraph.Name(s.Kind), s => s.State);

    private void Edit(string from, string to)
    {
        var text = File.ReadAllText(_file);
        Assert.Contains(from, text);
        File.WriteAllText(_file, text.Replace(from, to));
    }

    /// <summary>A train stage whose log differs on every run (a new GUID, a wall time), like HF's trainer_log.jsonl.</summary>
    private sealed class TrainWithLog(IStageExecutor inner) : IStageExecutor
    {
        public StageKind Kind => inner.Kind;
        public IReadOnlyList<string> ExternalInputs(StageContext ctx) => inner.ExternalInputs(ctx);
        public StageResult Execute(StageContext ctx)
        {
            var r = inner.Execute(ctx);
            File.WriteAllText(Path.Combine(ctx.OutputDirectory, "log.jsonl"), Guid.NewGuid().ToString());
            var metrics = r.Metrics.ToDictionary();
            metrics["train_runtime"] = Random.Shared.NextDouble();
            return new StageResult(metrics, r.Notes, ["log.jsonl"]);
        }
    }

    private IReadOnlyList<IStageExecutor> WithTrainLog() =>
        FakeStage.All(_counter).Select(e => e.Kind == StageKind.Train ? new TrainWithLog(e) : e).ToArray();

    [Fact]
    public void ReportsAndTimingsOfARerunChangeNeitherTheLockNorDownstreamStages()
    {
        Run(executors: WithTrainLog());
        var lockPath = Path.Combine(_dir.Path, LockFile.FileName);
        var before = File.ReadAllText(lockPath);
        Assert.Contains("\"reports\": [\n        \"log.jsonl\"\n      ]", before);
        Assert.DoesNotContain("train_runtime", before);

        var report = Run(new RunOptions { Force = true, Stage = "train" }, WithTrainLog());
        Assert.Equal(StageState.Ran, report.Stages.Single(s => s.Kind == StageKind.Train).State);
        Assert.Equal(before, File.ReadAllText(lockPath));
        // Downstream stages see the same train output hash: nothing after train runs again.
        File.Delete(_counter);
        Run(executors: WithTrainLog());
        Assert.Empty(FakeStage.Runs(_counter));

        // The report is still part of what the cache checks: editing it is tampering.
        var trainOut = report.Stages.Single(s => s.Kind == StageKind.Train).OutputDirectory!;
        File.WriteAllText(Path.Combine(trainOut, "log.jsonl"), "edited");
        Assert.Equal(StageState.Stale, States(new PipelineRunner(WithTrainLog()).Status(PipelineLoader.Load(_file)))["train"]);
    }

    [Fact]
    public void CleanFreesFinishedTrainingRunsCheckpointsAndKeepsAnInterruptedOnes()
    {
        Run();
        var runs = Path.Combine(StageCache.Beside(_dir.Path).WorkDirectory("train"), "checkpoints");
        var finished = Path.Combine(runs, "aaaa", "checkpoint-4");
        var interrupted = Path.Combine(runs, "bbbb", "checkpoint-2");
        Directory.CreateDirectory(finished);
        Directory.CreateDirectory(interrupted);
        File.WriteAllBytes(Path.Combine(finished, "adapter_model.safetensors"), new byte[1000]);
        File.WriteAllBytes(Path.Combine(interrupted, "adapter_model.safetensors"), new byte[700]);
        new FineTune.Training.CheckpointStore(Path.Combine(runs, "aaaa")).MarkFinished(4, 4);

        var report = CacheCleaner.Clean(PipelineLoader.Load(_file), all: false, TimeSpan.FromSeconds(5));

        Assert.Equal(1, report.FinishedRunsRemoved);
        Assert.False(Directory.Exists(Path.Combine(runs, "aaaa")));
        Assert.True(File.Exists(Path.Combine(interrupted, "adapter_model.safetensors")));
        Assert.Equal(0, report.EntriesRemoved); // every cached output is in pipeline.lock
        Assert.True(report.BytesFreed >= 1000, $"freed {report.BytesFreed} bytes");
        Assert.Equal(StageState.UpToDate, States(Status())["train"]);
    }

    [Fact]
    public void FirstRunRunsEveryStageInOrder()
    {
        var report = Run();
        Assert.All(report.Stages, s => Assert.Equal(StageState.Ran, s.State));
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], FakeStage.Runs(_counter));
    }

    [Fact]
    public void SecondRunIsANoOpThatHashesNothing()
    {
        Run();
        var lockBytes = File.ReadAllBytes(Path.Combine(_dir.Path, "pipeline.lock"));
        var second = Run();
        Assert.All(second.Stages, s => Assert.Equal(StageState.UpToDate, s.State));
        Assert.Equal(0, second.BytesHashed);
        Assert.False(second.LockChanged);
        Assert.Equal(7, FakeStage.Runs(_counter).Length);
        Assert.Equal(lockBytes, File.ReadAllBytes(Path.Combine(_dir.Path, "pipeline.lock")));
    }

    [Fact]
    public void TrainParameterChangeReRunsTrainAndDownstreamOnly()
    {
        Run();
        Edit("learning_rate: 0.005", "learning_rate: 0.001");
        var status = Status();
        Assert.Equal("stages.train.learning_rate: 0.005 → 0.001", status.Stages.Single(s => s.Kind == StageKind.Train).Reason);
        Assert.Equal("upstream stage train will run first", status.Stages.Single(s => s.Kind == StageKind.Eval).Reason);

        var report = Run();
        Assert.Equal(new Dictionary<string, StageState>
        {
            ["download"] = StageState.UpToDate, ["register"] = StageState.UpToDate, ["split"] = StageState.UpToDate,
            ["train"] = StageState.Ran, ["eval"] = StageState.Ran, ["merge"] = StageState.Ran, ["export"] = StageState.Ran,
        }, States(report));
    }

    [Fact]
    public void EvalParameterChangeNeverRetrains()
    {
        Run();
        Edit("max_new_tokens: 16", "max_new_tokens: 32");
        var report = Run();
        Assert.Equal([StageKind.Eval], report.Stages.Where(s => s.State == StageState.Ran).Select(s => s.Kind));
    }

    [Fact]
    public void DeviceIsNotPartOfTheFingerprint()
    {
        Run();
        Edit("learning_rate: 0.005", "learning_rate: 0.005\n    device: cpu");
        Assert.All(Run().Stages, s => Assert.Equal(StageState.UpToDate, s.State));
    }

    [Fact]
    public void DatasetFileChangeReRunsRegisterAndEverythingThatReadsIt()
    {
        Run();
        File.WriteAllText(Path.Combine(_dir.Path, "data/identity.json"), """[{"instruction": "hi", "input": "", "output": "I am {{name}}!"}]""");
        var status = Status();
        Assert.Equal("input data/identity.json changed", status.Stages.Single(s => s.Kind == StageKind.Register).Reason);
        var ran = Run().Stages.Where(s => s.State == StageState.Ran).Select(s => s.Kind);
        Assert.Equal([StageKind.Register, StageKind.Split, StageKind.Train, StageKind.Eval, StageKind.Merge, StageKind.Export], ran);
    }

    [Fact]
    public void SplitChangeLeavesDownloadAndRegisterAlone()
    {
        Run();
        Edit("val_size: 0.1", "val_size: 0.2");
        var ran = Run().Stages.Where(s => s.State == StageState.Ran).Select(s => s.Kind);
        Assert.Equal([StageKind.Split, StageKind.Train, StageKind.Eval, StageKind.Merge, StageKind.Export], ran);
    }

    [Fact]
    public void RevertedParameterReusesTheEarlierCachedOutput()
    {
        Run();
        Edit("learning_rate: 0.005", "learning_rate: 0.001");
        Run();
        Edit("learning_rate: 0.001", "learning_rate: 0.005");
        var report = Run();
        Assert.All(report.Stages, s => Assert.Equal(StageState.UpToDate, s.State));
        Assert.Equal("up to date (output reused from the cache)", report.Stages.Single(s => s.Kind == StageKind.Train).Reason);
        Assert.Equal(11, FakeStage.Runs(_counter).Length);
    }

    [Fact]
    public void TamperedCachedOutputIsDetectedAndRebuilt()
    {
        var first = Run();
        var split = first.Stages.Single(s => s.Kind == StageKind.Split);
        var file = Path.Combine(split.OutputDirectory!, "out.txt");
        var original = File.ReadAllText(file);
        File.WriteAllText(file, "tampered");
        File.SetLastWriteTimeUtc(file, DateTime.UtcNow.AddMinutes(1));

        var status = Status().Stages.Single(s => s.Kind == StageKind.Split);
        Assert.Equal(StageState.Stale, status.State);
        Assert.StartsWith("cached file out.txt was modified (sha256 ", status.Reason);

        var report = Run();
        Assert.Equal(StageState.Ran, report.Stages.Single(s => s.Kind == StageKind.Split).State);
        // Same fingerprint, same bytes again: downstream keeps its cached outputs.
        Assert.Equal(original, File.ReadAllText(file));
        Assert.Equal(StageState.UpToDate, report.Stages.Single(s => s.Kind == StageKind.Train).State);
    }

    [Fact]
    public void ExtraFileInCachedOutputIsTampering()
    {
        var first = Run();
        File.WriteAllText(Path.Combine(first.Stages[0].OutputDirectory!, "intruder.bin"), "x");
        var status = Status().Stages[0];
        Assert.Equal("cached output has an unexpected file intruder.bin", status.Reason);
    }

    [Fact]
    public void MissingExecutorRunsTheRestAndBlocksWhatNeedsIt()
    {
        var executors = FakeStage.All(_counter).Where(e => e.Kind != StageKind.Train).ToArray();
        var report = Run(executors: executors);
        Assert.Equal(new Dictionary<string, StageState>
        {
            ["download"] = StageState.Ran, ["register"] = StageState.Ran, ["split"] = StageState.Ran,
            ["train"] = StageState.NoExecutor, ["eval"] = StageState.Blocked, ["merge"] = StageState.Blocked, ["export"] = StageState.Blocked,
        }, States(report));
        Assert.Equal("needs stage train, which cannot run yet", report.Stages.Single(s => s.Kind == StageKind.Eval).Reason);
    }

    [Fact]
    public void StageOptionRunsOnlyWhatThatStageNeeds()
    {
        var report = Run(new RunOptions { Stage = "split" });
        Assert.Equal([StageKind.Download, StageKind.Register, StageKind.Split], report.Stages.Select(s => s.Kind));
        Assert.Equal(["download", "register", "split"], FakeStage.Runs(_counter));
    }

    [Fact]
    public void ForceWithStageReRunsOnlyThatStage()
    {
        Run();
        var report = Run(new RunOptions { Stage = "train", Force = true });
        Assert.Equal([StageKind.Train], report.Stages.Where(s => s.State == StageState.Ran).Select(s => s.Kind));
        Assert.Equal("forced", report.Stages.Single(s => s.Kind == StageKind.Train).Reason);
    }

    [Fact]
    public void DryRunWritesNothing()
    {
        var report = Run(new RunOptions { DryRun = true });
        Assert.Equal(StageState.Stale, report.Stages[0].State);
        Assert.Equal("never ran (not in pipeline.lock)", report.Stages[0].Reason);
        Assert.Equal(StageState.Stale, report.Stages[2].State);
        Assert.False(File.Exists(Path.Combine(_dir.Path, "pipeline.lock")));
        Assert.Empty(FakeStage.Runs(_counter));
    }

    [Fact]
    public void FailingStageLeavesNoOutputAndKeepsEarlierStages()
    {
        var executors = FakeStage.All(_counter).Select(e => e.Kind == StageKind.Train
            ? new FakeStage(StageKind.Train, _counter, during: _ => throw new InvalidDataException("boom")) : e).ToArray();
        var e = Assert.Throws<StageFailedException>(() => Run(executors: executors));
        Assert.Equal("stage train failed: boom", e.Message);
        var cache = StageCache.Beside(_dir.Path);
        Assert.Equal(3, cache.Fingerprints().Count());
        Assert.Empty(Directory.EnumerateDirectories(cache.TempRoot));
        var locked = LockFile.Read(Path.Combine(_dir.Path, "pipeline.lock"));
        Assert.Equal(["download", "register", "split"], locked.Stages.Keys.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void LockFileIsIdenticalForIdenticalContentInAnotherDirectory()
    {
        Run();
        using var other = new TempDir();
        var file2 = TestPipelines.Write(other);
        new PipelineRunner(FakeStage.All(Path.Combine(other.Path, "runs.txt")))
            .Run(PipelineLoader.Load(file2), new RunOptions(), new NullStageProgress(), CancellationToken.None);
        Assert.Equal(File.ReadAllText(Path.Combine(_dir.Path, "pipeline.lock")), File.ReadAllText(Path.Combine(other.Path, "pipeline.lock")));
    }

    [Fact]
    public void LockFileRecordsParametersHashesAndMetrics()
    {
        Run();
        var locked = LockFile.Read(Path.Combine(_dir.Path, "pipeline.lock")).Stages["register"];
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(Path.Combine(_dir.Path, "data/identity.json")))),
            locked.Inputs["data/identity.json"]);
        Assert.Equal("""{"data":{"dataset":["identity"],"placeholders":{"author":"Team","name":"Bot"},"stage":"sft"},"register":{"max_samples":null,"skip_invalid":false}}""",
            CanonicalJson.Serialize(locked.Parameters));
        Assert.True(locked.Metrics["bytes"] > 0);
        Assert.Equal(64, locked.OutputHash.Length);
    }
}
