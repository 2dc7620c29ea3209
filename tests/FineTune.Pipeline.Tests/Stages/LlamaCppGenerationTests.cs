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
/// The real consumer of FineTune's GGUF: llama.cpp (node-llama-cpp's prebuilt CPU binaries, tests/fixtures/llama-generate.js)
/// loads the demo pipeline's export, trained as each dense family, and greedy-decodes exactly the tokens FineTune decodes
/// from the merged model for the same prompt.
/// </summary>
public sealed class LlamaCppGenerationTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static string RepoRoot => NodeFixtures.RepoRoot;

    /// <summary>pipelines/identity/pipeline.yaml with another architecture, the repository's data, and the CPU.</summary>
    private string DemoPipeline(string architecture, string scratchExtra = "", bool tied = false)
    {
        string yaml = File.ReadAllText(Path.Combine(RepoRoot, "pipelines", "identity", "pipeline.yaml"));
        Assert.Contains("architecture: qwen3", yaml);
        Assert.Contains("device: auto", yaml);
        // Tied: no lm_head to train beside the adapter; the (shared) embeddings train instead.
        if (tied) yaml = yaml.Replace("tie_word_embeddings: false", "tie_word_embeddings: true").Replace("lm_head]", "embed_tokens]");
        yaml = yaml.Replace("architecture: qwen3", $"architecture: {architecture}{scratchExtra}")
            .Replace("device: auto", "device: cpu")
            .Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(RepoRoot, "data")}\n");
        return _dir.Write($"{architecture}/pipeline.yaml", yaml);
    }

    [Theory]
    [InlineData("qwen3")]
    [InlineData("qwen2")]
    [InlineData("llama")]
    [InlineData("mistral")]
    [InlineData("phi3")]
    // llama.cpp scales gemma's attention by head_dim^-½ whatever query_pre_attn_scalar says: the demo sets it to head_dim;
    // its gemma2 always ties the output to token_embd (as every Gemma 2 checkpoint does), so that demo is tied.
    [InlineData("gemma2", "\n    query_pre_attn_scalar: 32", true)]
    [InlineData("gemma3_text", "\n    query_pre_attn_scalar: 32")]
    // A mixture of 4 experts of 128, top 2: as much MLP work per token as the dense demo's 256. (mixtral, llama.cpp's
    // llama architecture with the same expert tensors, passed too — "mixtral", "\n    num_local_experts: 4\n    num_experts_per_tok: 2"
    // — and is left out of CI for time; MoeTests checks its GGUF tensors.)
    [InlineData("qwen3_moe", "\n    num_experts: 4\n    num_experts_per_tok: 2\n    moe_intermediate_size: 128")]
    public void Exported_gguf_greedy_decodes_the_same_answer_in_llama_cpp(string architecture, string scratchExtra = "", bool tied = false)
    {
        var loaded = PipelineLoader.Load(DemoPipeline(architecture, scratchExtra, tied));
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
        Assert.Equal(prompt, theirs["promptTokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray());
        Assert.Equal(ours, theirs["tokens"]!.AsArray().Select(t => t!.GetValue<int>()).ToArray());
        Assert.Equal("eog", theirs["finish"]!.GetValue<string>());
        Assert.Contains(theirs["eogToken"]!.GetValue<int>(), session.Options.EosTokenIds);
        Assert.Equal(answer, theirs["text"]!.GetValue<string>());
    }

    private static JsonObject LlamaGenerate(string gguf, string promptText, int maxTokens) =>
        NodeFixtures.LlamaGenerate(new JsonObject
        {
            ["models"] = new JsonArray(new JsonObject { ["path"] = gguf, ["promptText"] = promptText, ["maxTokens"] = maxTokens }),
        })[0]!.AsObject();
}
