using System.Diagnostics;
using System.Text.Json.Nodes;

namespace FineTune.Models.Tests;

/// <summary>
/// Node scripts and npm packages under tests/fixtures (installed by `npm ci` there), found by walking up
/// from the test's base directory to the repository root.
/// </summary>
internal static class NodeFixtures
{
    public static string FixturesDir { get; } = Path.Combine(FindRepoRoot(), "tests", "fixtures");

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No FineTune.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
    }

    /// <summary>Parses a GGUF file with @huggingface/gguf through tests/fixtures/gguf-read.js.</summary>
    public static JsonObject ReadGguf(string path)
    {
        if (!File.Exists(Path.Combine(FixturesDir, "node_modules", "@huggingface", "gguf", "package.json")))
            throw new InvalidOperationException($"@huggingface/gguf is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        var psi = new ProcessStartInfo("node", [Path.Combine(FixturesDir, "gguf-read.js"), path])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = FixturesDir,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start node");
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"gguf-read.js failed ({p.ExitCode}): {stderr.Result}");
        return JsonNode.Parse(stdout)!.AsObject();
    }
}
