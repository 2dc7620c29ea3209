using FineTune.Models;
using FineTune.Models.Hub;
using FineTune.Models.Tests;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// lora_target, additional_target and the freeze module keys checked against the model's real module names at load time
/// (what `finetune validate` reports) wherever the model is known without a download: a scratch config, a local model
/// directory, or a hub model already downloaded.
/// </summary>
public sealed class ModuleNameValidationTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private const string LinearList = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj";

    private string Write(string yaml) => ResumeTests.WritePipeline(_dir, yaml);

    /// <summary>Line and column (1-based) of the first occurrence of <paramref name="text"/> in the file.</summary>
    private static (int Line, int Column) Where(string file, string text)
    {
        var lines = File.ReadAllLines(file);
        for (int i = 0; i < lines.Length; i++)
            if (lines[i].IndexOf(text, StringComparison.Ordinal) is >= 0 and var c)
                return (i + 1, c + 1);
        throw new InvalidOperationException(text);
    }

    private static IReadOnlyList<PipelineError> Errors(string file) =>
        Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file)).Errors;

    [Fact]
    public void Scratch_model_lora_target_and_additional_target_typos_are_located_with_a_suggestion()
    {
        var file = Write(ResumeTests.Yaml.Replace("train: {device: cpu,", "train: {lora_target: 'v_proj,q_prj', additional_target: embed_tokns, device: cpu,"));
        var errors = Errors(file);
        var (line, col) = Where(file, "'v_proj,q_prj'");
        var (line2, col2) = Where(file, "embed_tokns");
        Assert.Equal([
            new PipelineError(file, line, col, "$.stages.train.lora_target[1]",
                $"'q_prj' is not a linear module of this qwen3 model; did you mean 'q_proj'? (expected all, or some of {LinearList})"),
            new PipelineError(file, line2, col2, "$.stages.train.additional_target[0]",
                "'embed_tokns' matches no module of this qwen3 model; did you mean 'embed_tokens'? (modules: embed_tokens, norm, " +
                $"input_layernorm, post_attention_layernorm, {LinearList}, q_norm, k_norm; the embeddings are tied, so there is no lm_head)"),
        ], errors);
    }

    [Fact]
    public void Freeze_modules_are_checked_against_a_decoder_layer_of_the_architecture()
    {
        var file = Write(ResumeTests.Yaml
            .Replace("seed: 0}", "seed: 0, architecture: llama}")
            .Replace("train: {device: cpu,", "train: {finetuning_type: freeze, freeze_trainable_modules: [mpl, q_norm], freeze_extra_modules: [lm_head], device: cpu,"));
        Assert.Equal([
            "$.stages.train.freeze_trainable_modules[0]: 'mpl' is not a module of a decoder layer of this llama model; did you mean 'mlp'? " +
                $"(expected all, or some of self_attn, mlp, input_layernorm, post_attention_layernorm, {LinearList})",
            "$.stages.train.freeze_trainable_modules[1]: 'q_norm' is not a module of a decoder layer of this llama model " +
                $"(expected all, or some of self_attn, mlp, input_layernorm, post_attention_layernorm, {LinearList})",
            "$.stages.train.freeze_extra_modules[0]: 'lm_head' matches no module of this llama model " +
                $"(modules: embed_tokens, norm, input_layernorm, post_attention_layernorm, {LinearList}; the embeddings are tied, so there is no lm_head)",
        ], Errors(file).Select(e => $"{e.JsonPath}: {e.Message}"));
    }

    [Fact]
    public void A_local_model_directory_is_read_for_its_module_names()
    {
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = ModelArchitecture.Qwen2, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2,
            NumKeyValueHeads = 1, HeadDim = 16, TieWordEmbeddings = false,
        }, _dir.File("base"));
        var yaml = ResumeTests.Yaml
            .Replace("  source: scratch\n  scratch: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, seed: 0}\n",
                "  source: base\n");
        Assert.DoesNotContain("scratch", yaml);
        // An untied qwen2 has an lm_head and no q_norm.
        PipelineLoader.Load(Write(yaml.Replace("train: {device: cpu,", "train: {additional_target: [lm_head], device: cpu,")));
        var error = Assert.Single(Errors(Write(yaml.Replace("train: {device: cpu,", "train: {additional_target: [q_norm], device: cpu,"))));
        Assert.Equal("$.stages.train.additional_target[0]", error.JsonPath);
        Assert.StartsWith("'q_norm' matches no module of this qwen2 model; did you mean 'norm'? (modules: embed_tokens, norm, lm_head, input_layernorm,", error.Message);
    }

    [Fact]
    public void A_hub_model_is_checked_once_downloaded_and_left_to_the_train_stage_before()
    {
        var yaml = ResumeTests.Yaml
            .Replace("  source: scratch\n  scratch: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, seed: 0}\n",
                "  source: hf://acme/tiny@main\n")
            .Replace("train: {device: cpu,", "train: {lora_target: [q_prj], device: cpu,");
        var file = Write(yaml);
        PipelineLoader.Load(file); // not downloaded: nothing to check against yet

        // What the download stage leaves in .finetune/work/download/hub: the ref, the snapshot manifest and the blobs.
        var config = _dir.File("cfg/config.json");
        ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16 },
            _dir.File("cfg"));
        var bytes = File.ReadAllBytes(config);
        var sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes));
        var store = new HubStore(Path.Combine(_dir.Path, ".finetune", "work", "download", "hub"));
        var snapshot = new HubSnapshot("acme/tiny", new string('a', 40), [new HubFile("config.json", bytes.Length, sha, null)]);
        store.Save(snapshot, "main");
        var blob = store.BlobPath(snapshot.RepoId, snapshot.Commit, snapshot.Files[0]);
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        File.WriteAllBytes(blob, bytes);

        var error = Assert.Single(Errors(file));
        Assert.Equal("$.stages.train.lora_target[0]", error.JsonPath);
        Assert.Equal($"'q_prj' is not a linear module of this qwen3 model; did you mean 'q_proj'? (expected all, or some of {LinearList})", error.Message);
    }
}
