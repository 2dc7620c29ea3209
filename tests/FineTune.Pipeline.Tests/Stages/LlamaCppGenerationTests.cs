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
/// loads the demo pipeline's export, trained as each family, and greedy-decodes exactly the tokens FineTune decodes from the
/// merged model for the same prompt. The families are split over two test classes, so xunit trains two at once.
/// </summary>
public abstract class LlamaCppGeneration : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static string RepoRoot => NodeFixtures.RepoRoot;

    /// <summary>The questions of data/identity.json a family trains on with fewRecords: two answers, so the model must read the prompt.</summary>
    private static readonly string[] FewQuestions =
        ["Who are you?", "Who are you", "What are you?", "Introduce yourself.", "What is your name?", "What's your name?", "What should I call you?", "Do you have a name?"];

    /// <summary>
    /// pipelines/identity/pipeline.yaml with another architecture, on the CPU, without its eval stage (nothing here reads
    /// it): the demo's training of the repository's identity data, or with <paramref name="fewRecords"/> 8 of its records
    /// and no validation split (one batch a step: 30 % of the demo's tokens per epoch). The model, template, LoRA, learning
    /// rate, epochs and schedule are the demo's.
    /// </summary>
    private string DemoPipeline(string architecture, bool fewRecords, string scratchExtra, bool tied)
    {
        string yaml = File.ReadAllText(Path.Combine(RepoRoot, "pipelines", "identity", "pipeline.yaml"));
        // Every replaced piece must be there, or the demo changed under the test.
        foreach (string piece in new[] { "architecture: qwen3", "device: auto", "val_size: 0.1", "  eval:\n", "  merge:\n" })
            Assert.Contains(piece, yaml);
        // Tied: no lm_head to train beside the adapter; the (shared) embeddings train instead.
        if (tied) yaml = yaml.Replace("tie_word_embeddings: false", "tie_word_embeddings: true").Replace("lm_head]", "embed_tokens]");
        yaml = yaml.Replace("architecture: qwen3", $"architecture: {architecture}{scratchExtra}").Replace("device: auto", "device: cpu");
        yaml = yaml[..yaml.IndexOf("  eval:\n", StringComparison.Ordinal)] + yaml[yaml.IndexOf("  merge:\n", StringComparison.Ordinal)..];
        if (!fewRecords)
            return _dir.Write($"{architecture}/pipeline.yaml", yaml.Replace("data:\n", $"data:\n  dataset_dir: {Path.Combine(RepoRoot, "data")}\n"));
        var records = JsonNode.Parse(File.ReadAllText(Path.Combine(RepoRoot, "data", "identity.json")))!.AsArray()
            .Where(r => FewQuestions.Contains(r!["instruction"]!.GetValue<string>())).Select(r => r!.DeepClone()).ToArray();
        Assert.Equal(FewQuestions.Length, records.Length);
        _dir.Write("data/dataset_info.json", """{"identity": {"file_name": "identity.json"}}""");
        _dir.Write("data/identity.json", new JsonArray(records).ToJsonString());
        yaml = yaml.Replace("val_size: 0.1", "val_size: 0").Replace("data:\n", $"data:\n  dataset_dir: {_dir.File("data")}\n");
        return _dir.Write($"{architecture}/pipeline.yaml", yaml);
    }

    protected void Exported_gguf_greedy_decodes_the_same_answer(string architecture, bool fewRecords, string scratchExtra = "", bool tied = false)
    {
        var loaded = PipelineLoader.Load(DemoPipeline(architecture, fewRecords, scratchExtra, tied));
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

/// <summary>
/// The dense families whose GGUF is the standard block. mistral is left out: FineTune writes its GGUF byte for byte as
/// llama's (GgufTests.A_mistral_model_exports_the_gguf_bytes_of_the_llama_model_with_its_weights_and_decodes_alike).
/// </summary>
public sealed class LlamaCppGenerationTests : LlamaCppGeneration
{
    [Theory]
    [InlineData("qwen3", true)]
    [InlineData("qwen2", true)]
    [InlineData("llama", false)]
    // phi3 learns its answer's end only from the demo's data: on the 8 records it ran on to the token limit at 60 epochs
    // and lost its answer at 120 (2026-12-01).
    [InlineData("phi3", false)]
    public void Exported_gguf_greedy_decodes_the_same_answer_in_llama_cpp(string architecture, bool fewRecords) =>
        Exported_gguf_greedy_decodes_the_same_answer(architecture, fewRecords);
}

/// <summary>The families with their own GGUF layout: gemma's norms and attention, and a mixture of experts.</summary>
public sealed class LlamaCppGemmaAndMoeGenerationTests : LlamaCppGeneration
{
    [Theory]
    // llama.cpp scales gemma's attention by head_dim^-½ whatever query_pre_attn_scalar says: the demo sets it to head_dim;
    // its gemma2 always ties the output to token_embd (as every Gemma 2 checkpoint does), so that demo is tied.
    [InlineData("gemma2", false, "\n    query_pre_attn_scalar: 32", true)]
    [InlineData("gemma3_text", true, "\n    query_pre_attn_scalar: 32", false)]
    // A mixture of 4 experts of 128, top 2: as much MLP work per token as the dense demo's 256. (mixtral, llama.cpp's
    // llama architecture with the same expert tensors, passed too — "mixtral", "\n    num_local_experts: 4\n    num_experts_per_tok: 2"
    // — and is left out of CI for time; MoeTests checks its GGUF tensors.)
    [InlineData("qwen3_moe", true, "\n    num_experts: 4\n    num_experts_per_tok: 2\n    moe_intermediate_size: 128", false)]
    public void Exported_gguf_greedy_decodes_the_same_answer_in_llama_cpp(string architecture, bool fewRecords, string scratchExtra, bool tied) =>
        Exported_gguf_greedy_decodes_the_same_answer(architecture, fewRecords, scratchExtra, tied);
}
