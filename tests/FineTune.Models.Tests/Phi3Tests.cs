using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>Phi-3 / Phi-4 in the architecture table: config, longrope, fused weights in files, merge and GGUF; the engine's gap stated.</summary>
public sealed class Phi3Tests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static JsonObject LongRopeConfig(string shortFactor = "[1.0, 2.0]") => JsonNode.Parse($$$"""
        {"model_type": "phi3", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "max_position_embeddings": 16, "original_max_position_embeddings": 4, "rope_theta": 10000.0,
         "rope_scaling": {"type": "su", "short_factor": {{{shortFactor}}}, "long_factor": [3.0, 4.0]}}
        """)!.AsObject();

    [Fact]
    public void Phi3_config_takes_phi3_defaults()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "phi3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}""")!.AsObject(), "config.json");
        Assert.Equal(("Phi3ForCausalLM", 16, 32064, 4096, 1e-5, false), (c.ArchitectureClassName, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings, c.RmsNormEps, c.AttentionBias));
        Assert.Equal(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], c.Architecture.LoraTargets);
    }

    [Fact]
    public void Longrope_uses_short_factors_within_the_original_context_and_long_ones_beyond()
    {
        // head_dim 4: base^(2i/d) = 1, 100. factor = 16 / 4 = 4, attention factor √(1 + ln 4 / ln 4) = √2.
        var spec = TransformerSpec.FromConfig(ModelConfig.FromJson(LongRopeConfig(), "config.json"));
        var (shortInv, shortScale) = RopeTables.InverseFrequencies(spec, 4);
        var (longInv, longScale) = RopeTables.InverseFrequencies(spec, 5);
        Assert.Equal(new[] { 1f, 1f / 200f }, shortInv);
        Assert.Equal(new[] { 1f / 3f, 1f / 400f }, longInv);
        Assert.Equal((float)Math.Sqrt(2), shortScale);
        Assert.Equal(shortScale, longScale);
        Assert.Equal(4, spec.RopeScaling!.OriginalMaxPositionEmbeddings);
    }

    [Fact]
    public void Longrope_factor_lists_of_the_wrong_length_are_refused_with_the_key()
    {
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromJson(LongRopeConfig("[1.0]"), "config.json"));
        Assert.Equal("config.json: \"rope_scaling.short_factor\" must list head_dim / 2 = 2 numbers for longrope, got 1.", e.Message);
    }

    [Fact]
    public void Saved_longrope_config_reads_back_the_same_tables()
    {
        var c = ModelConfig.FromJson(LongRopeConfig(), "config.json");
        c.Save(_dir.File("config.json"));
        var back = ModelConfig.Load(_dir.File("config.json"));
        var a = TransformerSpec.FromConfig(c);
        var b = TransformerSpec.FromConfig(back);
        Assert.Equal(RopeTables.InverseFrequencies(a, 5).InvFreq, RopeTables.InverseFrequencies(b, 5).InvFreq);
        Assert.Equal(RopeTables.InverseFrequencies(a, 3).AttentionScaling, RopeTables.InverseFrequencies(b, 3).AttentionScaling);
        // No factor was given, so none is written: a factor of 1 would change the attention factor.
        Assert.False(JsonNode.Parse(File.ReadAllText(_dir.File("config.json")))!["rope_scaling"]!.AsObject().ContainsKey("factor"));
    }

    [Fact]
    public void A_phi3_scratch_model_stores_fused_qkv_and_gate_up_as_hf_does()
    {
        var config = ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Phi3, NumHiddenLayers = 1, TieWordEmbeddings = false }, _dir.Path);
        using var reader = SafetensorsReader.Open(_dir.Path);
        // hidden 64, 4 heads and 2 kv heads of 16: q 64 + k 32 + v 32 rows; intermediate 128: gate and up 256 rows.
        Assert.Equal([128L, 64], reader.Tensors["model.layers.0.self_attn.qkv_proj.weight"].Shape);
        Assert.Equal([256L, 64], reader.Tensors["model.layers.0.mlp.gate_up_proj.weight"].Shape);
        Assert.Equal(TrainableModules.ParameterNames(TransformerSpec.FromConfig(config)).Order(StringComparer.Ordinal), reader.Tensors.Keys.Order(StringComparer.Ordinal));
        Assert.Equal("blk.0.attn_qkv.weight", GgufExporter.TensorName("model.layers.0.self_attn.qkv_proj.weight", ModelArchitecture.Phi3));
        Assert.Equal("blk.0.ffn_up.weight", GgufExporter.TensorName("model.layers.0.mlp.gate_up_proj.weight", ModelArchitecture.Phi3));
    }

    [Fact]
    public void The_engine_refuses_phi3_with_a_located_message()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Phi3, NumHiddenLayers = 1 }, _dir.Path);
        var e = Assert.Throws<ModelFormatException>(() => CausalLM.Load(_dir.Path, new CpuBackend(1), new TrainingSetup()));
        Assert.Equal($"{_dir.File("config.json")}: model_type \"phi3\": phi3's fused qkv_proj / gate_up_proj are not run by FineTune's engine yet " +
            "(loading, merge, GGUF export and scratch generation work); train or chat with one of llama, qwen2, qwen3, mistral.", e.Message);
    }

    [Fact]
    public void A_fused_qkv_adapter_merges_as_peft_one_B_spanning_q_k_and_v()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Phi3, NumHiddenLayers = 1, HiddenSize = 8, IntermediateSize = 8,
            NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 4 }, _dir.File("base"));
        const string qkv = "model.layers.0.self_attn.qkv_proj";
        // PEFT's LoRA on the fused module: one A [r, 8] and one B [q + 2·kv = 16, r]; r = 1, alpha = 2: s = 2.
        var a = Enumerable.Range(0, 8).Select(i => (float)(i - 3)).ToArray();
        var b = Enumerable.Range(0, 16).Select(i => 0.25f * (i % 5)).ToArray();
        var adapter = Directory.CreateDirectory(_dir.File("adapter")).FullName;
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"),
            """{"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["qkv_proj"], "fan_in_fan_out": false}""");
        var w = new SafetensorsWriter();
        w.Add($"base_model.model.{qkv}.lora_A.weight", a, [1, 8]);
        w.Add($"base_model.model.{qkv}.lora_B.weight", b, [16, 1]);
        w.Save(Path.Combine(adapter, "adapter_model.safetensors"));

        LoraMerge.Merge(_dir.File("base"), adapter, _dir.File("out"));
        using var before = SafetensorsReader.Open(_dir.File("base"));
        using var after = SafetensorsReader.Open(_dir.File("out"));
        var w0 = before.ReadAsFloat32(qkv + ".weight");
        var w1 = after.ReadAsFloat32(qkv + ".weight");
        for (int row = 0; row < 16; row++)
            for (int col = 0; col < 8; col++)
                Assert.Equal(w0[row * 8 + col] + 2f * b[row] * a[col], w1[row * 8 + col], 6);
    }
}
