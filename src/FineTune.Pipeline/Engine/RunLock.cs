using System.Diagnostics;

namespace FineTune.Pipeline.Engine;

/// <summary>
/// Exclusive lock on .finetune/run.lock for the duration of a run, across processes (the OS drops it when the
/// holder dies, so a killed build never leaves the pipeline locked). A second run waits for it, then sees the
/// first run's outputs in the cache and reuses them.
/// </summary>
public sealed class RunLock : IDisposable
{
    private readonly FileStream _stream;
    private readonly string _ownerPath;

    private RunLock(FileStream stream, string ownerPath)
    {
        _stream = stream;
        _ownerPath = ownerPath;
    }

    /// <param name="onWait">Called once if the lock is held by another run (with who holds it).</param>
    public static RunLock Acquire(string cacheRoot, TimeSpan timeout, Action<string>? onWait, CancellationToken ct)
    {
        Directory.CreateDirectory(cacheRoot);
        var path = Path.Combine(cacheRoot, "run.lock");
        var ownerPath = Path.Combine(cacheRoot, "run.owner");
        var clock = Stopwatch.StartNew();
        var told = false;
        while (true)
        {
            try
            {
                var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                AtomicFile.WriteAllText(ownerPath, $"pid {Environment.ProcessId} on {Environment.MachineName} since {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss} UTC");
                return new RunLock(stream, ownerPath);
            }
            catch (IOException)
            {
                var owner = File.Exists(ownerPath) ? File.ReadAllText(ownerPath) : "another process";
                if (clock.Elapsed >= timeout)
                    throw new PipelineUserException(
                        $"{path}: another finetune run of this pipeline ({owner}) still holds the lock after {timeout.TotalSeconds:0} s; " +
                        "wait for it to finish, or pass a longer --lock-timeout.");
                if (!told)
                {
                    onWait?.Invoke($"waiting for another finetune run of this pipeline ({owner}) to finish…");
                    told = true;
                }
                ct.WaitHandle.WaitOne(TimeSpan.FromMilliseconds(200));
                ct.ThrowIfCancellationRequested();
            }
        }
    }

    public void Dispose()
    {
        try { File.Delete(_ownerPath); } catch (IOException) { }
        _stream.Dispose();
    }
}
