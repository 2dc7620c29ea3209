using System.Text.Json.Nodes;
using FineTune.Engine.Cpu;

namespace FineTune.Models.Tests.Formats;

/// <summary>
/// adapter_config.json as chat/eval (the adapter applied unmerged) and merge (folded in) read it: one reader with PEFT's
/// LoraConfig defaults, rank/alpha patterns and rsLoRA, so both paths give the same model.
/// </summary>
public sealed class AdapterConfigTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static readonly int[][] Rows = [[5, 9, 2, 7, 7, 30, 1, 4], [8, 15, 16, 23, 42, 4, 108, 99]];

    /// <summary>A one-layer untied qwen3 scratch model: hidden 32, q_proj 32 × 32, v_proj 16 × 32.</summary>
    private string Base()
    {
        var dir = _dir.File("base");
        if (!Directory.Exists(dir))
            ScratchModel.Generate(new ScratchModelSpec
            {
                HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDim = 16,
                TieWordEmbeddings = false, InitializerRange = 0.2, Seed = 4,
            }, dir);
        return dir;
    }

    private static float[] Random(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() - 0.5)).ToArray();
    }

    /// <summary>An adapter on q_proj (rank <paramref name="qRank"/>) and v_proj (rank <paramref name="vRank"/>) with random A and B.</summary>
    private string Adapter(string name, string configKeys, int qRank = 4, int vRank = 4, string peftType = "LORA")
    {
        var dir = Directory.CreateDirectory(_dir.File(name)).FullName;
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"),
            $$"""{"peft_type": "{{peftType}}", "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"{{configKeys}}}""");
        var w = new SafetensorsWriter();
        foreach (var (module, rank, outDim, seed) in new[] { ("q_proj", qRank, 32, 1), ("v_proj", vRank, 16, 2) })
        {
            string prefix = $"base_model.model.model.layers.0.self_attn.{module}";
            w.Add(prefix + ".lora_A.weight", Random(rank * 32, seed), [rank, 32]);
            w.Add(prefix + ".lora_B.weight", Random(outDim * rank, seed + 10), [outDim, rank]);
        }
        w.Save(Path.Combine(dir, "adapter_model.safetensors"));
        return dir;
    }

    private static float[] Logits(string modelDir, string? adapterDir = null)
    {
        using var backend = new CpuBackend(1);
        using var model = CausalLM.Load(modelDir, backend, TrainingSetup.Inference, adapterDir);
        return model.ForwardLogits(TokenBatch.FromSequences(Rows, 8));
    }

    private static float[] Weight(string modelDir, string name)
    {
        using var r = SafetensorsReader.Open(modelDir);
        return r.ReadAsFloat32(name);
    }

    /// <summary>W + s·B·A for one module of the adapter, computed here.</summary>
    private static float[] Folded(string baseDir, string adapterDir, string module, double scale)
    {
        string prefix = $"model.layers.0.self_attn.{module}";
        var w = Weight(baseDir, prefix + ".weight");
        using var r = SafetensorsReader.Open(Path.Combine(adapterDir, "adapter_model.safetensors"));
        var a = r.ReadAsFloat32($"base_model.model.{prefix}.lora_A.weight");
        var b = r.ReadAsFloat32($"base_model.model.{prefix}.lora_B.weight");
        int rank = (int)r.Get($"base_model.model.{prefix}.lora_A.weight").Shape[0], inDim = 32, outDim = w.Length / inDim;
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
            {
                double s = 0;
                for (int k = 0; k < rank; k++) s += (double)b[o * rank + k] * a[k * inDim + i];
                w[o * inDim + i] += (float)(scale * s);
            }
        return w;
    }

    private static void AssertClose(float[] expected, float[] actual, float tolerance = 1e-4f)
    {
        Assert.Equal(expected.Length, actual.Length);
        float worst = expected.Zip(actual, (x, y) => MathF.Abs(x - y)).Max();
        Assert.True(worst <= tolerance, $"max |difference| {worst}");
    }

    [Theory]
    // No lora_alpha: PEFT's default is 8 (not r), so s = 8 / 4 = 2 for both modules.
    [InlineData(""", "r": 4""", 4, 4, 2.0, 2.0)]
    [InlineData(""", "r": 4, "lora_alpha": 16, "alpha_pattern": {"v_proj": 2}""", 4, 4, 4.0, 0.5)]
    // rank_pattern: v_proj has rank 2 (its tensors say so too), alpha 8 → s = 8 / 2 = 4 there.
    [InlineData(""", "r": 4, "rank_pattern": {"model.layers.0.self_attn.v_proj": 2}""", 4, 2, 2.0, 4.0)]
    // rsLoRA: s = alpha / √r per module: 8 / 2 = 4 and 8 / √2.
    [InlineData(""", "r": 4, "lora_alpha": 8, "use_rslora": true, "rank_pattern": {"v_proj": 2}""", 4, 2, 4.0, 5.656854249492381)]
    public void Chat_eval_and_merge_apply_the_same_scales(string configKeys, int qRank, int vRank, double qScale, double vScale)
    {
        string baseDir = Base(), adapter = Adapter("adapter", configKeys, qRank, vRank), merged = _dir.File("merged");
        LoraMerge.Merge(baseDir, adapter, merged);
        AssertClose(Folded(baseDir, adapter, "q_proj", qScale), Weight(merged, "model.layers.0.self_attn.q_proj.weight"), 1e-6f);
        AssertClose(Folded(baseDir, adapter, "v_proj", vScale), Weight(merged, "model.layers.0.self_attn.v_proj.weight"), 1e-6f);
        // The unmerged adapter (chat, eval) computes what the merged model (merge, export) computes.
        AssertClose(Logits(merged), Logits(baseDir, adapter));
    }

    [Fact]
    public void Missing_keys_take_peft_defaults()
    {
        var config = AdapterConfig.Read(Adapter("defaults", ""));
        Assert.Equal((8, 8.0, false, 0.0), (config.Rank, config.Alpha, config.UseRslora, config.LoraDropout));
        Assert.Equal(["q_proj", "v_proj"], config.TargetModules);
        Assert.Empty(config.ModulesToSave);
        Assert.Equal(1.0, config.ScaleFor("model.layers.0.self_attn.q_proj"));
    }

    [Theory]
    [InlineData(", \"use_dora\": true", "use_dora is true: DoRA adapters are not supported; FineTune applies plain LoRA adapters")]
    [InlineData(", \"bias\": \"all\"", "bias is 'all': FineTune applies adapters with bias 'none' only (no trained biases)")]
    [InlineData(", \"layers_to_transform\": [0]", "layers_to_transform is set: FineTune applies adapters on every layer of their target_modules only")]
    [InlineData(", \"lora_bias\": true", "lora_bias is true: FineTune applies adapters without a lora_B bias only")]
    [InlineData(", \"fan_in_fan_out\": true", "fan_in_fan_out is true (GPT-2 style Conv1D weights): FineTune applies adapters of llama/qwen/mistral linear layers only")]
    [InlineData(", \"target_modules\": \".*proj\"", "target_modules is the regular expression '.*proj': FineTune reads a list of module names")]
    public void Unsupported_adapters_are_refused_by_chat_eval_and_merge_naming_the_file(string configKeys, string message)
    {
        string baseDir = Base(), adapter = Adapter("unsupported", ", \"r\": 4" + configKeys);
        string file = Path.Combine(adapter, "adapter_config.json");
        if (configKeys.Contains("target_modules"))
            File.WriteAllText(file, File.ReadAllText(file).Replace("\"target_modules\": [\"q_proj\", \"v_proj\"], ", ""));
        var unmerged = Assert.Throws<ModelFormatException>(() => Logits(baseDir, adapter));
        Assert.Equal($"{file}: {message}.", unmerged.Message);
        var merge = Assert.Throws<ModelFormatException>(() => LoraMerge.Merge(baseDir, adapter, _dir.File("never")));
        Assert.Equal(unmerged.Message, merge.Message);
        Assert.False(Directory.Exists(_dir.File("never")));
    }

    [Theory]
    [InlineData(", \"r\": \"four\"", "\"r\" must be an integer, got \"four\"")]
    [InlineData(", \"r\": 4, \"lora_alpha\": true", "\"lora_alpha\" must be a number, got true")]
    [InlineData(", \"r\": 4, \"rank_pattern\": {\"v_proj\": \"2\"}", "\"rank_pattern.v_proj\" must be an integer, got \"2\"")]
    [InlineData(", \"r\": 4, \"alpha_pattern\": [2]", "\"alpha_pattern\" must be a mapping of module patterns, got [2]")]
    [InlineData(", \"r\": 4, \"rank_pattern\": {\"(v_proj\": 2}", "\"rank_pattern\" key '(v_proj' is not a valid regular expression")]
    public void Wrongly_typed_keys_are_refused_as_config_json_keys_are(string configKeys, string message)
    {
        var adapter = Adapter("typed", configKeys);
        var e = Assert.Throws<ModelFormatException>(() => AdapterConfig.Read(adapter));
        Assert.StartsWith($"{Path.Combine(adapter, "adapter_config.json")}: {message}", e.Message);
    }

    [Fact]
    public void Another_peft_type_is_refused_naming_the_file()
    {
        var adapter = Adapter("ia3", ", \"r\": 4", peftType: "IA3");
        var e = Assert.Throws<ModelFormatException>(() => Logits(Base(), adapter));
        Assert.Equal($"{Path.Combine(adapter, "adapter_config.json")}: peft_type is 'IA3': FineTune applies LORA adapters only.", e.Message);
    }

    [Fact]
    public void A_written_adapter_reads_back_with_its_own_settings()
    {
        using var backend = new CpuBackend(1);
        var setup = new TrainingSetup { LoraRank = 4, LoraAlpha = 12, UseRslora = true, LoraTarget = ["q_proj", "v_proj"], AdditionalTarget = ["lm_head"] };
        using (var model = CausalLM.Load(Base(), backend, setup))
            model.SaveAdapter(_dir.File("saved"), "scratch");
        var config = AdapterConfig.Read(_dir.File("saved"));
        Assert.Equal((4, 12.0, true), (config.Rank, config.Alpha, config.UseRslora));
        Assert.Equal(["q_proj", "v_proj"], config.TargetModules);
        Assert.Equal(["lm_head"], config.ModulesToSave);
        Assert.Equal(6.0, config.ScaleFor("model.layers.0.self_attn.v_proj"));
        Assert.Equal("scratch", (string?)JsonNode.Parse(File.ReadAllText(_dir.File("saved/adapter_config.json")))!["base_model_name_or_path"]);
    }
}
