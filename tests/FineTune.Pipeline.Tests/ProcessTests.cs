using FineTune.Models.Tests;
using System.Diagnostics;
using FineTune.Pipeline.Engine;

namespace FineTune.Pipeline.Tests;

/// <summary>Real child processes (this test assembly run through <see cref="TestHostProgram"/>) against one pipeline.</summary>
public sealed class ProcessTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _file;
    private readonly string _counter;

    public ProcessTests()
    {
        _file = TestPipelines.Write(_dir);
        _counter = Path.Combine(_dir.Path, "runs.txt");
    }

    public void Dispose() => _dir.Dispose();

    private Process Start(int pauseMs, string marker, int lockTimeoutMs = 60_000)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { typeof(TestHostProgram).Assembly.Location, "run", _file, _counter, pauseMs.ToString(), marker, lockTimeoutMs.ToString() })
            psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }

    private static void WaitFor(string file, Process p)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(file))
        {
            if (p.HasExited)
                Assert.Fail("child exited early: " + p.StandardError.ReadToEnd());
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), "child never reached the train stage");
            Thread.Sleep(20);
        }
    }

    [Fact]
    public void KilledStageLeavesNoVisibleOutput()
    {
        var marker = Path.Combine(_dir.Path, "marker");
        using var child = Start(pauseMs: 60_000, marker);
        WaitFor(marker, child);
        child.Kill(entireProcessTree: true);
        child.WaitForExit();

        var cache = StageCache.Beside(_dir.Path);
        var locked = LockFile.Read(Path.Combine(_dir.Path, "pipeline.lock"));
        // download, register, split finished; train was writing out.txt in tmp/ when killed.
        Assert.Equal(["download", "register", "split"], locked.Stages.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(3, cache.Fingerprints().Count());
        Assert.Single(Directory.EnumerateDirectories(cache.TempRoot));

        // The next run sweeps the leftover, re-runs train and what follows, and reuses the rest.
        var report = new PipelineRunner(FakeStage.All(_counter)).Run(Validation.PipelineLoader.Load(_file), new RunOptions(),
            new NullStageProgress(), CancellationToken.None);
        Assert.Equal([StageKind.Train, StageKind.Eval, StageKind.Merge, StageKind.Export],
            report.Stages.Where(s => s.State == StageState.Ran).Select(s => s.Kind));
        Assert.Empty(Directory.EnumerateDirectories(cache.TempRoot));
    }

    [Fact]
    public void ConcurrentRunsExecuteEachStageOnce()
    {
        var marker = Path.Combine(_dir.Path, "marker");
        using var first = Start(pauseMs: 1500, marker);
        WaitFor(marker, first);
        using var second = Start(pauseMs: 0, Path.Combine(_dir.Path, "marker2"));
        Assert.True(first.WaitForExit(60_000) && second.WaitForExit(60_000));
        Assert.Equal(0, first.ExitCode);
        Assert.Equal(0, second.ExitCode);
        // The second waited for the lock, then found every stage in the cache.
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], FakeStage.Runs(_counter));
        var secondOut = second.StandardOutput.ReadToEnd();
        Assert.Equal(7, secondOut.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(l => l.EndsWith(" UpToDate")));
    }

    [Fact]
    public void RunThatCannotGetTheLockFailsWithAClearMessage()
    {
        var marker = Path.Combine(_dir.Path, "marker");
        using var first = Start(pauseMs: 60_000, marker);
        try
        {
            WaitFor(marker, first);
            using var second = Start(pauseMs: 0, Path.Combine(_dir.Path, "marker2"), lockTimeoutMs: 300);
            Assert.True(second.WaitForExit(30_000));
            Assert.Equal(2, second.ExitCode);
            var error = second.StandardError.ReadToEnd();
            Assert.Contains("another finetune run of this pipeline (pid " + first.Id, error);
            Assert.Contains("still holds the lock after 0 s; wait for it to finish, or pass a longer --lock-timeout.", error);
        }
        finally
        {
            first.Kill(entireProcessTree: true);
            first.WaitForExit();
        }
    }
}
