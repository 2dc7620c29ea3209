using FineTune.Models;
using FineTune.Models.Tests;
using FineTune.Models.Tests.Hub;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests.Stages;

public sealed class DownloadStageTests : IDisposable
{
    private const string CommitA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    private const string CommitB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private StageContext Context(ModelSection model, string output, DownloadConfig? download = null) =>
        new(new PipelineDefinition { Name = "t", Model = model, Stages = new StagesSection { Download = download ?? new DownloadConfig() } },
            _dir.Path, new Dictionary<StageKind, string>(), output, new NullStageProgress(), CancellationToken.None, _dir.File("work"));

    private string Output(string name) => Directory.CreateDirectory(_dir.File(name)).FullName;

    [Fact]
    public void Scratch_generates_the_model_and_counts_its_parameters()
    {
        var result = new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = new ScratchConfig() }, Output("out")));
        // embed 269·64 + 2 layers · (2·64 norms + q 64·64 + k 32·64 + v 32·64 + o 64·64 + q/k norm 2·16 + mlp 3·128·64) + norm 64
        Assert.Equal(91_328, result.Metrics["parameters"]);
        Assert.Equal(ModelArchitecture.Qwen3, ModelConfig.Load(_dir.File("out")).Architecture);
        Assert.Empty(new DownloadStage().ExternalInputs(Context(new ModelSection { Source = "scratch" }, "")));
    }

    [Fact]
    public void Scratch_gemma_keys_reach_config_json()
    {
        new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = new ScratchConfig
        {
            Architecture = ScratchArchitecture.Gemma3Text, SlidingWindow = 7, LayerTypes = ["full_attention", "sliding_attention"], QueryPreAttnScalar = 16,
        } }, Output("out")));
        var config = ModelConfig.Load(_dir.File("out"));
        Assert.Equal(("Gemma3ForCausalLM", 7, 16.0, "gelu_pytorch_tanh"), (config.ArchitectureClassName, config.SlidingWindow!.Value, config.QueryPreAttnScalar!.Value, config.HiddenAct));
        Assert.Equal(["full_attention", "sliding_attention"], config.LayerTypes);
    }

    [Fact]
    public void A_gemma_key_on_another_family_is_a_user_error()
    {
        var e = Assert.Throws<PipelineUserException>(() => new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = new ScratchConfig { Architecture = ScratchArchitecture.Llama, SlidingWindow = 8 } }, Output("out"))));
        Assert.Equal("model.scratch.sliding_window: llama has no sliding_window (a gemma2 / gemma3_text key); remove it or set architecture: gemma2 or gemma3_text.", e.Message);
        Assert.False(File.Exists(_dir.File("out/config.json")));
    }

    [Fact]
    public void Scratch_architecture_is_the_hf_model_type_of_any_family_in_the_table()
    {
        new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = new ScratchConfig { Architecture = ScratchArchitecture.Mistral } }, Output("out")));
        var config = ModelConfig.Load(_dir.File("out"));
        Assert.Equal((ModelArchitecture.Mistral, "MistralForCausalLM"), (config.Architecture, config.ArchitectureClassName));
    }

    [Fact]
    public void Scratch_moe_keys_are_hfs_config_keys_of_the_generated_model()
    {
        var scratch = new ScratchConfig { Architecture = ScratchArchitecture.Qwen3Moe, NumExperts = 4, NumExpertsPerTok = 2, MoeIntermediateSize = 32, DecoderSparseStep = 2 };
        var result = new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = scratch }, Output("out")));
        var config = ModelConfig.Load(_dir.File("out"));
        Assert.Equal(("Qwen3MoeForCausalLM", 4, 2, 32, 2, true), (config.ArchitectureClassName, config.Moe!.NumExperts, config.Moe.NumExpertsPerTok,
            config.Moe.ExpertIntermediateSize, config.Moe.DecoderSparseStep, config.Moe.NormTopKProb));
        // embed 269·64 + 2 layers · attention (2·64 norms + 64·64 + 2·32·64 + 64·64 + 2·16) + layer 0 dense 3·128·64
        // + layer 1 router 4·64 and 4 experts of 3·32·64 + norm 64.
        Assert.Equal(269 * 64 + 2 * (128 + 4096 + 4096 + 4096 + 32) + 3 * 128 * 64 + 4 * 64 + 4 * 3 * 32 * 64 + 64, result.Metrics["parameters"]);
    }

    [Fact]
    public void Scratch_moe_keys_on_a_dense_family_are_a_user_error()
    {
        var scratch = new ScratchConfig { Architecture = ScratchArchitecture.Qwen3, NumExperts = 4 };
        var e = Assert.Throws<PipelineUserException>(() => new DownloadStage().Execute(Context(new ModelSection { Source = "scratch", Scratch = scratch }, Output("out"))));
        Assert.Equal("model.scratch: num_experts, num_experts_per_tok and the other mixture-of-experts keys are for qwen3_moe and mixtral, not qwen3; remove them or set architecture: qwen3_moe.", e.Message);
        Assert.Empty(Directory.GetFiles(_dir.File("out")));
    }

    [Fact]
    public void Local_directory_model_files_are_the_inputs_and_are_copied()
    {
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, _dir.File("local"));
        File.WriteAllText(_dir.File("local/notes.md"), "not a model file");
        var ctx = Context(new ModelSection { Source = "local" }, Output("out"));
        Assert.Equal(
            new[] { "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json" },
            new DownloadStage().ExternalInputs(ctx).Select(Path.GetFileName).ToArray());
        new DownloadStage().Execute(ctx);
        Assert.Equal(File.ReadAllBytes(_dir.File("local/model.safetensors")), File.ReadAllBytes(_dir.File("out/model.safetensors")));
        Assert.False(File.Exists(_dir.File("out/notes.md")));
    }

    [Fact]
    public void Missing_local_directory_is_a_user_error()
    {
        var e = Assert.Throws<PipelineUserException>(() => new DownloadStage().ExternalInputs(Context(new ModelSection { Source = "models/none" }, "")));
        Assert.Equal($"model.source: \"models/none\" is neither 'scratch', an hf:// reference, nor an existing directory ({_dir.File("models/none")}).", e.Message);
    }

    private static LoopbackHub.Repo RepoFrom(string dir, string commit) => new("acme/tiny", commit,
        Directory.GetFiles(dir).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes), new HashSet<string> { "model.safetensors" }, null);

    [Fact]
    public void Hub_model_is_fingerprinted_by_commit_and_hashes_and_downloaded()
    {
        using var hub = new LoopbackHub();
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, _dir.File("src"));
        hub.Add(RepoFrom(_dir.File("src"), CommitA));
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint };
        var stage = new DownloadStage(k => env.GetValueOrDefault(k));
        var inputs = stage.ExternalInputs(Context(new ModelSection { Source = "hf://acme/tiny" }, ""));
        var manifest = File.ReadAllText(Assert.Single(inputs));
        Assert.Contains($"\"commit\": \"{CommitA}\"", manifest);
        Assert.Contains($"\"sha256\": \"{LoopbackHub.Sha256(File.ReadAllBytes(_dir.File("src/model.safetensors")))}\"", manifest);

        var result = stage.Execute(Context(new ModelSection { Source = "hf://acme/tiny" }, Output("out")));
        Assert.Contains($"resolved main → {CommitA}", result.Notes);
        Assert.Equal(File.ReadAllBytes(_dir.File("src/model.safetensors")), File.ReadAllBytes(_dir.File("out/model.safetensors")));
    }

    [Fact]
    public void A_moving_branch_changes_the_fingerprint_input()
    {
        using var hub = new LoopbackHub();
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1, Seed = 1 }, _dir.File("v1"));
        ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1, Seed = 2 }, _dir.File("v2"));
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint };
        var stage = new DownloadStage(k => env.GetValueOrDefault(k));
        var model = new ModelSection { Source = "hf://acme/tiny@main" };
        hub.Add(RepoFrom(_dir.File("v1"), CommitA));
        var first = File.ReadAllText(stage.ExternalInputs(Context(model, ""))[0]);
        hub.Add(RepoFrom(_dir.File("v2"), CommitB)); // main now points at another commit
        var second = File.ReadAllText(stage.ExternalInputs(Context(model, ""))[0]);
        Assert.NotEqual(first, second);
        Assert.Contains(CommitB, second);
    }

    [Fact]
    public void Hub_errors_become_user_errors()
    {
        using var hub = new LoopbackHub();
        var env = new Dictionary<string, string> { ["HF_ENDPOINT"] = hub.Endpoint };
        var e = Assert.Throws<PipelineUserException>(() => new DownloadStage(k => env.GetValueOrDefault(k)).ExternalInputs(Context(new ModelSection { Source = "hf://acme/missing" }, "")));
        Assert.StartsWith("hf://acme/missing@main: 401 — the repository does not exist or needs authentication", e.Message);
    }
}
