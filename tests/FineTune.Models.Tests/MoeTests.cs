using System.Text.Json.Nodes;
using FineTune.Engine;
using FineTune.Engine.Cpu;
using FineTune.Models.Tests.Formats;

namespace FineTune.Models.Tests;

/// <summary>
/// Mixture of experts (qwen3_moe, mixtral): config keys and defaults, the router (softmax, top-k with ties to the lower
/// index, renormalisation), the load-balancing loss as transformers' load_balancing_loss_func computes it, whole-model
/// gradients against finite differences, and the hub's per-expert weight layout in and out.
/// </summary>
public sealed class MoeTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    internal static TransformerSpec Spec(string architecture, bool normTopK = true, IReadOnlyList<int>? mlpOnly = null, int experts = 4, int topK = 2,
        double auxCoef = 0.001, bool outputRouterLogits = false)
    {
        var baseSpec = TinyModels.Spec(architecture, tied: false);
        return baseSpec with
        {
            Moe = new MoeConfig
            {
                NumExperts = experts, NumExpertsPerTok = topK, ExpertIntermediateSize = 12, NormTopKProb = normTopK,
                MlpOnlyLayers = mlpOnly ?? [], RouterAuxLossCoef = auxCoef, OutputRouterLogits = outputRouterLogits,
            },
        };
    }

    [Fact]
    public void Qwen3_moe_config_takes_qwen3_moe_defaults_and_keeps_its_keys()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}""")!.AsObject(), "config.json");
        Assert.Equal(("Qwen3MoeForCausalLM", 16, 151936, 32768), (c.ArchitectureClassName, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings));
        var moe = c.Moe!;
        Assert.Equal((128, 8, 768, false, 1, 0.001, false), (moe.NumExperts, moe.NumExpertsPerTok, moe.ExpertIntermediateSize, moe.NormTopKProb,
            moe.DecoderSparseStep, moe.RouterAuxLossCoef, moe.OutputRouterLogits));
        var json = c.ToJson();
        Assert.Equal(128, (int)json["num_experts"]!);
        Assert.Equal(768, (int)json["moe_intermediate_size"]!);
        Assert.Empty(json["mlp_only_layers"]!.AsArray());
    }

    [Fact]
    public void Mixtral_config_takes_mixtral_defaults_with_experts_of_intermediate_size()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_local_experts": 4}""")!.AsObject(), "config.json");
        Assert.Equal(("MixtralForCausalLM", 32000, 131072, 1e-5), (c.ArchitectureClassName, c.VocabSize, c.MaxPositionEmbeddings, c.RmsNormEps));
        Assert.Equal((4, 2, 96, true), (c.Moe!.NumExperts, c.Moe.NumExpertsPerTok, c.Moe.ExpertIntermediateSize, c.Moe.NormTopKProb));
        Assert.Equal(4, (int)c.ToJson()["num_local_experts"]!);
    }

    [Fact]
    public void Decoder_sparse_step_and_mlp_only_layers_pick_the_dense_layers_as_qwen3_moe_does()
    {
        var moe = new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 8, DecoderSparseStep = 2, MlpOnlyLayers = [3] };
        Assert.Equal([false, true, false, false, false, true], Enumerable.Range(0, 6).Select(moe.IsSparse));
    }

    [Fact]
    public void Mlp_only_layers_outside_the_model_are_a_located_error()
    {
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromJson(JsonNode.Parse(
            """{"model_type": "qwen3_moe", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "mlp_only_layers": [2]}""")!.AsObject(), "config.json"));
        Assert.Equal("config.json: \"mlp_only_layers\" names layer 2, but the model has layers 0 … 1.", e.Message);
    }

    private static (float[] Probs, int[] Idx, float[] W) Route(float[] logits, int n, int e, int k, bool normalize)
    {
        var B = new CpuBackend(1);
        var arena = new TensorArena.Builder();
        int hl = arena.Add("l", DType.F32, n, e), hp = arena.Add("p", DType.F32, n, e), hi = arena.Add("i", DType.I32, n, k), hw = arena.Add("w", DType.F32, n, k);
        using var a = arena.Build(B);
        B.Upload(a[hl], logits);
        B.MoeRoute(a[hl], a[hp], a[hi], a[hw], normalize);
        var p = new float[n * e]; var idx = new int[n * k]; var w = new float[n * k];
        B.Download(a[hp], p); B.Download(a[hi], idx); B.Download(a[hw], w);
        return (p, idx, w);
    }

    [Fact]
    public void The_router_takes_the_k_largest_probabilities_ties_to_the_lower_index_and_renormalises()
    {
        // Row 0: experts 1 and 3 tie for first, 0 and 2 for second: torch.topk gives 1, 3. Row 1: 2 > 0 > others.
        float[] logits = [0f, 1f, 0f, 1f, 0.5f, -1f, 2f, -1f];
        var (p, idx, w) = Route(logits, 2, 4, 2, normalize: false);
        Assert.Equal([1, 3, 2, 0], idx);
        double z0 = 2 + 2 * Math.E;
        Assert.Equal(Math.E / z0, p[1], 6);
        Assert.Equal(Math.E / z0, w[0], 6);
        var (_, _, wn) = Route(logits, 2, 4, 2, normalize: true);
        Assert.Equal(0.5f, wn[0], 6);
        Assert.Equal(0.5f, wn[1], 6);
        Assert.Equal(Math.Exp(2) / (Math.Exp(2) + Math.Exp(0.5)), wn[2], 6);
    }

    [Fact]
    public void The_load_balancing_loss_is_transformers_formula_over_the_sparse_layers_and_masked_tokens()
    {
        // load_balancing_loss_func: E · Σ_e (Σ_j f_je)·P_e with f and P means over (layer, unmasked token).
        var setup = new TrainingSetup { FinetuningType = FinetuningType.Full };
        using var model = TinyModels.Create(Spec("qwen3_moe", outputRouterLogits: true), setup);
        var batch = TinyModels.PackedBatch() with { AttentionMask = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0] };
        var result = model.ForwardBackward(batch);
        // Recompute from the router outputs the forward kept (no gradient checkpointing: one set per layer).
        var (counts, sums) = (new double[4], new double[4]);
        int masked = 12, layers = 2;
        for (int l = 0; l < layers; l++)
        {
            var (probs, idx, _) = model.RouterOutputs(l, 14);
            for (int t = 0; t < 14; t++)
            {
                int m = batch.AttentionMask![t];
                for (int j = 0; j < 2; j++) counts[idx[t * 2 + j]] += m;
                for (int x = 0; x < 4; x++) sums[x] += m * probs[t * 4 + x];
            }
        }
        double expected = 0;
        for (int x = 0; x < 4; x++) expected += counts[x] / (layers * masked) * (sums[x] / (layers * masked));
        expected *= 4;
        Assert.Equal(expected, result.RouterAuxLoss!.Value, 6);
        Assert.True(expected > 1.0, "the loss is at least 1 (perfect balance gives top_k·1 … here k = 2)");
    }

    /// <summary>‖g − ĝ‖/‖ĝ‖ over a few coordinates of every trainable parameter, ĝ from central differences of the training objective.</summary>
    internal static double CheckGradients(CausalLM model, TokenBatch batch, float lossScale, int perParameter = 3, float h = 1e-2f)
    {
        model.ZeroGrad();
        model.ForwardBackward(batch, lossScale);
        return ParameterGradientCheck.RelativeError(model, () => model.TrainingObjective(batch, lossScale), perParameter, h, seed: 11);
    }

    [Theory]
    [InlineData("qwen3_moe", false, false)]
    [InlineData("qwen3_moe", true, true)]
    [InlineData("mixtral", true, false)]
    [InlineData("mixtral", true, true)]
    public void Full_finetuning_gradients_of_router_and_experts_match_finite_differences(string architecture, bool normTopK, bool aux)
    {
        // qwen3_moe with layer 1 dense (mlp_only_layers), so both MLP kinds are in one model; a large coefficient makes
        // the load-balancing term visible in the objective.
        var spec = Spec(architecture, normTopK, mlpOnly: architecture == "qwen3_moe" ? [1] : null, auxCoef: 0.5, outputRouterLogits: aux);
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full });
        Assert.Contains(model.TrainableParameters, p => p.HfName.EndsWith(".experts.down_proj", StringComparison.Ordinal) || p.HfName.EndsWith(".experts.w2", StringComparison.Ordinal));
        double err = CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, perParameter: 4, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Fact]
    public void Lora_on_attention_of_a_moe_model_matches_finite_differences_with_the_aux_loss_under_checkpointing()
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, GradientCheckpointing = true, MoeAuxLossCoef = 0.3 };
        using var model = TinyModels.Create(Spec("qwen3_moe"), setup);
        TinyModels.RandomizeLoraB(model, 3);
        // lora_target all: q, k, v, o (the experts and the router are not nn.Linear modules PEFT's all-linear wraps).
        Assert.Equal(2 * 4 * 2, model.TrainableParameters.Count);
        Assert.Equal(0.3, model.RouterAuxLossCoef);
        double err = CheckGradients(model, TinyModels.PackedBatch(), lossScale: 0.1f, h: 3e-3f);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    /// <summary>One ForwardBackward of full fine-tuning (router and experts trained, the aux loss on) of a 4-layer qwen3_moe with layer 1 dense.</summary>
    private static (float[] Grads, CheckpointingPlan Plan) CheckpointedRun(CheckpointingMode mode, long? maxMemory = null)
    {
        var spec = Spec("qwen3_moe", mlpOnly: [1], auxCoef: 0.5, outputRouterLogits: true) with { NumLayers = 4 };
        using var model = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full, Checkpointing = mode, MaxMemoryBytes = maxMemory });
        model.ForwardBackward(TinyModels.PackedBatch());
        return (model.TrainableParameters.SelectMany(p => TinyModels.Grad(model, p)).ToArray(), model.CheckpointingPlan!);
    }

    [Fact]
    public void Every_checkpointing_plan_of_a_moe_model_gives_the_gradients_of_no_checkpointing_and_none_is_selective()
    {
        var (off, _) = CheckpointedRun(CheckpointingMode.Off);
        var (on, onPlan) = CheckpointedRun(CheckpointingMode.On);
        Assert.Equal(3, onPlan.RecomputedLayers);
        Assert.Equal(off, on);
        // Auto on the CPU without max_memory keeps every layer: each sparse layer's backward needs its own routing.
        var (auto, autoPlan) = CheckpointedRun(CheckpointingMode.Auto);
        Assert.Equal(Enumerable.Repeat(LayerStorage.Full, 4), autoPlan.Layers);
        Assert.Equal(off, auto);
        // The budget of every layer selective: a dense model would get that plan; a MoE model recomputes some layers
        // instead (selective recompute does not rebuild expert rows).
        var spec = Spec("qwen3_moe", mlpOnly: [1]) with { NumLayers = 4 };
        using var probe = TinyModels.Create(spec, new TrainingSetup { FinetuningType = FinetuningType.Full });
        var bytes = ModelActivations.Bytes(DType.F32, spec, probe.Layers, training: true, capacity: 14, chunkRows: 256);
        long budget = CheckpointingPlanner.Build(CheckpointingMode.Auto, 4, 0, 14, 0, 4, bytes, probe.WeightBytes, 0, null).EstimatedPeakBytes;
        var (mixed, mixedPlan) = CheckpointedRun(CheckpointingMode.Auto, budget);
        Assert.DoesNotContain(LayerStorage.Selective, mixedPlan.Layers);
        Assert.Contains(LayerStorage.Recompute, mixedPlan.Layers);
        Assert.Equal(off, mixed);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_checkpointing_plan_of_a_moe_model_estimates_the_arenas_it_carves_experts_included(bool expertLora)
    {
        var spec = Spec("qwen3_moe", mlpOnly: [1]) with { NumLayers = 4 };
        // With LoRA on the experts each kept layer also holds s·x·Aᵀ of gate_up and down.
        var setup = expertLora
            ? new TrainingSetup { LoraRank = 8, LoraAlpha = 16, LoraTarget = ["q_proj", "gate_proj", "up_proj", "down_proj"], Checkpointing = CheckpointingMode.Auto }
            : new TrainingSetup { FinetuningType = FinetuningType.Full, Checkpointing = CheckpointingMode.Auto };
        using var probe = TinyModels.Create(spec, setup);
        var bytes = ModelActivations.Bytes(DType.F32, spec, probe.Layers, training: true, capacity: 14, chunkRows: 256);
        foreach (int recompute in new[] { 0, 2, 4 })
        {
            long budget = CheckpointingPlanner.Build(CheckpointingMode.Auto, 4, 0, 14, recompute, 0, bytes, probe.WeightBytes, 0, null).EstimatedPeakBytes;
            using var model = TinyModels.Create(spec, setup with { MaxMemoryBytes = budget });
            model.ForwardBackward(TinyModels.PackedBatch());
            Assert.Equal(recompute, model.CheckpointingPlan!.Layers.Count(s => s == LayerStorage.Recompute));
            // Exact up to the 256-byte alignment of the pieces measured apart (a few tensors' padding).
            Assert.InRange(model.ActivationArenaBytes - model.CheckpointingPlan.ActivationBytes, -2048, 2048);
        }
    }

    private string Scratch(string name, ModelArchitecture arch, MoeConfig? moe = null, SafetensorsDType dtype = SafetensorsDType.F32)
    {
        ScratchModel.Generate(new ScratchModelSpec
        {
            Architecture = arch, HiddenSize = 32, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDim = 8, TieWordEmbeddings = false, Moe = moe, DType = dtype, InitializerRange = 0.2,
        }, _dir.File(name));
        return _dir.File(name);
    }

    [Theory]
    [InlineData("qwen3_moe", "mlp", "gate_proj", "up_proj", "down_proj")]
    [InlineData("mixtral", "block_sparse_moe", "w1", "w3", "w2")]
    public void A_scratch_moe_model_stores_the_hub_layout_router_and_one_tensor_per_expert(string arch, string mlp, string gate, string up, string down)
    {
        var dir = Scratch(arch, ModelArchitecture.Find(arch)!);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal(arch == "mixtral" ? 8 : 8, (int)config[arch == "mixtral" ? "num_local_experts" : "num_experts"]!);
        Assert.Equal(2, (int)config["num_experts_per_tok"]!);
        using var reader = SafetensorsReader.Open(dir);
        Assert.Equal([8L, 32], reader.Tensors[$"model.layers.1.{mlp}.gate.weight"].Shape);
        Assert.Equal([24L, 32], reader.Tensors[$"model.layers.1.{mlp}.experts.7.{gate}.weight"].Shape);
        Assert.Equal([24L, 32], reader.Tensors[$"model.layers.1.{mlp}.experts.7.{up}.weight"].Shape);
        Assert.Equal([32L, 24], reader.Tensors[$"model.layers.1.{mlp}.experts.7.{down}.weight"].Shape);
        Assert.Equal(2 * (1 + 3 * 8) + 2 * 6 + 3 + (arch == "qwen3_moe" ? 4 : 0), reader.Tensors.Count);
    }

    [Fact]
    public void A_saved_moe_model_writes_per_expert_tensors_and_reloads_to_the_same_logits()
    {
        var dir = Scratch("base", ModelArchitecture.Qwen3Moe);
        float[] before;
        using (var model = CausalLM.Load(dir, new CpuBackend(1), new TrainingSetup { FinetuningType = FinetuningType.Full }))
        {
            before = model.ForwardLogits(TinyModels.PackedBatch());
            model.SaveModel(_dir.File("saved"));
        }
        using (var reader = SafetensorsReader.Open(_dir.File("saved")))
            Assert.Equal(SafetensorsReader.Open(dir).Tensors.Keys.Order(StringComparer.Ordinal), reader.Tensors.Keys.Order(StringComparer.Ordinal));
        using var again = CausalLM.Load(_dir.File("saved"), new CpuBackend(1), TrainingSetup.Inference);
        Assert.Equal(before, again.ForwardLogits(TinyModels.PackedBatch()));
    }

    [Fact]
    public void Transformers_5_fused_expert_parameters_load_as_the_per_expert_tensors_do()
    {
        // transformers 5 holds the experts as gate_up_proj [E, 2·inter, hidden] (gate rows first) and down_proj [E, hidden, inter].
        var dir = Scratch("hub", ModelArchitecture.Mixtral);
        var fused = Directory.CreateDirectory(_dir.File("fused")).FullName;
        foreach (var f in new[] { "config.json", "tokenizer.json", "tokenizer_config.json" }) File.Copy(Path.Combine(dir, f), Path.Combine(fused, f));
        var writer = new SafetensorsWriter();
        using (var reader = SafetensorsReader.Open(dir))
        {
            var weights = new SafetensorsWeights(reader, dir);
            float[] Read(string name)
            {
                var shape = reader.Tensors[name].Shape.Select(x => (int)x).ToArray();
                var v = new float[shape.Aggregate(1, (a, b) => a * b)];
                weights.Read(name, shape, v);
                return v;
            }
            foreach (var name in reader.Tensors.Keys.Where(k => !k.Contains(".experts.", StringComparison.Ordinal)))
                writer.Add(name.Replace(".block_sparse_moe.", ".mlp.", StringComparison.Ordinal), Read(name), reader.Tensors[name].Shape.ToArray());
            for (int l = 0; l < 2; l++)
            {
                string p = $"model.layers.{l}.block_sparse_moe.experts";
                var gateUp = Enumerable.Range(0, 8).SelectMany(e => Read($"{p}.{e}.w1.weight").Concat(Read($"{p}.{e}.w3.weight"))).ToArray();
                var downs = Enumerable.Range(0, 8).SelectMany(e => Read($"{p}.{e}.w2.weight")).ToArray();
                writer.Add($"model.layers.{l}.mlp.experts.gate_up_proj", gateUp, [8L, 48, 32]);
                writer.Add($"model.layers.{l}.mlp.experts.down_proj", downs, [8L, 32, 24]);
            }
        }
        writer.Save(Path.Combine(fused, "model.safetensors"));
        using var hub = CausalLM.Load(dir, new CpuBackend(1), TrainingSetup.Inference);
        using var v5 = CausalLM.Load(fused, new CpuBackend(1), TrainingSetup.Inference);
        Assert.Equal(hub.ForwardLogits(TinyModels.PackedBatch()), v5.ForwardLogits(TinyModels.PackedBatch()));
    }

    [Fact]
    public void An_attention_adapter_on_a_moe_model_saves_pefts_names_and_merges_to_the_same_logits()
    {
        var dir = Scratch("base", ModelArchitecture.Qwen3Moe);
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4 };
        float[] logits;
        using (var model = CausalLM.Load(dir, new CpuBackend(1), setup))
        {
            TinyModels.RandomizeLoraB(model, 2);
            logits = model.ForwardLogits(TinyModels.PackedBatch());
            model.SaveAdapter(_dir.File("adapter"));
            model.SaveModel(_dir.File("merged"));
        }
        var config = JsonNode.Parse(File.ReadAllText(_dir.File("adapter/adapter_config.json")))!;
        Assert.Equal(["k_proj", "o_proj", "q_proj", "v_proj"], config["target_modules"]!.AsArray().Select(t => (string)t!));
        using var reloaded = CausalLM.Load(dir, new CpuBackend(1), TrainingSetup.Inference, _dir.File("adapter"));
        using var merged = CausalLM.Load(_dir.File("merged"), new CpuBackend(1), TrainingSetup.Inference);
        var again = reloaded.ForwardLogits(TinyModels.PackedBatch());
        var folded = merged.ForwardLogits(TinyModels.PackedBatch());
        for (int i = 0; i < logits.Length; i++)
        {
            Assert.Equal(logits[i], again[i], 1e-5f);
            Assert.Equal(logits[i], folded[i], 1e-4f);
        }
    }

    [Theory]
    [InlineData("qwen3_moe", "qwen3moe")]
    [InlineData("mixtral", "llama")]
    public void Gguf_export_stacks_the_experts_as_llama_cpp_names_them(string arch, string ggufArch)
    {
        var dir = Scratch("base", ModelArchitecture.Find(arch)!);
        var path = _dir.File("model.gguf");
        GgufExporter.Export(dir, path, GgufTensorType.F32);
        var gguf = new GgufTensorTable(path);
        Assert.Equal(ggufArch, gguf.Metadata["general.architecture"]);
        Assert.Equal(8u, gguf.Metadata[$"{ggufArch}.expert_count"]);
        Assert.Equal(2u, gguf.Metadata[$"{ggufArch}.expert_used_count"]);
        Assert.Equal(arch == "qwen3_moe", gguf.Metadata.ContainsKey($"{ggufArch}.expert_feed_forward_length"));
        Assert.Equal([8L, 32], gguf.Tensors["blk.1.ffn_gate_inp.weight"].Shape);
        Assert.Equal([8L, 24, 32], gguf.Tensors["blk.1.ffn_gate_exps.weight"].Shape);
        Assert.Equal([8L, 24, 32], gguf.Tensors["blk.1.ffn_up_exps.weight"].Shape);
        Assert.Equal([8L, 32, 24], gguf.Tensors["blk.1.ffn_down_exps.weight"].Shape);
        Assert.DoesNotContain(gguf.Tensors.Keys, k => k.Contains("experts", StringComparison.Ordinal));
        // Expert 5's up_proj is rows 5·24 … 6·24 of the stack, as it is in the checkpoint.
        using var reader = SafetensorsReader.Open(dir);
        var x = ModelArchitecture.Find(arch)!.Experts!;
        string mlp = ModelArchitecture.Find(arch)!.Names.Mlp;
        var expected = new float[24 * 32];
        new SafetensorsWeights(reader, dir).Read($"model.layers.1.{mlp}.experts.5.{x.Up}.weight", [24, 32], expected);
        var stack = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(gguf.Data("blk.1.ffn_up_exps.weight")).ToArray();
        Assert.Equal(expected, stack.AsSpan(5 * 24 * 32, 24 * 32).ToArray());
        Assert.Equal(GgufTensorType.F32, gguf.Tensors["blk.1.ffn_gate_inp.weight"].Type);
    }

    [Fact]
    public void Gguf_export_refuses_a_qwen3_moe_model_llama_cpp_would_compute_differently()
    {
        var dir = Scratch("base", ModelArchitecture.Qwen3Moe, new MoeConfig { NumExperts = 4, NumExpertsPerTok = 2, ExpertIntermediateSize = 8, NormTopKProb = false });
        var e = Assert.Throws<ModelFormatException>(() => GgufExporter.Export(dir, _dir.File("model.gguf"), GgufTensorType.F16));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"norm_topk_prob\" is false, but llama.cpp's qwen3moe always renormalises the top-k router weights; the GGUF would compute another model (set norm_topk_prob: true, as the released Qwen3-MoE checkpoints do, or export hf only).", e.Message);
        Assert.False(File.Exists(_dir.File("model.gguf")));
    }

    [Fact]
    public void Lora_target_on_a_moe_model_names_attention_projections_or_the_familys_expert_projections()
    {
        // mixtral's experts are w1, w3, w2 (PEFT's transformers 5 conversion maps those names, not gate_proj).
        var problems = TrainableModules.Check(Spec("mixtral"), new TrainingSetup { LoraTarget = ["q_proj", "gate_proj"] });
        var p = Assert.Single(problems);
        Assert.Equal(("lora_target", 1, "gate_proj", "is not an attention projection, expert projection or the router of this mixtral model"), (p.Option, p.Index, p.Value, p.Problem));
        Assert.Equal("expected all, or some of q_proj, k_proj, v_proj, o_proj, w1, w3, w2, gate", p.Expected);
        Assert.Empty(TrainableModules.Check(Spec("mixtral"), new TrainingSetup { LoraTarget = ["q_proj", "w1", "w3"] }));
        // qwen3_moe's gate_proj + up_proj reach the experts, with or without a dense layer.
        Assert.Empty(TrainableModules.Check(Spec("qwen3_moe", mlpOnly: [1]), new TrainingSetup { LoraTarget = ["gate_proj", "up_proj"] }));
        Assert.Empty(TrainableModules.Check(Spec("qwen3_moe"), new TrainingSetup { LoraTarget = ["down_proj"] }));
    }

    [Fact]
    public void The_qwen3_30b_a3b_bench_shape_has_the_released_models_parameter_count()
    {
        var s = EngineBenchmark.ShapeOf("qwen3-30b-a3b");
        // 2·151936·2048 embeddings/head + 48·(attention 18,878,464 incl. norms + 128·(2048 + 3·2048·768) experts) + 2048.
        Assert.Equal(2L * 151936 * 2048 + 48L * (2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 2 * 2048 + 2 * 128 + 128L * (2048 + 3 * 2048 * 768)) + 2048, s.ParameterCount);
        Assert.InRange(s.ParameterCount, 30.4e9, 30.6e9);
    }

    [Fact]
    public void The_moe_bench_trains_lora_on_the_attention_projections_and_counts_the_chosen_experts_flops()
    {
        using var cpu = new CpuBackend(threads: 1);
        var r = EngineBenchmark.TrainSteps(cpu, "tiny-moe", batch: 2, seqLen: 32, loraRank: 4, checkpointing: true, steps: 2, warmup: 1);
        Assert.InRange(r.Loss, 6.1, 6.4); // ≈ ln 512: uniform random weights
        // LoRA r=4 on q, k, v, o of 2 layers: 4·((64+64) + (64+32)·2 + (64+64)) per layer.
        Assert.Equal(2L * 4 * (128 + 96 * 2 + 128), r.TrainableParameters);
        // Linears per layer: attention 64·64·2 + 64·32·2 = 12,288, router 64·4 = 256, 2 chosen experts 2·3·64·64 = 24,576.
        Assert.Equal(4 * 2 * (12_288 + 256 + 24_576) + 4 * 32_768 + 3 * 2.0 * 32 * 16 * 4 * 2, EngineBenchmark.ModelFlopsPerToken(EngineBenchmark.ShapeOf("tiny-moe"), 32));
    }

    [Fact]
    public void Qlora_and_router_jitter_noise_on_a_moe_model_are_located_errors()
    {
        var dir = Scratch("base", ModelArchitecture.Mixtral);
        var e = Assert.Throws<ModelFormatException>(() => CausalLM.Load(dir, new CpuBackend(1),
            new TrainingSetup { Quantization = new FineTune.Models.Quantization.QuantizationSetup(4) }));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: model_type \"mixtral\" is a mixture of experts, which FineTune does not train with QLoRA (quantization_bit) yet: remove quantization_bit.", e.Message);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
        config["router_jitter_noise"] = 0.01;
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        e = Assert.Throws<ModelFormatException>(() => CausalLM.Load(dir, new CpuBackend(1), TrainingSetup.Inference));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"router_jitter_noise\" is 0.01; FineTune's engine routes without jitter noise: set it to 0.0 to train or run this model.", e.Message);
    }
}
