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
        // Phi3Config defaults pad_token_id to 32000, its embedding's padding_idx: a small vocabulary needs its own.
        Assert.Equal(config.PadTokenId, (int?)JsonNode.Parse(File.ReadAllText(_dir.File("config.json")))!["pad_token_id"]);
        Assert.NotNull(config.PadTokenId);
        Assert.True(config.PadTokenId < config.VocabSize);
        Assert.Equal("blk.0.attn_qkv.weight", GgufExporter.TensorName("model.layers.0.self_attn.qkv_proj.weight", ModelArchitecture.Phi3));
        Assert.Equal("blk.0.ffn_up.weight", GgufExporter.TensorName("model.layers.0.mlp.gate_up_proj.weight", ModelArchitecture.Phi3));
    }

    /// <summary>Reads a phi3 model's weights as a llama model's: q/k/v and gate/up are row blocks of the fused tensors.</summary>
    private sealed class SplitFusedWeights(CausalLM phi3) : IWeightSource
    {
        public bool Contains(string name) => true;

        public void Read(string name, ReadOnlySpan<int> shape, Span<float> destination)
        {
            var spec = phi3.Spec;
            int c = spec.HiddenSize, q = spec.QDim, kv = spec.KvDim, inter = spec.IntermediateSize;
            (string Fused, int Row)? part = name switch
            {
                _ when name.EndsWith(".q_proj.weight", StringComparison.Ordinal) => (name.Replace(".q_proj.", ".qkv_proj.", StringComparison.Ordinal), 0),
                _ when name.EndsWith(".k_proj.weight", StringComparison.Ordinal) => (name.Replace(".k_proj.", ".qkv_proj.", StringComparison.Ordinal), q),
                _ when name.EndsWith(".v_proj.weight", StringComparison.Ordinal) => (name.Replace(".v_proj.", ".qkv_proj.", StringComparison.Ordinal), q + kv),
                _ when name.EndsWith(".gate_proj.weight", StringComparison.Ordinal) => (name.Replace(".gate_proj.", ".gate_up_proj.", StringComparison.Ordinal), 0),
                _ when name.EndsWith(".up_proj.weight", StringComparison.Ordinal) => (name.Replace(".up_proj.", ".gate_up_proj.", StringComparison.Ordinal), inter),
                _ => null,
            };
            if (part is { } p)
                phi3.ReadParameter(p.Fused).AsSpan(p.Row * c, shape[0] * c).CopyTo(destination);
            else
                phi3.ReadParameter(name).CopyTo(destination);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Fused_lora_is_pefts_one_A_and_one_B_spanning_the_parts(bool perLinear)
    {
        // PEFT on qkv_proj: y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ with B [q + 2kv, r]. The llama model with the same weights split and
        // LoRAs (A, B_q), (A, B_k), (A, B_v) computes the same function: equal losses, dA = Σ dA_part, dB = [dB_q; dB_k; dB_v].
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4 };
        using var phi3 = TinyModels.Create(TinyModels.Spec("phi3", false), setup);
        phi3.PerLinearLora = perLinear;
        TinyModels.RandomizeLoraB(phi3, 9);
        using var llama = CausalLM.Create(TinyModels.Spec("llama", false), new CpuBackend(2), setup, new SplitFusedWeights(phi3));
        var spec = phi3.Spec;
        int q = spec.QDim, kv = spec.KvDim, inter = spec.IntermediateSize, r = 2;
        var parts = new (string Fused, (string Name, int Row, int Rows)[] Parts)[]
        {
            ("self_attn.qkv_proj", [("self_attn.q_proj", 0, q), ("self_attn.k_proj", q, kv), ("self_attn.v_proj", q + kv, kv)]),
            ("mlp.gate_up_proj", [("mlp.gate_proj", 0, inter), ("mlp.up_proj", inter, inter)]),
            ("mlp.down_proj", [("mlp.down_proj", 0, spec.HiddenSize)]),
            ("self_attn.o_proj", [("self_attn.o_proj", 0, spec.HiddenSize)]),
        };
        for (int l = 0; l < spec.NumLayers; l++)
            foreach (var (fused, split) in parts)
            {
                var a = phi3.ReadParameter($"model.layers.{l}.{fused}.lora_A.weight");
                var b = phi3.ReadParameter($"model.layers.{l}.{fused}.lora_B.weight");
                foreach (var (name, row, rows) in split)
                {
                    llama.WriteParameter($"model.layers.{l}.{name}.lora_A.weight", a);
                    llama.WriteParameter($"model.layers.{l}.{name}.lora_B.weight", b.AsSpan(row * r, rows * r));
                }
            }
        var batch = TinyModels.PackedBatch();
        phi3.ZeroGrad();
        llama.ZeroGrad();
        double phi3Loss = phi3.ForwardBackward(batch).SumLoss, llamaLoss = llama.ForwardBackward(batch).SumLoss;
        Assert.Equal(llamaLoss, phi3Loss, tolerance: 1e-5);
        float[] Grad(CausalLM m, string name) => TinyModels.Grad(m, m.TrainableParameters.Single(p => p.HfName == name));
        for (int l = 0; l < spec.NumLayers; l++)
            foreach (var (fused, split) in parts)
            {
                var dA = Grad(phi3, $"model.layers.{l}.{fused}.lora_A.weight");
                var dB = Grad(phi3, $"model.layers.{l}.{fused}.lora_B.weight");
                var sumA = new float[dA.Length];
                foreach (var (name, row, rows) in split)
                {
                    var partA = Grad(llama, $"model.layers.{l}.{name}.lora_A.weight");
                    for (int i = 0; i < sumA.Length; i++) sumA[i] += partA[i];
                    var partB = Grad(llama, $"model.layers.{l}.{name}.lora_B.weight");
                    for (int i = 0; i < partB.Length; i++) Assert.Equal(partB[i], dB[row * r + i], tolerance: 1e-5);
                }
                for (int i = 0; i < sumA.Length; i++) Assert.Equal(sumA[i], dA[i], tolerance: 1e-5);
            }
    }

    [Fact]
    public void A_trained_phi3_adapter_is_saved_with_pefts_fused_names_and_reloads()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Phi3, NumHiddenLayers = 1 }, _dir.File("base"));
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4 };
        float[] logits;
        using (var model = CausalLM.Load(_dir.File("base"), new CpuBackend(1), setup))
        {
            TinyModels.RandomizeLoraB(model, 2);
            model.SaveAdapter(_dir.File("adapter"));
            logits = model.ForwardLogits(TinyModels.PackedBatch());
            model.SaveModel(_dir.File("merged"));
        }
        var config = JsonNode.Parse(File.ReadAllText(_dir.File("adapter/adapter_config.json")))!;
        Assert.Equal(["down_proj", "gate_up_proj", "o_proj", "qkv_proj"], config["target_modules"]!.AsArray().Select(t => (string)t!));
        using (var reader = SafetensorsReader.Open(_dir.File("adapter/adapter_model.safetensors")))
        {
            Assert.Equal([2L, 64], reader.Tensors["base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"].Shape);
            Assert.Equal([128L, 2], reader.Tensors["base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight"].Shape);
            Assert.Equal([256L, 2], reader.Tensors["base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"].Shape);
        }
        using var reloaded = CausalLM.Load(_dir.File("base"), new CpuBackend(1), TrainingSetup.Inference, _dir.File("adapter"));
        using var merged = CausalLM.Load(_dir.File("merged"), new CpuBackend(1), TrainingSetup.Inference);
        var again = reloaded.ForwardLogits(TinyModels.PackedBatch());
        var folded = merged.ForwardLogits(TinyModels.PackedBatch());
        for (int i = 0; i < logits.Length; i++)
        {
            Assert.Equal(logits[i], again[i], tolerance: 1e-5);
            Assert.Equal(logits[i], folded[i], tolerance: 1e-4);
        }
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
