using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Data.Templates;
using FineTune.Engine;
using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using FineTune.Tokenizers;
using FineTune.Training.Chat;

namespace FineTune.Pipeline.Tests.Stages;

/// <summary>
/// The real consumer of FineTune's GGUF: llama.cpp (node-llama-cpp's prebuilt CPU binaries, tests/fixtures/llama-generate.mjs)
/// loads the demo pipeline's export, trained as each dense family, and greedy-decodes exactly the tokens FineTune decodes
/// from the merged model for the same prompt.
/// </summary>
public sealed class LlamaCppGenerationTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static readonly string RepoRoot = FindRepoRoot();
    private static string FixturesDir => Path.Combine(RepoRoot, "tests", "fixtures");

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No FineTune.sln above {AppContext.BaseDirectory}; run the tests from the repository.");
    }

    /// <summary>pipelines/identity/pipeline.yaml with another architecture, the repository's data, and the CPU.</summary>
    private string DemoPipeline(string architecture)
    {
        string yaml = File.ReadAllText(Path.Combine(RepoRoot, "pipelines", "identity", "pipeline.yaml"));
        Assert.Contains("architecture: qwen3", yaml);
        Assert.Contains("device: auto", yaml);
        yaml = yaml.Replace("architecture: qwen3", $"architecture: {architecture}")
            .Replace("device: auto", "device: cpu")
            .Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(RepoRoot, "data")}\n");
        return _dir.Write($"{architecture}/pipeline.yaml", yaml);
    }

    [Theory]
    [InlineData("qwen3")]
    [InlineData("qwen2")]
    [InlineData("llama")]
    public void Exported_gguf_greedy_decodes_the_same_answer_in_llama_cpp(string architecture)
    {
        var loaded = PipelineLoader.Load(DemoPipeline(architecture));
        var report = new PipelineRunner(StageRegistry.CreateDefault())
            .Run(loaded, new RunOptions(), new NullStageProgress(), CancellationToken.None);
        string merged = report.Stages.Single(s => s.Kind == StageKind.Merge).OutputDirectory!;
        string gguf = Path.Combine(report.Stages.Single(s => s.Kind == StageKind.Export).OutputDirectory!, "gguf", "model-f16.gguf");
        Assert.True(File.Exists(gguf), gguf);

        var tokenizer = Tokenizer.FromDirectory(merged);
        using var backend = Backends.Create("cpu");
        using var model = CausalLM.Load(merged, backend, TrainingSetup.Inference);
        var session = new ChatSession(model, tokenizer, ChatTemplate.Get("qwen3"), null, new GenerationOptions { MaxNewTokens = 160 });
        int[] prompt = session.PromptIds("Who are you?");
        var generated = model.Generate([prompt], session.Options)[0];
        Assert.Equal("eos", generated.FinishReason);
        int[] ours = generated.Tokens;
        string answer = tokenizer.Decode(ours, skipSpecialTokens: true);
        // The demo has learnt its identity; a model that had not would make this comparison weak.
        Assert.Contains("FineTune", answer);

        var theirs = LlamaGenerate(gguf, tokenizer.Decode(prompt, skipSpecialTokens: false), 160);
        Assert.Equal(prompt, theirs["prompt_tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray());
        Assert.Equal(ours, theirs["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray());
        Assert.Equal("eog", theirs["finish"]!.GetValue<string>());
        Assert.Contains(theirs["eog_token"]!.GetValue<int>(), session.Options.EosTokenIds);
        Assert.Equal(answer, theirs["text"]!.GetValue<string>());
    }

    private JsonObject LlamaGenerate(string gguf, string promptText, int maxTokens)
    {
        string request = _dir.Write($"request-{Guid.NewGuid():N}.json",
            new JsonObject { ["prompt"] = promptText, ["max_tokens"] = maxTokens }.ToJsonString());
        var psi = new ProcessStartInfo("node", [Path.Combine(FixturesDir, "llama-generate.mjs"), gguf, request])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = FixturesDir,
        };
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start node");
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"llama-generate.mjs failed ({p.ExitCode}): {stderr.Result}");
        return JsonNode.Parse(stdout)!.AsObject();
    }
}
