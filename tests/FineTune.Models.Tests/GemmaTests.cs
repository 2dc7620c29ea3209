using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests;

/// <summary>
/// Gemma 2 and Gemma 3 in the architecture table: config.json as transformers reads it (defaults, layer types, both
/// rope layouts, the multimodal checkpoint's language model), the block's gradients against finite differences
/// (sandwich (1 + w) norms, GeGLU, √hidden embedding, sliding windows, soft-caps, query_pre_attn_scalar, local rope),
/// and the KV-cache decode equal to the full forward.
/// </summary>
public sealed class GemmaTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static JsonObject Json(string text) => JsonNode.Parse(text)!.AsObject();

    /// <summary>A tiny gemma spec whose every option acts within 7-token rows: window 3, caps that bend the scores.</summary>
    internal static TransformerSpec Spec(string architecture, bool tied = true) => TinyModels.Spec(architecture, tied, 8) with
    {
        QueryPreAttnScalar = 12,
        SlidingWindow = 3,
        SlidingLayers = [true, false],
        AttnLogitSoftcap = architecture == "gemma2" ? 0.5 : 0,
        FinalLogitSoftcap = 0.8,
        LocalRopeTheta = architecture == "gemma3_text" ? 50.0 : null,
    };

    [Fact]
    public void Gemma2_config_takes_gemma2_defaults_and_alternates_local_and_global_layers()
    {
        var c = ModelConfig.FromJson(Json("""{"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2}"""), "config.json");
        Assert.Equal(("Gemma2ForCausalLM", 256, 256000, 8192, true, "gelu_pytorch_tanh"),
            (c.ArchitectureClassName, c.HeadDim, c.VocabSize, c.MaxPositionEmbeddings, c.TieWordEmbeddings, c.HiddenAct));
        Assert.Equal((256.0, 4096, 50.0, 30.0, (double?)null), (c.QueryPreAttnScalar, c.SlidingWindow, c.AttnLogitSoftcapping, c.FinalLogitSoftcapping, c.RopeLocalBaseFreq));
        Assert.Equal(["sliding_attention", "full_attention", "sliding_attention", "full_attention"], c.LayerTypes);
        var spec = TransformerSpec.FromConfig(c);
        Assert.Equal(new Engine.AttentionVariant(4096, 50f, 1f / 16f), spec.AttentionVariantOf(0));
        Assert.Equal(new Engine.AttentionVariant(0, 50f, 1f / 16f), spec.AttentionVariantOf(1));
    }

    [Fact]
    public void Gemma3_config_takes_every_sixth_layer_global_and_the_local_rope_base()
    {
        var c = ModelConfig.FromJson(Json("""{"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 7, "num_attention_heads": 2, "final_logit_softcapping": null}"""), "config.json");
        Assert.Equal(("Gemma3ForCausalLM", 262208, 1_000_000.0, 10000.0), (c.ArchitectureClassName, c.VocabSize, c.RopeTheta, c.RopeLocalBaseFreq));
        Assert.Equal((null, null), (c.AttnLogitSoftcapping, c.FinalLogitSoftcapping));
        Assert.Equal([true, true, true, true, true, false, true], c.LayerTypes!.Select(t => t == "sliding_attention"));
        Assert.True(c.HasQkNorm);
    }

    [Fact]
    public void Gemma3_transformers5_rope_parameters_per_layer_type_read_as_global_and_local_rope()
    {
        var c = ModelConfig.FromJson(Json("""
            {"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "layer_types": ["full_attention", "sliding_attention"],
             "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
            """), "config.json");
        Assert.Equal((1_000_000.0, "linear", 8.0, 10000.0), (c.RopeTheta, c.RopeScaling!.Type, c.RopeScaling.Factor, c.RopeLocalBaseFreq));
        Assert.Equal(["full_attention", "sliding_attention"], c.LayerTypes);
    }

    [Fact]
    public void Layer_types_of_the_wrong_length_are_refused_with_the_key()
    {
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromJson(Json(
            """{"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "layer_types": ["full_attention"]}"""), "config.json"));
        Assert.Equal("config.json: \"layer_types\" lists 1 layers but \"num_hidden_layers\" is 3; give one entry per layer.", e.Message);
    }

    [Fact]
    public void Saved_gemma_config_reads_back_equal()
    {
        var c = ModelConfig.FromJson(Json("""{"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "sliding_window": 5, "attn_logit_softcapping": 20.0}"""), "config.json");
        c.Save(_dir.File("config.json"));
        var back = ModelConfig.Load(_dir.File("config.json"));
        Assert.Equal(TransformerSpec.FromConfig(c) with { SlidingLayers = null }, TransformerSpec.FromConfig(back) with { SlidingLayers = null });
        Assert.Equal(c.LayerTypes, back.LayerTypes);
        Assert.Equal((5, 20.0, "gelu_pytorch_tanh"), (back.SlidingWindow!.Value, back.AttnLogitSoftcapping!.Value, back.HiddenAct));
    }

    [Fact]
    public void Saved_gemma2_config_writes_its_float_keys_as_floats()
    {
        // transformers 5's Gemma2Config is a strict dataclass: final_logit_softcapping 30 (an int) fails to load there
        // ("expected float, got int"; the H200 run of 2026-12-01 found it); 30.0 loads.
        var c = ModelConfig.FromJson(Json("""{"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}"""), "config.json");
        string text = c.ToJsonString();
        Assert.Contains("\"attn_logit_softcapping\": 50.0,", text);
        Assert.Contains("\"final_logit_softcapping\": 30.0,", text);
        Assert.Contains("\"query_pre_attn_scalar\": 256,", text);
    }

    [Fact]
    public void Saved_mixtral_config_writes_its_router_floats_as_floats()
    {
        // MixtralConfig (transformers 5, strict) refused router_jitter_noise 0 ("expected float, got int"; H200, 2026-12-01).
        var c = ModelConfig.FromJson(Json("""{"model_type": "mixtral", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "router_jitter_noise": 0.0, "router_aux_loss_coef": 0.02}"""), "config.json");
        string text = c.ToJsonString();
        Assert.Contains("\"router_jitter_noise\": 0.0,", text);
        Assert.Contains("\"router_aux_loss_coef\": 0.02,", text);
    }

    [Theory]
    [InlineData("gemma2", true)]
    [InlineData("gemma2", false)]
    [InlineData("gemma3_text", true)]
    public void Full_finetuning_gradients_match_finite_differences_for_every_gemma_parameter(string architecture, bool tied)
    {
        // std 0.15: gemma's (1 + w) norms on RandomWeights' 1 + noise scale by ~2, so smaller weights keep the loss
        // smooth enough for central differences with h = 1e-2. Per parameter the error is 2e-4 … 2e-3 with no parameter
        // standing out, at h = 1e-2 and 3e-3 alike (measured): the float32 loss's noise floor, hence the bound of 2e-3.
        using var model = TinyModels.Create(Spec(architecture, tied), new TrainingSetup { FinetuningType = FinetuningType.Full }, std: 0.15f);
        Assert.Contains("model.layers.1.pre_feedforward_layernorm.weight", model.ParameterNames);
        Assert.Contains("model.layers.0.post_feedforward_layernorm.weight", model.ParameterNames);
        double err = ModelGradientTests.CheckGradients(model, TinyModels.PackedBatch(), perParameter: 2);
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Theory]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void Lora_gradients_match_finite_differences_on_a_packed_batch(string architecture)
    {
        var setup = new TrainingSetup { LoraRank = 2, LoraAlpha = 4, AdditionalTarget = ["pre_feedforward_layernorm"] };
        using var model = TinyModels.Create(Spec(architecture), setup, std: 0.15f);
        TinyModels.RandomizeLoraB(model, 3);
        Assert.Equal(2 * 7 * 2 + 2, model.TrainableParameters.Count);
        double err = ModelGradientTests.CheckGradients(model, TinyModels.PackedBatch());
        Assert.True(err < 2e-3, $"relative error {err}");
    }

    [Theory]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void Greedy_decoding_through_the_kv_cache_picks_the_full_forwards_argmax(string architecture)
    {
        // Window 3 and a 5-token prompt: decode steps attend to the window only, as the full forward does.
        using var model = TinyModels.Create(Spec(architecture), new TrainingSetup { FinetuningType = FinetuningType.Full }, seed: 4, std: 0.5f);
        int[] prompt = [3, 17, 5, 9, 11];
        var tokens = model.Generate([prompt], new GenerationOptions { MaxNewTokens = 6 })[0].Tokens;
        Assert.Equal(6, tokens.Length);
        var seq = prompt.ToList();
        foreach (int t in tokens)
        {
            int n = seq.Count;
            var logits = model.ForwardLogits(new TokenBatch(1, n, seq.ToArray(), Enumerable.Repeat(-100, n).ToArray(), Enumerable.Range(0, n).ToArray(), new int[n]));
            var last = logits.AsSpan((n - 1) * 32, 32);
            Assert.Equal(last.IndexOf(System.Numerics.Tensors.TensorPrimitives.Max(last)), t);
            // Soft-capped: every logit within ±0.8.
            Assert.True(Math.Abs(System.Numerics.Tensors.TensorPrimitives.MaxMagnitude(last)) <= 0.8f);
            seq.Add(t);
        }
    }

    [Fact]
    public void A_gemma3_conditional_generation_directory_loads_its_language_model()
    {
        var text = Path.Combine(_dir.Path, "text");
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Gemma3, HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 8, SlidingWindow = 3, Seed = 3 }, text);
        // The multimodal layout: config.json with text_config, weights under language_model.* (transformers 4).
        var mm = Path.Combine(_dir.Path, "mm");
        Directory.CreateDirectory(mm);
        foreach (var f in Directory.GetFiles(text).Where(f => !f.EndsWith(".safetensors", StringComparison.Ordinal) && Path.GetFileName(f) != "config.json"))
            File.Copy(f, Path.Combine(mm, Path.GetFileName(f)));
        var textConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(text, "config.json")))!.AsObject();
        File.WriteAllText(Path.Combine(mm, "config.json"), new JsonObject
        {
            ["model_type"] = "gemma3",
            ["architectures"] = new JsonArray("Gemma3ForConditionalGeneration"),
            ["text_config"] = textConfig.DeepClone(),
        }.ToJsonString());
        using (var reader = SafetensorsReader.Open(text))
        {
            var writer = new SafetensorsWriter();
            foreach (var (name, info) in reader.Tensors)
                writer.Add("language_model." + name, reader.ReadAsFloat32(name), info.Shape.ToArray());
            writer.Save(Path.Combine(mm, "model.safetensors"));
        }
        var batch = new TokenBatch(1, 5, [1, 2, 3, 4, 5], [2, 3, 4, 5, 6], [0, 1, 2, 3, 4], new int[5]);
        using var a = CausalLM.Load(text, new CpuBackend(1), new TrainingSetup { FinetuningType = FinetuningType.Full });
        using var b = CausalLM.Load(mm, new CpuBackend(1), new TrainingSetup { FinetuningType = FinetuningType.Full });
        Assert.Equal("gemma3_text", b.Config!.ModelType);
        Assert.Equal(a.ForwardLogits(batch), b.ForwardLogits(batch));
    }
}

