using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>The architecture table is the one description of each family: its consumers agree with it and with each other.</summary>
public sealed class ArchitectureTableTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static ModelConfig Minimal(string modelType) => ModelConfig.FromJson(JsonNode.Parse(
        $$"""{"model_type": "{{modelType}}", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}""")!.AsObject(), "config.json");

    [Theory]
    // model_type, class, head_dim default, vocab default, max positions default: transformers' config class defaults.
    [InlineData("llama", "LlamaForCausalLM", 16, 32000, 2048)]
    [InlineData("mistral", "MistralForCausalLM", 16, 32000, 131072)]
    [InlineData("qwen2", "Qwen2ForCausalLM", 16, 151936, 32768)]
    [InlineData("qwen3", "Qwen3ForCausalLM", 128, 151936, 32768)]
    [InlineData("phi3", "Phi3ForCausalLM", 16, 32064, 4096)]
    [InlineData("qwen3_moe", "Qwen3MoeForCausalLM", 16, 151936, 32768)]
    [InlineData("mixtral", "MixtralForCausalLM", 16, 32000, 131072)]
    public void Config_defaults_come_from_the_family(string modelType, string className, int headDim, int vocab, int maxPositions)
    {
        var c = Minimal(modelType);
        Assert.Same(ModelArchitecture.Find(modelType), c.Architecture);
        Assert.Equal((className, headDim, vocab, maxPositions), (c.ArchitectureClassName, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings));
    }

    [Fact]
    public void Every_family_is_found_by_its_model_type_in_any_case()
    {
        Assert.Equal(["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text", "qwen3_moe", "mixtral"], ModelArchitecture.All.Select(a => a.ModelType));
        foreach (var a in ModelArchitecture.All)
            Assert.Same(a, ModelArchitecture.Find(a.ModelType.ToUpperInvariant()));
        Assert.Null(ModelArchitecture.Find("gpt_neox"));
        Assert.Equal("llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, qwen3_moe and mixtral", ModelArchitecture.SupportedList);
    }

    [Theory]
    [InlineData("llama", "llama")]
    [InlineData("mistral", "llama")]
    [InlineData("qwen2", "qwen2")]
    [InlineData("qwen3", "qwen3")]
    [InlineData("phi3", "phi3")]
    [InlineData("qwen3_moe", "qwen3moe")]
    [InlineData("mixtral", "llama")]
    public void The_scratch_file_holds_exactly_the_parameters_the_engine_names(string modelType, string ggufArchitecture)
    {
        var config = ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Find(modelType)!, NumHiddenLayers = 1, TieWordEmbeddings = false }, _dir.File(modelType));
        var spec = TransformerSpec.FromConfig(config);
        using var reader = SafetensorsReader.Open(_dir.File(modelType));
        // A stacked expert projection of the engine is one tensor per expert in the files (the hub layout).
        var expected = TrainableModules.ParameterNames(spec).SelectMany(p => ExpertBlock.IsStack(config.Architecture, p)
            ? Enumerable.Range(0, config.Moe!.NumExperts).Select(e => ExpertBlock.ExpertKey(p, e)) : [p]);
        Assert.Equal(expected.Order(StringComparer.Ordinal), reader.Tensors.Keys.Order(StringComparer.Ordinal));
        // Every tensor has a llama.cpp name (experts: the stacks MoeTests checks), and the exporter writes the family's GGUF architecture.
        Assert.All(reader.Tensors.Keys.Where(n => !n.Contains(".experts.", StringComparison.Ordinal)), n => Assert.NotNull(GgufExporter.TensorName(n, config.Architecture)));
        Assert.Equal(ggufArchitecture, GgufExporter.ArchitectureName(config.Architecture));
        // The model loads onto the engine from its own files.
        using var model = CausalLM.Load(_dir.File(modelType), new CpuBackend(1), new TrainingSetup { FinetuningType = FinetuningType.Lora, LoraTarget = ["all"] });
        Assert.Equal(modelType, model.Spec.Architecture);
    }

    [Fact]
    public void A_mistral_scratch_model_is_written_as_transformers_writes_mistral()
    {
        var c = ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Mistral, NumHiddenLayers = 1 }, _dir.Path);
        var json = JsonNode.Parse(File.ReadAllText(_dir.File("config.json")))!.AsObject();
        Assert.Equal("mistral", (string?)json["model_type"]);
        Assert.Equal("MistralForCausalLM", (string?)json["architectures"]![0]);
        // MistralConfig has neither attention_bias nor mlp_bias.
        Assert.False(json.ContainsKey("attention_bias"));
        Assert.False(json.ContainsKey("mlp_bias"));
        Assert.False(c.AttentionBias);
    }

    [Fact]
    public void Lora_targets_are_peft_names_of_the_family()
    {
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], ModelArchitecture.Qwen3.LoraTargets);
        Assert.Equal(TrainableModules.LinearModules, ModelArchitecture.Llama.LoraTargets);
    }
}
