using System.Globalization;

namespace FineTune.Training;

/// <summary>
/// The <c>checkpoint-&lt;step&gt;/</c> directories of one output directory. A checkpoint is written
/// into a hidden temporary directory beside them and renamed into place only when every file is
/// flushed, so a process killed mid-write leaves at most a stray temporary directory (removed on
/// the next start) and every <c>checkpoint-N</c> that exists is complete.
/// </summary>
public sealed class CheckpointStore
{
    public const string Prefix = "checkpoint-";

    /// <summary>Written when the run these checkpoints belong to has finished (its result is the stage output).</summary>
    public const string FinishedMarker = "run_finished.json";

    public void MarkFinished(int step, int maxSteps)
    {
        string path = Path.Combine(OutputDirectory, FinishedMarker), tmp = path + ".tmp";
        File.WriteAllText(tmp, $"{{\"global_step\": {step}, \"max_steps\": {maxSteps}}}\n");
        File.Move(tmp, path, overwrite: true);
    }

    public bool IsFinished => File.Exists(Path.Combine(OutputDirectory, FinishedMarker));

    /// <summary>A run starts here again (a forced re-run of the same model, data and parameters): its checkpoints are needed until it finishes.</summary>
    public void MarkUnfinished() => File.Delete(Path.Combine(OutputDirectory, FinishedMarker));
    const string TempPrefix = ".tmp-checkpoint-";

    public string OutputDirectory { get; }

    public CheckpointStore(string outputDirectory)
    {
        OutputDirectory = Path.GetFullPath(outputDirectory);
        Directory.CreateDirectory(OutputDirectory);
    }

    /// <summary>Removes temporary directories left by a writer that died before its rename.</summary>
    public int RemoveIncomplete()
    {
        int removed = 0;
        foreach (var dir in Directory.EnumerateDirectories(OutputDirectory, TempPrefix + "*"))
        {
            Directory.Delete(dir, recursive: true);
            removed++;
        }
        return removed;
    }

    /// <summary>Complete checkpoints, oldest step first.</summary>
    public IReadOnlyList<(int Step, string Path)> List() =>
        Directory.EnumerateDirectories(OutputDirectory, Prefix + "*")
            .Select(d => (Ok: TryParseStep(Path.GetFileName(d), out int s), Step: s, Path: d))
            .Where(t => t.Ok)
            .OrderBy(t => t.Step)
            .Select(t => (t.Step, t.Path))
            .ToList();

    public string? Latest() => List() is { Count: > 0 } all ? all[^1].Path : null;

    public static bool TryParseStep(string directoryName, out int step)
    {
        step = 0;
        return directoryName.StartsWith(Prefix, StringComparison.Ordinal)
            && int.TryParse(directoryName.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out step);
    }

    /// <summary>
    /// Writes <c>checkpoint-&lt;step&gt;</c>: <paramref name="writeContents"/> fills a temporary
    /// directory, then it is renamed into place. Afterwards the oldest checkpoints beyond
    /// <paramref name="saveTotalLimit"/> (when positive) are deleted. If the writer throws, the
    /// temporary directory is removed and existing checkpoints are untouched.
    /// </summary>
    public string Save(int step, Action<string> writeContents, int saveTotalLimit = 0)
    {
        string final = Path.Combine(OutputDirectory, Prefix + step.ToString(CultureInfo.InvariantCulture));
        string temp = Path.Combine(OutputDirectory, $"{TempPrefix}{step}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temp);
        try
        {
            writeContents(temp);
            FlushTree(temp);
        }
        catch
        {
            Directory.Delete(temp, recursive: true);
            throw;
        }
        if (Directory.Exists(final))
        {
            // Same step saved again (a resumed run re-reaching it): swap, never leave the step missing a complete copy.
            string old = Path.Combine(OutputDirectory, $"{TempPrefix}old-{step}-{Guid.NewGuid():N}");
            Directory.Move(final, old);
            Directory.Move(temp, final);
            Directory.Delete(old, recursive: true);
        }
        else
        {
            Directory.Move(temp, final);
        }
        if (saveTotalLimit > 0) Rotate(saveTotalLimit);
        return final;
    }

    /// <summary>Deletes the oldest checkpoints so that at most <paramref name="limit"/> remain.</summary>
    public void Rotate(int limit)
    {
        var all = List();
        for (int i = 0; i < all.Count - limit; i++) Directory.Delete(all[i].Path, recursive: true);
    }

    /// <summary>
    /// Resolves <c>resume_from_checkpoint</c>: "true" means the latest checkpoint here if there is one (Hugging Face's
    /// meaning; null when there is none yet), "false"/empty means none, anything else is a checkpoint directory path,
    /// which must exist.
    /// </summary>
    public string? Resolve(string? resumeFromCheckpoint)
    {
        if (string.IsNullOrWhiteSpace(resumeFromCheckpoint) || resumeFromCheckpoint.Equals("false", StringComparison.OrdinalIgnoreCase))
            return null;
        if (IsLatest(resumeFromCheckpoint))
            return Latest();
        string path = Path.GetFullPath(resumeFromCheckpoint);
        if (!File.Exists(Path.Combine(path, TrainerState.FileName)))
            throw new TrainingException(
                $"resume_from_checkpoint: '{resumeFromCheckpoint}' is not a checkpoint directory (no {TrainerState.FileName} in {path}). Point it at a {Prefix}<step> directory or use true for the latest.");
        return path;
    }

    /// <summary>resume_from_checkpoint: true — the latest checkpoint, if any.</summary>
    public static bool IsLatest(string? resumeFromCheckpoint) => resumeFromCheckpoint?.Equals("true", StringComparison.OrdinalIgnoreCase) == true;

    static void FlushTree(string dir)
    {
        foreach (var file in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
        {
            using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite, FileShare.None);
            fs.Flush(flushToDisk: true);
        }
    }
}

/// <summary>A training failure the user can act on (bad option, diverged loss); the message says what to do.</summary>
public sealed class TrainingException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Training was cancelled (Ctrl-C) after a completed step, which was saved as a checkpoint first.</summary>
public sealed class TrainingCancelledException(int step, int maxSteps, string checkpoint)
    : OperationCanceledException($"stopped after step {step} of {maxSteps}; saved {checkpoint}. Run again with resume_from_checkpoint: true to continue from it.")
{
    public int Step { get; } = step;
    public string Checkpoint { get; } = checkpoint;
}
