using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;
using Xunit.Abstractions;

namespace FineTune.Models.Tests.Formats;

public sealed class LoraMergeTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private const string Q = "model.layers.0.self_attn.q_proj";

    /// <summary>A minimal "model": config.json and a few named tensors (the merge reads names and shapes only). hidden_size 3
    /// keeps the shapes non-square; head_dim 2 is set because 3 / 1 heads would be an odd head dimension, which config.json
    /// may not have (RoPE rotates pairs).</summary>
    private string Base(SafetensorsDType dtype = SafetensorsDType.F32, Action<SafetensorsWriter>? extra = null)
    {
        var dir = Directory.CreateDirectory(_dir.File("base")).FullName;
        File.WriteAllText(Path.Combine(dir, "config.json"), $$"""
            {"model_type": "llama", "hidden_size": 3, "intermediate_size": 4, "num_hidden_layers": 1,
             "num_attention_heads": 1, "head_dim": 2, "vocab_size": 4, "torch_dtype": "{{dtype.ToTorchDtype()}}"}
            """);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{}");
        var w = new SafetensorsWriter();
        w.Add(Q + ".weight", [1, 2, 3, 4, 5, 6], [2, 3], dtype);
        w.Add("model.norm.weight", [1, 1, 1], [3], dtype);
        extra?.Invoke(w);
        w.Save(Path.Combine(dir, "model.safetensors"));
        return dir;
    }

    private string Adapter(int r, double alpha, bool rslora, Action<SafetensorsWriter> tensors, string? extraConfig = null)
    {
        var dir = Directory.CreateDirectory(_dir.File("adapter")).FullName;
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), $$"""
            {"peft_type": "LORA", "r": {{r}}, "lora_alpha": {{alpha}}, "use_rslora": {{(rslora ? "true" : "false")}},
             "target_modules": ["q_proj"], "fan_in_fan_out": false {{extraConfig}}}
            """);
        var w = new SafetensorsWriter();
        tensors(w);
        w.Save(Path.Combine(dir, "adapter_model.safetensors"));
        return dir;
    }

    private float[] Read(string name)
    {
        using var r = SafetensorsReader.Open(_dir.File("out"));
        return r.ReadAsFloat32(name);
    }

    [Fact]
    public void Linear_weight_gets_alpha_over_r_times_B_A()
    {
        // W = [[1,2,3],[4,5,6]], A = [[1,0,-1]], B = [[0.5],[2]], s = 2/1:
        // W + 2·B·A = [[1+1, 2, 3-1], [4+4, 5, 6-4]]
        var adapter = Adapter(1, 2, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [1, 0, -1], [1, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [0.5f, 2], [2, 1]);
        });
        var result = LoraMerge.Merge(Base(), adapter, _dir.File("out"));
        Assert.Equal(new float[] { 2, 2, 2, 8, 5, 2 }, Read(Q + ".weight"));
        Assert.Equal(new float[] { 1, 1, 1 }, Read("model.norm.weight"));
        Assert.Equal(1, result.MergedWeights);
        Assert.Equal(2.0, result.Scale);
    }

    [Fact]
    public void Rslora_scales_by_alpha_over_sqrt_r()
    {
        // r = 4, alpha = 4: s = 4/√4 = 2 (plain LoRA would use 1). B·A has a single 1 at [0,0].
        var adapter = Adapter(4, 4, true, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], [4, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [1, 0, 0, 0, 0, 0, 0, 0], [2, 4]);
        });
        LoraMerge.Merge(Base(), adapter, _dir.File("out"));
        Assert.Equal(new float[] { 3, 2, 3, 4, 5, 6 }, Read(Q + ".weight"));
    }

    [Fact]
    public void Alpha_pattern_overrides_alpha_for_matching_modules()
    {
        var adapter = Adapter(1, 2, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [1, 0, 0], [1, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [1, 0], [2, 1]);
        }, ", \"alpha_pattern\": {\"q_proj\": 10}");
        LoraMerge.Merge(Base(), adapter, _dir.File("out"));
        Assert.Equal(11f, Read(Q + ".weight")[0]);
    }

    [Fact]
    public void Bf16_base_stays_bf16_and_config_keeps_its_dtype()
    {
        var adapter = Adapter(1, 1, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [0, 0, 1], [1, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [0, 0.5f], [2, 1]);
        });
        LoraMerge.Merge(Base(SafetensorsDType.BF16), adapter, _dir.File("out"));
        using (var r = SafetensorsReader.Open(_dir.File("out")))
            Assert.Equal(SafetensorsDType.BF16, r.Get(Q + ".weight").DType);
        Assert.Equal(new float[] { 1, 2, 3, 4, 5, 6.5f }, Read(Q + ".weight"));
        Assert.Equal("bfloat16", ModelConfig.Load(_dir.File("out")).TorchDtype);
        Assert.Equal("{}", File.ReadAllText(_dir.File("out/tokenizer.json")));
    }

    [Fact]
    public void Output_dtype_converts_every_float_weight()
    {
        var adapter = Adapter(1, 1, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [0, 0, 0], [1, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [0, 0], [2, 1]);
        });
        LoraMerge.Merge(Base(), adapter, _dir.File("out"), SafetensorsDType.F16);
        using var r = SafetensorsReader.Open(_dir.File("out"));
        Assert.All(r.Tensors.Values, t => Assert.Equal(SafetensorsDType.F16, t.DType));
        Assert.Equal("float16", ModelConfig.Load(_dir.File("out")).TorchDtype);
    }

    [Fact]
    public void Modules_to_save_replace_the_base_tensor()
    {
        var baseDir = Base(extra: w => w.Add("lm_head.weight", new float[12], [4, 3]));
        var adapter = Adapter(1, 1, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [0, 0, 0], [1, 3]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [0, 0], [2, 1]);
            w.Add("base_model.model.lm_head.weight", Enumerable.Range(1, 12).Select(i => (float)i).ToArray(), [4, 3]);
        });
        var result = LoraMerge.Merge(baseDir, adapter, _dir.File("out"));
        Assert.Equal(Enumerable.Range(1, 12).Select(i => (float)i).ToArray(), Read("lm_head.weight"));
        Assert.Equal(1, result.ReplacedWeights);
    }

    [Fact]
    public void Embedding_lora_adds_the_transposed_product()
    {
        // E [vocab 4, dim 3]; A [r 1, vocab 4] = [1,0,0,2]; B [dim 3, r 1] = [1,0,-1]; s = 1:
        // ΔE[v, d] = B[d]·A[v] → row 0 += [1,0,-1], row 3 += [2,0,-2]
        var baseDir = Base(extra: w => w.Add("model.embed_tokens.weight", new float[12], [4, 3]));
        var adapter = Adapter(1, 1, false, w =>
        {
            w.Add("base_model.model.model.embed_tokens.lora_embedding_A", [1, 0, 0, 2], [1, 4]);
            w.Add("base_model.model.model.embed_tokens.lora_embedding_B", [1, 0, -1], [3, 1]);
        });
        LoraMerge.Merge(baseDir, adapter, _dir.File("out"));
        Assert.Equal(new float[] { 1, 0, -1, 0, 0, 0, 0, 0, 0, 2, 0, -2 }, Read("model.embed_tokens.weight"));
    }

    [Fact]
    public void Adapter_of_another_model_is_rejected_naming_the_tensors()
    {
        var adapter = Adapter(1, 1, false, w =>
        {
            w.Add("base_model.model." + Q + ".lora_A.weight", [0, 0, 0, 0], [1, 4]);
            w.Add("base_model.model." + Q + ".lora_B.weight", [0, 0], [2, 1]);
        });
        var e = Assert.Throws<ModelFormatException>(() => LoraMerge.Merge(Base(), adapter, _dir.File("out")));
        Assert.Equal($"{Path.Combine(adapter, "adapter_model.safetensors")}: shapes do not fit: \"base_model.model.{Q}.lora_A.weight\" [1, 4], \"base_model.model.{Q}.lora_B.weight\" [2, 1], base \"{Q}.weight\" [2, 3]; the adapter was trained on another model.", e.Message);
    }

    [Theory]
    [InlineData("qwen2")]
    [InlineData("gemma2")]       // sandwich (1 + w) norms, soft-caps, window: merge folds the same linears
    [InlineData("gemma3_text")]
    public void Merged_model_logits_equal_base_plus_adapter_logits(string architecture)
    {
        var baseDir = _dir.File("scratch");
        var config = ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Find(architecture)!, Seed = 11, SlidingWindow = 3, QueryPreAttnScalar = 16 }, baseDir);
        // A random adapter on q/k/v/o and the MLP of every layer, r = 4, alpha = 8.
        var adapterDir = Directory.CreateDirectory(_dir.File("lora")).FullName;
        string[] modules = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"];
        File.WriteAllText(Path.Combine(adapterDir, "adapter_config.json"), new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = 4, ["lora_alpha"] = 8, ["use_rslora"] = false, ["lora_dropout"] = 0.0,
            ["target_modules"] = new JsonArray("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        }.ToJsonString());
        var w = new SafetensorsWriter();
        using (var baseWeights = SafetensorsReader.Open(baseDir))
            for (int l = 0; l < config.NumHiddenLayers; l++)
                foreach (var m in modules)
                {
                    var name = $"model.layers.{l}.{m}";
                    var shape = baseWeights.Get(name + ".weight").Shape;
                    var a = new float[4 * shape[1]];
                    var b = new float[shape[0] * 4];
                    ScratchModel.FillNormal(a, 1, name + "A", 0.1f);
                    ScratchModel.FillNormal(b, 1, name + "B", 0.1f);
                    w.Add($"base_model.model.{name}.lora_A.weight", a, [4, shape[1]]);
                    w.Add($"base_model.model.{name}.lora_B.weight", b, [shape[0], 4]);
                }
        w.Save(Path.Combine(adapterDir, "adapter_model.safetensors"));
        LoraMerge.Merge(baseDir, adapterDir, _dir.File("merged"));

        int[] ids = [264, 72, 105, 256, 266, 10, 65, 66];
        var batch = new TokenBatch(1, ids.Length, ids, Enumerable.Repeat(-100, ids.Length).ToArray(), Enumerable.Range(0, ids.Length).ToArray(), new int[ids.Length]);
        using var backend = new CpuBackend(1);
        float[] unmerged, merged;
        using (var m = CausalLM.Load(baseDir, backend, TrainingSetup.Inference, adapterDir))
            unmerged = m.ForwardLogits(batch);
        using (var m = CausalLM.Load(_dir.File("merged"), backend, TrainingSetup.Inference))
            merged = m.ForwardLogits(batch);
        using (var m = CausalLM.Load(baseDir, backend, TrainingSetup.Inference))
            Assert.True(MaxAbsDiff(m.ForwardLogits(batch), merged) > 1e-3f, "the adapter must change the logits");
        float diff = MaxAbsDiff(unmerged, merged);
        output.WriteLine($"merged vs base+adapter: max |Δlogits| = {diff:E2} over {merged.Length} logits");
        Assert.True(diff < 1e-5f, $"max |Δlogits| = {diff}");
    }

    private static float MaxAbsDiff(float[] a, float[] b) => a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
}