/// <summary>Gemma's GGUF as convert_hf_to_gguf.py writes it, read back by @huggingface/gguf.</summary>
public sealed class GemmaGgufTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Gemma2_export_has_the_softcaps_window_and_norms_stored_as_one_plus_w()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Gemma2, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16, QueryPreAttnScalar = 16, SlidingWindow = 8, Seed = 2 }, _dir.File("m"));
        // Trained norms are not 0: give one a value so the +1 is seen on a non-trivial weight.
        using (var r = SafetensorsReader.Open(_dir.File("m")))
        {
            var writer = new SafetensorsWriter();
            foreach (var (name, info) in r.Tensors)
            {
                var v = r.ReadAsFloat32(name);
                if (name == "model.layers.1.post_feedforward_layernorm.weight") for (int i = 0; i < v.Length; i++) v[i] = 0.01f * i - 0.1f;
                writer.Add(name, v, info.Shape.ToArray());
            }
            writer.Save(_dir.File("m/model.safetensors.new"));
        }
        File.Move(_dir.File("m/model.safetensors.new"), _dir.File("m/model.safetensors"), overwrite: true);
        var result = GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.F32, "tiny");
        Assert.DoesNotContain(result.Notes, n => n.Contains("query_pre_attn_scalar") || n.Contains("layer_types"));
        var g = NodeFixtures.ReadGguf(_dir.File("m.gguf"));
        var md = g["metadata"]!;
        Assert.Equal("gemma2", md["general.architecture"]!.GetValue<string>());
        Assert.Equal(8, md["gemma2.attention.sliding_window"]!.GetValue<int>());
        Assert.Equal(50.0, md["gemma2.attn_logit_softcapping"]!.GetValue<double>());
        Assert.Equal(30.0, md["gemma2.final_logit_softcapping"]!.GetValue<double>());
        Assert.Equal(16, md["gemma2.attention.key_length"]!.GetValue<int>());
        var names = g["tensorInfos"]!.AsArray().Select(t => t!["name"]!.GetValue<string>()).ToHashSet();
        Assert.Superset(new HashSet<string> { "blk.0.attn_norm.weight", "blk.0.post_attention_norm.weight", "blk.0.ffn_norm.weight", "blk.0.post_ffw_norm.weight", "output_norm.weight" }, names);
        Assert.DoesNotContain("output.weight", names); // tied
        var table = new Formats.GgufTensorTable(_dir.File("m.gguf"));
        var stored = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(table.Data("blk.1.post_ffw_norm.weight")).ToArray();
        Assert.Equal(Enumerable.Range(0, 32).Select(i => 1f + (0.01f * i - 0.1f)).ToArray(), stored);
        Assert.All(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(table.Data("blk.0.attn_norm.weight")).ToArray(), v => Assert.Equal(1f, v));
    }

    [Fact]
    public void Gemma3_export_names_q_k_norms_and_notes_what_llama_cpp_fixes()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Gemma3, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16, LayerTypes = ["full_attention", "sliding_attention"], Seed = 2 }, _dir.File("m"));
        var result = GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.F16, "tiny");
        Assert.Contains(result.Notes, n => n == "layer_types differ from gemma3's fixed pattern (every 6th layer global), which llama.cpp uses");
        Assert.Contains(result.Notes, n => n == "query_pre_attn_scalar 256 is neither head_dim nor hidden_size / num_attention_heads; llama.cpp scales attention by one of those");
        var md = NodeFixtures.ReadGguf(_dir.File("m.gguf"))["metadata"]!;
        Assert.Equal("gemma3", md["general.architecture"]!.GetValue<string>());
        Assert.Equal(4096, md["gemma3.attention.sliding_window"]!.GetValue<int>());
        Assert.Null(md["gemma3.final_logit_softcapping"]);
        var table = new Formats.GgufTensorTable(_dir.File("m.gguf"));
        Assert.Equal(GgufTensorType.F32, table.Tensors["blk.1.attn_q_norm.weight"].Type);
        Assert.All(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(table.Data("blk.1.attn_k_norm.weight")).ToArray(), v => Assert.Equal(1f, v));
    }
}

public sealed class GemmaGgufRefusalTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void An_untied_gemma2_is_refused_before_any_file_is_written()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Gemma2, TieWordEmbeddings = false, HiddenSize = 32, IntermediateSize = 48, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16 }, _dir.File("m"));
        var e = Assert.Throws<ModelFormatException>(() => GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.F16, "tiny"));
        Assert.Equal($"{_dir.File("m/config.json")}: gemma2 sets tie_word_embeddings: false, but llama.cpp's gemma2 ties the output projection to the token embeddings; a GGUF would drop lm_head. Export the HF format, or train with tie_word_embeddings: true.", e.Message);
        Assert.False(File.Exists(_dir.File("m.gguf")));
    }
}
