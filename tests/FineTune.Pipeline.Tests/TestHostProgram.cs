using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// Entry point when the test assembly runs as a child process (`dotnet FineTune.Pipeline.Tests.dll run …`): runs a
/// pipeline with the fake executors, the train stage pausing <c>pauseMs</c> after writing its output (so a test can
/// kill it mid-stage or start a second run against it).
/// </summary>
public static class TestHostProgram
{
    public static int Main(string[] args)
    {
        if (args is not ["run", var pipeline, var counter, var pauseMs, var marker, var lockTimeoutMs])
        {
            Console.Error.WriteLine("usage: run <pipeline> <counter-file> <pause-ms> <marker-file> <lock-timeout-ms>");
            return 64;
        }
        var executors = FakeStage.All(counter, _ =>
        {
            File.WriteAllText(marker, "train is writing");
            Thread.Sleep(int.Parse(pauseMs));
        });
        try
        {
            var report = new PipelineRunner(executors).Run(PipelineLoader.Load(pipeline),
                new RunOptions { LockTimeout = TimeSpan.FromMilliseconds(int.Parse(lockTimeoutMs)) }, new NullStageProgress(), CancellationToken.None);
            foreach (var s in report.Stages)
                Console.WriteLine($"{StageGraph.Name(s.Kind)} {s.State}");
            return 0;
        }
        catch (PipelineUserException e)
        {
            Console.Error.WriteLine(e.Message);
            return 2;
        }
    }
}
