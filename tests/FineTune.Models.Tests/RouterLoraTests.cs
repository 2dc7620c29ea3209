using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// LoRA on the router of a mixture-of-experts model (lora_target gate), as PEFT builds it on transformers 5: the router
/// is a TopKRouter with a bare weight, so PEFT's conversion makes gate target_parameters gate.weight, a ParamWrapper
/// on {layer}.mlp.gate (mixtral's block named mlp) with lora_A [r, hidden], lora_B [E, r], W' = W + s·B·A. Gradients by
/// finite differences, the adapter's names and config, reload (also of transformers 4's nn.Linear adapter), and merge.
/// </summary>
public sealed class RouterLoraTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Theory]
    [InlineData("qwen3_moe", false, new[] { "q_proj", "gate" })]
    [InlineData("mixtral", true, new[] { "v_proj", "gate", "w2" })]
    [InlineData("qwen3_moe", true, new[] { "gate" })]
    public void Lora_on_the_router_matches_finite_differences(string arch, bool checkpointing, string[] targets)
    {
        var spec = MoeTests.Spec(arch, normTopK: arch == "mixtral", auxCoef: 0.5, outputRouterLogits: true);
        using var model = TinyModels.Create(spec, new TrainingSetup { LoraRank = 2, LoraAlpha = 3, LoraTarget = targets, GradientCheckpointing = checkpointing });
        TinyModels.RandomizeLoraB(model, 5);
        var names = model.TrainableParameters.Select(p => p.HfName).Where(n => n.Contains(".mlp.gate.", StringComparison.Ordinal)).ToList();
        Assert.Equal(["model.layers.0.mlp.gate.lora_A.weight", "model.layers.0.mlp.gate.lora_B.weight",
            "model.layers.1.mlp.gate.lora_A.weight", "model.layers.1.mlp.gate.lora_B.weight"], names);
        Assert.Equal([4, 2], model.TrainableParameters.First(p => p.HfName.EndsWith("gate.lora_B.weight", StringComparison.Ordinal)).Shape);
        double err = MoeTests.CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 6, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void The_router_lora_changes_the_routing_it_is_trained_for()
    {
        // With B non-zero the router's logits move, so its probabilities differ from the frozen router's.
        var spec = MoeTests.Spec("qwen3_moe");
        using var model = TinyModels.Create(spec, new TrainingSetup { LoraRank = 2, LoraAlpha = 4, LoraTarget = ["gate"] });
        var batch = TinyModels.PackedBatch();
        model.ForwardBackward(batch);
        var (before, _, _) = model.RouterOutputs(0, 14);
        TinyModels.RandomizeLoraB(model, 6);
        model.ZeroGrad();
        model.ForwardBackward(batch);
        var (after, _, _) = model.RouterOutputs(0, 14);
        Assert.True(before.Zip(after).Max(z => Math.Abs(z.First - z.Second)) > 1e-3, "the router LoRA must move the probabilities");
    }

    [Fact]
    public void The_routers_rank_and_alpha_patterns_match_pefts_key_of_the_targeted_parameter()
    {
        // PEFT looks a ParamWrapper's rank up by {module}.gate.weight: a pattern naming that key applies, "gate" alone does not.
        var setup = new TrainingSetup
        {
            LoraRank = 2, LoraAlpha = 4, LoraTarget = ["gate"],
            LoraRankPattern = [new(@"layers\.1\.mlp\.gate\.weight", 3), new("gate", 5)],
        };
        using var model = TinyModels.Create(MoeTests.Spec("qwen3_moe"), setup);
        Assert.Equal([2, 16], model.TrainableParameters.Single(p => p.HfName == "model.layers.0.mlp.gate.lora_A.weight").Shape);
        Assert.Equal([3, 16], model.TrainableParameters.Single(p => p.HfName == "model.layers.1.mlp.gate.lora_A.weight").Shape);
        double err = MoeTests.CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 4, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void Lora_target_gate_with_dropout_is_a_located_problem_all_leaves_the_router_out_and_a_dense_model_has_no_gate()
    {
        var spec = MoeTests.Spec("mixtral");
        var p = Assert.Single(TrainableModules.Check(spec, new TrainingSetup { LoraTarget = ["q_proj", "gate"], LoraDropout = 0.1 }));
        Assert.Equal(("lora_target", 1, "gate"), (p.Option, p.Index, p.Value));
        Assert.Equal("reaches the router of this mixtral model, which PEFT's ParamWrapper (transformers 5's router is no nn.Linear) trains without dropout (lora_dropout is 0.1)", p.Problem);
        Assert.Equal("set lora_dropout: 0, or leave gate out of lora_target", p.Expected);
        var e = Assert.Throws<ArgumentException>(() => TinyModels.Create(spec, new TrainingSetup { LoraTarget = ["gate"], LoraDropout = 0.1 }));
        Assert.StartsWith("lora_target 'gate' reaches the router of this mixtral model", e.Message);
        // LLaMA-Factory's all: modules whose class name holds "Linear"; transformers 5's MixtralTopKRouter does not.
        using (var all = TinyModels.Create(spec, new TrainingSetup { LoraRank = 2 }))
            Assert.DoesNotContain(all.TrainableParameters, t => t.HfName.Contains(".gate.", StringComparison.Ordinal));
        // Where a dense layer makes all reach the experts too, the router stays out.
        using (var withDense = TinyModels.Create(MoeTests.Spec("qwen3_moe", mlpOnly: [1]), new TrainingSetup { LoraRank = 2 }))
        {
            Assert.Contains(withDense.TrainableParameters, t => t.HfName.Contains(".mlp.experts.", StringComparison.Ordinal));
            Assert.DoesNotContain(withDense.TrainableParameters, t => t.HfName.Contains(".gate.", StringComparison.Ordinal));
        }
        var dense = Assert.Single(TrainableModules.Check(TinyModels.Spec("llama", tied: false), new TrainingSetup { LoraTarget = ["gate"] }));
        Assert.Equal("is not a linear module of this llama model", dense.Problem);
    }

    [Theory]
    [InlineData("qwen3_moe")]
    [InlineData("mixtral")]
    public void A_router_adapter_saves_pefts_names_reloads_byte_for_byte_and_merges_to_w_plus_s_b_a(string arch)
    {
        var family = ModelArchitecture.Find(arch)!;
        string dir = MoeAdapterFiles.Scratch(_dir, family), adapter = _dir.File("adapter"), again = _dir.File("again"), merged = _dir.File("merged"), fileMerged = _dir.File("file-merged");
        string down = family.Experts!.Down;
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 3, LoraTarget = ["q_proj", "gate", down] };
        float[] logits = MoeAdapterFiles.SaveAdapterAndMerged(dir, setup, adapter, merged);

        // As PEFT's conversion leaves lora_target gate: not a target module but the parameter gate.weight.
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        Assert.Equal(["q_proj"], config["target_modules"]!.AsArray().Select(t => (string)t!));
        Assert.Equal(["down_proj", "gate.weight"], config["target_parameters"]!.AsArray().Select(t => (string)t!));
        using var file = SafetensorsReader.Open(Path.Combine(adapter, "adapter_model.safetensors"));
        const string pre = "base_model.model.model.layers.1.mlp.gate";
        Assert.Equal([2L, 32], file.Get($"{pre}.lora_A.weight").Shape);
        Assert.Equal([8L, 2], file.Get($"{pre}.lora_B.weight").Shape);

        MoeAdapterFiles.AssertReloadsByteForByte(dir, adapter, again, logits);

        // Merge: the hub's router of layer 1 (mixtral: block_sparse_moe.gate) is W + s·B·A, s = 3/2.
        LoraMerge.Merge(dir, adapter, fileMerged);
        string routerName = $"model.layers.1.{family.Names.Mlp}.gate.weight";
        using var baseReader = SafetensorsReader.Open(dir);
        float[] w = baseReader.ReadAsFloat32(routerName), a = file.ReadAsFloat32($"{pre}.lora_A.weight"), b = file.ReadAsFloat32($"{pre}.lora_B.weight");
        var expected = new float[w.Length];
        for (int e = 0; e < 8; e++)
            for (int i = 0; i < 32; i++)
                expected[e * 32 + i] = (float)(w[e * 32 + i] + 1.5 * ((double)b[e * 2] * a[i] + (double)b[e * 2 + 1] * a[32 + i]));
        foreach (string m in new[] { merged, fileMerged })
        {
            using var reader = SafetensorsReader.Open(m);
            var router = reader.ReadAsFloat32(routerName);
            for (int i = 0; i < router.Length; i++) Assert.Equal(expected[i], router[i], 1e-6f);
            Assert.NotEqual(w, router);
        }
        using var folded = CausalLM.Load(fileMerged, new CpuBackend(1), TrainingSetup.Inference);
        var mergedLogits = folded.ForwardLogits(TinyModels.PackedBatch());
        for (int i = 0; i < logits.Length; i++) Assert.Equal(logits[i], mergedLogits[i], 1e-4f);
    }

    [Fact]
    public void A_transformers_4_router_adapter_of_an_nn_linear_gate_loads_as_the_same_router_lora()
    {
        // PEFT on transformers 4 wrapped mixtral's nn.Linear block_sparse_moe.gate: target_modules gate, the same A and B.
        var family = ModelArchitecture.Mixtral;
        string dir = MoeAdapterFiles.Scratch(_dir, family), adapter = _dir.File("v5"), v4 = _dir.File("v4");
        float[] logits;
        using (var model = CausalLM.Load(dir, new CpuBackend(1), new TrainingSetup { LoraRank = 2, LoraAlpha = 3, LoraTarget = ["q_proj", "gate"] }))
        {
            TinyModels.RandomizeLoraB(model, 4);
            logits = model.ForwardLogits(TinyModels.PackedBatch());
            model.SaveAdapter(adapter);
        }
        Directory.CreateDirectory(v4);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!.AsObject();
        config.Remove("target_parameters");
        config["target_modules"] = new JsonArray("q_proj", "gate");
        File.WriteAllText(Path.Combine(v4, "adapter_config.json"), config.ToJsonString());
        var writer = new SafetensorsWriter();
        using (var reader = SafetensorsReader.Open(Path.Combine(adapter, "adapter_model.safetensors")))
            foreach (var name in reader.Tensors.Keys)
                writer.Add(name.Replace(".mlp.gate.", ".block_sparse_moe.gate.", StringComparison.Ordinal), reader.ReadAsFloat32(name), reader.Tensors[name].Shape.ToArray());
        writer.Save(Path.Combine(v4, "adapter_model.safetensors"));

        using var loaded = CausalLM.Load(dir, new CpuBackend(1), TrainingSetup.Inference, v4);
        Assert.Equal(logits, loaded.ForwardLogits(TinyModels.PackedBatch()));
        // Merged file to file, the v4 module names the hub's tensor directly.
        LoraMerge.Merge(dir, v4, _dir.File("merged"));
        using var folded = CausalLM.Load(_dir.File("merged"), new CpuBackend(1), TrainingSetup.Inference);
        var mergedLogits = folded.ForwardLogits(TinyModels.PackedBatch());
        for (int i = 0; i < logits.Length; i++) Assert.Equal(logits[i], mergedLogits[i], 1e-4f);
    }

    [Fact]
    public void A_model_with_only_router_lora_counts_as_having_its_own_adapter()
    {
        // Adapters served side by side cover linear modules only: a base with its own router LoRA cannot take them.
        using var model = TinyModels.Create(MoeTests.Spec("qwen3_moe"), new TrainingSetup { LoraRank = 2, LoraTarget = ["gate"] });
        Assert.True(model.HasOwnLora);
        var e = Assert.Throws<ArgumentException>(() => Generation.AdapterBank.Load(model, [new Generation.NamedAdapter("a", _dir.File("none"))], 16));
        Assert.Equal("named adapters need a base model loaded without an adapter of its own", e.Message);
    }

    [Fact]
    public void A_router_adapter_on_a_dense_model_is_a_located_error()
    {
        string dir = _dir.File("adapter");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "adapter_config.json");
        File.WriteAllText(path, """{"peft_type": "LORA", "r": 2, "lora_alpha": 3, "target_modules": ["q_proj"], "target_parameters": ["gate.weight"]}""");
        var config = AdapterConfig.Read(dir);
        var e = Assert.Throws<ModelFormatException>(() => config.Apply(TrainingSetup.Inference));
        Assert.Equal($"{path}: target_parameters names gate.weight, the router of a mixture-of-experts model; this model has none.", e.Message);
        var spec = MoeTests.Spec("qwen3_moe");
        var setup = config.Apply(TrainingSetup.Inference, TrainableModules.LoraTargetsOf(spec), TrainableModules.ExpertTargets(spec), TrainableModules.RouterTarget(spec));
        Assert.Equal(["q_proj", "gate"], setup.LoraTarget);
        Assert.Equal(0, setup.LoraDropout);
    }
}
