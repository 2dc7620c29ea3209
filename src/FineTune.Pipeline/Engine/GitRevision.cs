using System.Diagnostics;

namespace FineTune.Pipeline.Engine;

/// <summary>Reads what git holds for the pipeline's checkout (`git show REV:path`, `git rev-parse`), through the git CLI.</summary>
public static class GitRevision
{
    /// <summary>The commit HEAD points at in the repository around <paramref name="directory"/>, or null outside one (or without git).</summary>
    public static string? Head(string directory)
    {
        var (code, output, _) = Git(directory, "rev-parse", "HEAD");
        return code == 0 ? output.Trim() : null;
    }

    /// <summary>
    /// The bytes of <paramref name="file"/> (a path in the working tree) at <paramref name="revision"/>; null when the file
    /// does not exist at that revision. A revision git does not know, or a directory outside a repository, is a user error.
    /// </summary>
    public static string? Show(string file, string revision)
    {
        var full = Path.GetFullPath(file);
        var dir = Path.GetDirectoryName(full)!;
        var (top, root, topErr) = Git(dir, "rev-parse", "--show-toplevel");
        if (top != 0)
            throw new PipelineUserException($"{dir}: not inside a git repository ({topErr.Trim()}); metrics and params diffs read earlier revisions from git.");
        var (known, _, _) = Git(dir, "rev-parse", "--verify", "--quiet", revision + "^{commit}");
        if (known != 0)
            throw new PipelineUserException($"{revision}: git knows no such revision in {root.Trim()}; name a commit, branch or tag (`git log --oneline`).");
        var relative = Path.GetRelativePath(Path.GetFullPath(root.Trim()), full).Replace('\\', '/');
        var (code, output, _) = Git(dir, "show", $"{revision}:{relative}");
        return code == 0 ? output : null;
    }

    private static (int Code, string Output, string Error) Git(string directory, params string[] args)
    {
        var start = new ProcessStartInfo("git") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) start.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(start)!;
            var error = p.StandardError.ReadToEndAsync();
            var output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, output, error.Result);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, "", $"git could not be started: {e.Message}");
        }
    }
}
