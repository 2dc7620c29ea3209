using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// LoRA on the experts of a mixture-of-experts model, as PEFT (on transformers 5) builds it from lora_target's
/// gate_proj/up_proj/down_proj (mixtral: w1/w3/w2): ParamWrapper on gate_up_proj (rank 2r, alpha 2α) and down_proj,
/// lora_A [R·E, in], lora_B [out, R·E], ΔW_e[o, i] = s·Σ_ρ B[o, ρ·E + e]·A[e·R + ρ, i]. Gradients by finite
/// differences, the adapter's file layout and config, reload, and merge against that formula by hand.
/// </summary>
public sealed class MoeLoraTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static readonly string[] QwenExperts = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"];
    private static readonly string[] MixtralExperts = ["q_proj", "v_proj", "w1", "w3", "w2"];

    [Theory]
    [InlineData("qwen3_moe", false, false)]
    [InlineData("qwen3_moe", true, true)]
    [InlineData("mixtral", false, true)]
    public void Lora_on_the_experts_matches_finite_differences(string arch, bool checkpointing, bool aux)
    {
        var spec = MoeTests.Spec(arch, normTopK: arch == "mixtral", auxCoef: 0.5, outputRouterLogits: aux);
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 3, LoraTarget = arch == "mixtral" ? MixtralExperts : QwenExperts, GradientCheckpointing = checkpointing };
        using var model = TinyModels.Create(spec, setup);
        TinyModels.RandomizeLoraB(model, 5);
        // Per layer: q and v (A, B each), the experts' gate_up (inner wrapper) and down (outer wrapper).
        var names = model.TrainableParameters.Select(p => p.HfName).Where(n => n.StartsWith("model.layers.0.", StringComparison.Ordinal)).ToList();
        Assert.Equal(["model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight",
            "model.layers.0.self_attn.v_proj.lora_A.weight", "model.layers.0.self_attn.v_proj.lora_B.weight",
            "model.layers.0.mlp.experts.base_layer.lora_A.weight", "model.layers.0.mlp.experts.base_layer.lora_B.weight",
            "model.layers.0.mlp.experts.lora_A.weight", "model.layers.0.mlp.experts.lora_B.weight"], names);
        double err = MoeTests.CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 6, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void Lora_on_the_experts_alone_trains_every_layer()
    {
        // No attention LoRA: the layers' backward must still run down to layer 0 for its experts' adapters.
        using var model = TinyModels.Create(MoeTests.Spec("qwen3_moe"), new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraTarget = ["down_proj"] });
        TinyModels.RandomizeLoraB(model, 4);
        Assert.Equal(["model.layers.0.mlp.experts.lora_A.weight", "model.layers.0.mlp.experts.lora_B.weight",
            "model.layers.1.mlp.experts.lora_A.weight", "model.layers.1.mlp.experts.lora_B.weight"], model.TrainableParameters.Select(p => p.HfName));
        double err = MoeTests.CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 8, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
        Assert.Contains(TinyModels.Grad(model, model.TrainableParameters[0]), g => g != 0);
    }

    [Fact]
    public void Lora_target_all_on_a_moe_model_with_a_dense_layer_reaches_the_experts_and_not_the_dense_mlp_as_peft_does()
    {
        // LLaMA-Factory resolves all into the nn.Linear names (q, k, v, o and the dense layer's gate/up/down); PEFT on
        // transformers 5 turns gate/up/down into the experts' target_parameters and drops them from target_modules.
        var spec = MoeTests.Spec("qwen3_moe", mlpOnly: [1]);
        using var model = TinyModels.Create(spec, new TrainingSetup { LoraRank = 2, LoraAlpha = 4 });
        var names = model.TrainableParameters.Select(p => p.HfName).ToList();
        Assert.Contains("model.layers.0.mlp.experts.base_layer.lora_A.weight", names);
        Assert.DoesNotContain(names, n => n.StartsWith("model.layers.1.mlp.", StringComparison.Ordinal));
        // q, k, v, o of both layers (A and B) and the sparse layer 0's two expert wrappers.
        Assert.Equal(2 * 4 * 2 + 4, names.Count(n => n.Contains("lora_", StringComparison.Ordinal)));
        // Without a dense layer, all is the attention projections (what LLaMA-Factory lists there).
        using var sparse = TinyModels.Create(MoeTests.Spec("qwen3_moe"), new TrainingSetup { LoraRank = 2, LoraAlpha = 4 });
        Assert.Equal(2 * 4 * 2, sparse.TrainableParameters.Count);
    }

    [Fact]
    public void Expert_lora_without_up_or_with_dropout_or_patterns_is_a_located_problem()
    {
        var spec = MoeTests.Spec("mixtral");
        var p = Assert.Single(TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["q_proj", "w1", "w2"] }));
        Assert.Equal(("lora_target", 1, "w1", "reaches the experts' fused gate_up_proj of this mixtral model, which needs both w1 and w3"), (p.Option, p.Index, p.Value, p.Problem));
        Assert.Equal("name both w1 and w3 (PEFT trains them as one gate_up_proj), or neither", p.Expected);
        var d = Assert.Single(TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["w2"], LoraDropout = 0.05 }));
        Assert.Equal(("lora_target", 0, "reaches the experts of this mixtral model, which PEFT's ParamWrapper trains without dropout (lora_dropout is 0.05)"), (d.Option, d.Index, d.Problem));
        Assert.Equal("set lora_dropout: 0, or leave the expert projections out of lora_target", d.Expected);
        var r = Assert.Single(TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["w2"], LoraRankPattern = [new("q_proj", 4)] }));
        Assert.StartsWith("reaches the experts of this mixtral model, whose ranks FineTune sets as PEFT's transformers 5 conversion does", r.Problem);
        // gate_proj is qwen3_moe's name, not mixtral's.
        var n = Assert.Single(TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["gate_proj"] }));
        Assert.Equal("is not an attention projection, expert projection or the router of this mixtral model", n.Problem);
        Assert.Equal("expected all, or some of q_proj, k_proj, v_proj, o_proj, w1, w3, w2, gate", n.Expected);
        var e = Assert.Throws<ArgumentException>(() => TinyModels.Create(spec, new TrainingSetup { LoraTarget = ["w2"], LoraDropout = 0.05 }));
        Assert.StartsWith("lora_target 'w2' reaches the experts of this mixtral model, which PEFT's ParamWrapper trains without dropout", e.Message);
    }

    [Theory]
    [InlineData("qwen3_moe")]
    [InlineData("mixtral")]
    public void An_expert_adapter_saves_pefts_layout_reloads_byte_for_byte_and_merges_to_w_plus_delta_by_hand(string arch)
    {
        var family = ModelArchitecture.Find(arch)!;
        var x = family.Experts!;
        string dir = MoeAdapterFiles.Scratch(_dir, family), adapter = _dir.File("adapter"), again = _dir.File("again"), merged = _dir.File("merged"), fileMerged = _dir.File("file-merged");
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 3, LoraTarget = arch == "mixtral" ? MixtralExperts : QwenExperts };
        float[] logits = MoeAdapterFiles.SaveAdapterAndMerged(dir, setup, adapter, merged);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        Assert.Equal(["q_proj", "v_proj"], config["target_modules"]!.AsArray().Select(t => (string)t!));
        Assert.Equal(["down_proj", "gate_up_proj"], config["target_parameters"]!.AsArray().Select(t => (string)t!));
        Assert.Equal("""{".*\\.gate_up_proj":4}""", config["rank_pattern"]!.ToJsonString());
        Assert.Equal("""{".*\\.gate_up_proj":6}""", config["alpha_pattern"]!.ToJsonString());

        // PEFT's shapes: 8 experts, gate_up rank R = 4 over hidden 32 and 2·24 rows; down rank 2 over 24 → 32.
        using var file = SafetensorsReader.Open(Path.Combine(adapter, "adapter_model.safetensors"));
        const string pre = "base_model.model.model.layers.1.mlp.experts";
        Assert.Equal([32L, 32], file.Get($"{pre}.base_layer.lora_A.weight").Shape);
        Assert.Equal([48L, 32], file.Get($"{pre}.base_layer.lora_B.weight").Shape);
        Assert.Equal([16L, 24], file.Get($"{pre}.lora_A.weight").Shape);
        Assert.Equal([32L, 16], file.Get($"{pre}.lora_B.weight").Shape);

        // Reload: the same logits, and saved again the same bytes.
        MoeAdapterFiles.AssertReloadsByteForByte(dir, adapter, again, logits);

        // Merge: expert 5's up projection of layer 1 is W + s·Σ_ρ B[24 + o, ρ·8 + 5]·A[5·4 + ρ, i] (up = part 1), s = 6/4.
        LoraMerge.Merge(dir, adapter, fileMerged);
        using var baseReader = SafetensorsReader.Open(dir);
        string mlp = family.Names.Mlp;
        string upName = $"model.layers.1.{mlp}.experts.5.{x.Up}.weight", downName = $"model.layers.1.{mlp}.experts.3.{x.Down}.weight";
        float[] a = file.ReadAsFloat32($"{pre}.base_layer.lora_A.weight"), b = file.ReadAsFloat32($"{pre}.base_layer.lora_B.weight");
        float[] w = baseReader.ReadAsFloat32(upName);
        var expected = new float[w.Length];
        for (int o = 0; o < 24; o++)
            for (int i = 0; i < 32; i++)
            {
                double d = 0;
                for (int r = 0; r < 4; r++) d += (double)b[(24 + o) * 32 + r * 8 + 5] * a[(5 * 4 + r) * 32 + i];
                expected[o * 32 + i] = (float)(w[o * 32 + i] + 1.5 * d);
            }
        float[] da = file.ReadAsFloat32($"{pre}.lora_A.weight"), db = file.ReadAsFloat32($"{pre}.lora_B.weight");
        float[] wd = baseReader.ReadAsFloat32(downName);
        var expectedDown = new float[wd.Length];
        for (int o = 0; o < 32; o++)
            for (int i = 0; i < 24; i++)
            {
                double d = 0;
                for (int r = 0; r < 2; r++) d += (double)db[o * 16 + r * 8 + 3] * da[(3 * 2 + r) * 24 + i];
                expectedDown[o * 24 + i] = (float)(wd[o * 24 + i] + 1.5 * d);
            }
        foreach (string m in new[] { merged, fileMerged })
        {
            using var reader = SafetensorsReader.Open(m);
            var up = reader.ReadAsFloat32(upName);
            var down = reader.ReadAsFloat32(downName);
            for (int i = 0; i < up.Length; i++) Assert.Equal(expected[i], up[i], 1e-6f);
            for (int i = 0; i < down.Length; i++) Assert.Equal(expectedDown[i], down[i], 1e-6f);
            Assert.NotEqual(w, up);
        }
        // The merged model computes what base + adapter computed.
        using var folded = CausalLM.Load(fileMerged, new CpuBackend(1), TrainingSetup.Inference);
        var mergedLogits = folded.ForwardLogits(TinyModels.PackedBatch());
        for (int i = 0; i < logits.Length; i++) Assert.Equal(logits[i], mergedLogits[i], 1e-4f);
    }

    [Fact]
    public void An_adapter_config_with_other_target_parameters_or_another_gate_up_rank_is_a_located_error()
    {
        string dir = _dir.File("bad");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "adapter_config.json");
        File.WriteAllText(path, """{"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"], "target_parameters": ["embed_tokens.weight"]}""");
        var e = Assert.Throws<ModelFormatException>(() => AdapterConfig.Read(dir));
        Assert.Equal($"{path}: target_parameters names 'embed_tokens.weight': FineTune applies LoRA on the experts' gate_up_proj and down_proj and the router's gate.weight of a mixture-of-experts model only.", e.Message);
        // PEFT's own target_parameters gate_up_proj without the conversion's rank pattern has rank r, not 2r.
        File.WriteAllText(path, """{"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"], "target_parameters": ["gate_up_proj"]}""");
        var config = AdapterConfig.Read(dir);
        var spec = MoeTests.Spec("qwen3_moe");
        var a = Assert.Throws<ModelFormatException>(() => config.Apply(TrainingSetup.Inference, TrainableModules.LoraTargetsOf(spec), TrainableModules.ExpertTargets(spec)));
        Assert.StartsWith($"{path}: target_parameters has gate_up_proj of rank 2 and alpha 3; FineTune applies it with rank 2·r = 4 and alpha 2·lora_alpha = 6", a.Message);
        // With the conversion's patterns, it maps back to gate_proj + up_proj and drops the patterns.
        File.WriteAllText(path, """{"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"], "target_parameters": ["gate_up_proj", "down_proj"],""" +
            """ "rank_pattern": {".*\\.gate_up_proj": 4}, "alpha_pattern": {".*\\.gate_up_proj": 6}}""");
        var setup = AdapterConfig.Read(dir).Apply(TrainingSetup.Inference, TrainableModules.LoraTargetsOf(spec), TrainableModules.ExpertTargets(spec));
        Assert.Equal(["q_proj", "gate_proj", "up_proj", "down_proj"], setup.LoraTarget);
        Assert.Empty(setup.LoraRankPattern);
        Assert.Empty(setup.LoraAlphaPattern);
    }
}
