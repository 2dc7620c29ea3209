namespace FineTune.Models.Tests.Formats;

public sealed class ModelConfigTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private const string Qwen2 = """
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
         "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
         "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
         "max_position_embeddings": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
         "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151645,
         "sliding_window": 32768, "use_sliding_window": false}
        """;

    [Fact]
    public void Qwen2_has_qkv_bias_and_head_dim_from_hidden_over_heads()
    {
        var c = ModelConfig.Load(_dir.Write("config.json", Qwen2));
        Assert.Equal(ModelArchitecture.Qwen2, c.Architecture);
        Assert.True(c.AttentionBias);
        Assert.Equal(64, c.HeadDim);
        Assert.Equal(2, c.NumKeyValueHeads);
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal("bfloat16", c.TorchDtype);
        Assert.Equal(151645, c.EosTokenId);
        Assert.Equal(151643, c.BosTokenId);
    }

    [Fact]
    public void Qwen3_defaults_head_dim_to_128_and_has_qk_norm()
    {
        var c = ModelConfig.Load(_dir.Write("config.json", """
            {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}
            """));
        Assert.Equal(128, c.HeadDim);
        Assert.False(c.AttentionBias);
        Assert.True(c.HasQkNorm);
        Assert.Equal(32768, c.MaxPositionEmbeddings);
        Assert.Equal("Qwen3ForCausalLM", c.ArchitectureClassName);
    }

    [Fact]
    public void Llama_without_kv_heads_uses_attention_heads_and_reads_llama3_rope_scaling()
    {
        var c = ModelConfig.Load(_dir.Write("config.json", """
            {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 8, "vocab_size": 1000, "rope_theta": 500000.0, "eos_token_id": [128001, 128009],
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
            """));
        Assert.Equal(8, c.NumKeyValueHeads);
        Assert.Equal(16, c.HeadDim);
        Assert.Equal(new RopeScaling { Type = "llama3", Factor = 8.0, LowFreqFactor = 1.0, HighFreqFactor = 4.0, OriginalMaxPositionEmbeddings = 8192 }, c.RopeScaling);
        Assert.Equal(new[] { 128001, 128009 }, c.EosTokenIds);
        Assert.Equal(2048, c.MaxPositionEmbeddings);
        Assert.Equal("float32", c.TorchDtype);
    }

    [Theory]
    [InlineData("""{"type": "linear", "factor": 2.0}""", "linear", 2.0)]
    [InlineData("""{"type": "dynamic", "factor": 4.0}""", "dynamic", 4.0)]
    [InlineData("""{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}""", "yarn", 4.0)]
    public void Rope_scaling_types_are_read(string scaling, string type, double factor)
    {
        var c = ModelConfig.Load(_dir.Write("config.json", $$"""
            {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
             "num_attention_heads": 4, "num_key_value_heads": 1, "rope_scaling": {{scaling}}}
            """));
        Assert.Equal(type, c.RopeScaling!.Type);
        Assert.Equal(factor, c.RopeScaling.Factor);
    }

    [Fact]
    public void Transformers5_rope_parameters_and_dtype_are_read()
    {
        var c = ModelConfig.Load(_dir.Write("config.json", """
            {"model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "dtype": "bfloat16",
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}
            """));
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.Null(c.RopeScaling);
        Assert.Equal("bfloat16", c.TorchDtype);
    }

    [Fact]
    public void Unknown_architecture_names_the_file_and_the_type()
    {
        var path = _dir.Write("config.json", """{"model_type": "gpt_neox", "hidden_size": 64}""");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(_dir.Path));
        Assert.Equal($"{path}: unsupported architecture \"gpt_neox\" (model_type); FineTune supports llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, qwen3_moe and mixtral models.", e.Message);
    }

    [Fact]
    public void Missing_required_key_names_the_key()
    {
        var path = _dir.Write("config.json", """{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 8}""");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: missing \"num_hidden_layers\" (an integer); every llama config.json must set it.", e.Message);
    }

    [Fact]
    public void Wrong_type_names_the_key_and_the_value()
    {
        var path = _dir.Write("config.json", """{"model_type": "llama", "hidden_size": "64"}""");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: \"hidden_size\" must be an integer, got \"64\".", e.Message);
    }

    [Fact]
    public void Save_then_load_round_trips_and_keeps_unknown_keys()
    {
        var c = ModelConfig.Load(_dir.Write("a/config.json", Qwen2));
        var outDir = Directory.CreateDirectory(_dir.File("b")).FullName;
        c.Save(outDir);
        var again = ModelConfig.Load(outDir);
        Assert.Equal(c.ToJsonString(), again.ToJsonString());
        Assert.Equal("32768", again.Extra["sliding_window"]!.ToJsonString());
        Assert.Equal("false", again.Extra["use_sliding_window"]!.ToJsonString());
        Assert.Equal(c.EosTokenIds, again.EosTokenIds);
        Assert.Equal(c with { Extra = again.Extra, EosTokenIds = again.EosTokenIds }, again);
    }

    [Fact]
    public void Saved_json_is_sorted_and_names_the_class()
    {
        var c = ModelConfig.Load(_dir.Write("config.json", Qwen2));
        var text = c.ToJsonString();
        Assert.StartsWith("{\n  \"architectures\": [\n    \"Qwen2ForCausalLM\"\n  ],\n  \"bos_token_id\": 151643,\n", text);
        Assert.EndsWith("\"vocab_size\": 151936\n}\n", text);
    }
    private const string Llama = """
        {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1000, "max_position_embeddings": 4096,
         "rope_theta": 500000.0, "rms_norm_eps": 1e-05}
        """;

    /// <summary>The llama config above with one key set to <paramref name="json"/>.</summary>
    private string LlamaWith(string key, string json)
    {
        var o = System.Text.Json.Nodes.JsonNode.Parse(Llama)!.AsObject();
        o[key] = System.Text.Json.Nodes.JsonNode.Parse(json);
        return _dir.Write("config.json", o.ToJsonString());
    }

    [Theory]
    [InlineData("hidden_size", "-128", "\"hidden_size\" must be an integer in [1, 65536], got -128.")]
    [InlineData("hidden_size", "0", "\"hidden_size\" must be an integer in [1, 65536], got 0.")]
    [InlineData("hidden_size", "1000000", "\"hidden_size\" must be an integer in [1, 65536], got 1000000.")]
    [InlineData("num_hidden_layers", "-2", "\"num_hidden_layers\" must be an integer in [1, 1024], got -2.")]
    [InlineData("num_attention_heads", "0", "\"num_attention_heads\" must be an integer in [1, 1024], got 0.")]
    [InlineData("num_key_value_heads", "-4", "\"num_key_value_heads\" must be an integer in [1, 1024], got -4.")]
    [InlineData("num_key_value_heads", "3", "\"num_key_value_heads\" (3) must divide \"num_attention_heads\" (8): each key/value head serves a whole group of query heads.")]
    [InlineData("num_key_value_heads", "16", "\"num_key_value_heads\" (16) must divide \"num_attention_heads\" (8): each key/value head serves a whole group of query heads.")]
    [InlineData("head_dim", "-16", "\"head_dim\" must be an integer in [2, 1024], got -16.")]
    [InlineData("head_dim", "15", "\"head_dim\" must be even (RoPE rotates pairs of dimensions), got 15.")]
    [InlineData("vocab_size", "-1000", "\"vocab_size\" must be an integer in [1, 4194304], got -1000.")]
    [InlineData("vocab_size", "2000000000", "\"vocab_size\" must be an integer in [1, 4194304], got 2000000000.")]
    [InlineData("intermediate_size", "-256", "\"intermediate_size\" must be an integer in [1, 262144], got -256.")]
    [InlineData("max_position_embeddings", "-1", "\"max_position_embeddings\" must be an integer in [1, 16777216], got -1.")]
    [InlineData("rope_theta", "-10000", "\"rope_theta\" must be a number in (1, 1e+12], got -10000.")]
    [InlineData("rope_theta", "0", "\"rope_theta\" must be a number in (1, 1e+12], got 0.")]
    [InlineData("rms_norm_eps", "0", "\"rms_norm_eps\" must be a number in (0, 1), got 0.")]
    [InlineData("rms_norm_eps", "-1e-6", "\"rms_norm_eps\" must be a number in (0, 1), got -1E-06.")]
    [InlineData("initializer_range", "-0.02", "\"initializer_range\" must be a number in [0, 1], got -0.02.")]
    public void Absurd_size_names_the_key_the_value_and_the_range(string key, string value, string message)
    {
        var path = LlamaWith(key, value);
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: {message}", e.Message);
    }

    [Fact]
    public void Hidden_size_not_divisible_by_heads_without_head_dim_is_rejected()
    {
        var path = LlamaWith("hidden_size", "100");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: \"hidden_size\" (100) is not divisible by \"num_attention_heads\" (8); set \"head_dim\".", e.Message);
    }

    [Theory]
    [InlineData("""{"rope_type": "linear", "factor": -2.0}""", "\"rope_scaling.factor\" must be a number in (0, 1e+06], got -2.")]
    [InlineData("""{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}""", "\"rope_scaling.original_max_position_embeddings\" must be an integer in [1, 16777216], got 0.")]
    [InlineData("""{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}""", "\"rope_scaling.high_freq_factor\" (4) must be larger than \"rope_scaling.low_freq_factor\" (4).")]
    [InlineData("""{"rope_type": "yarn", "factor": 4.0, "beta_fast": 1.0, "beta_slow": 32.0}""", "\"rope_scaling.beta_fast\" (1) must be larger than \"rope_scaling.beta_slow\" (32).")]
    public void Absurd_rope_scaling_names_the_key(string scaling, string message)
    {
        var path = LlamaWith("rope_scaling", scaling);
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: {message}", e.Message);
    }

    [Fact]
    public void Duplicate_key_is_a_format_error_not_a_crash()
    {
        var path = _dir.Write("config.json", Llama.Replace("\"vocab_size\": 1000", "\"vocab_size\": 1000, \"vocab_size\": 2000"));
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.Equal($"{path}: key \"vocab_size\" appears twice; keep one.", e.Message);
    }

    [Fact]
    public void Config_linked_to_dev_zero_is_rejected_before_reading()
    {
        var link = _dir.File("config.json");
        File.CreateSymbolicLink(link, "/dev/zero");
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(_dir.Path));
        Assert.Equal($"{link}: links to /dev/zero, a character device, not a regular file; config.json must be a regular JSON file (download the model again).", e.Message);
    }

    [Fact]
    public void Config_that_is_not_utf8_names_the_offset()
    {
        var path = _dir.File("config.json");
        File.WriteAllBytes(path, System.Text.Encoding.Latin1.GetBytes(Llama.Replace("\"llama\",", "\"llama\", \"_name_or_path\": \"caf\u00e9\",")));
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.Load(path));
        Assert.StartsWith($"{path}: byte 0xE9 at offset 45 (line 1, column 46) is not UTF-8: save the file as UTF-8", e.Message);
    }

    [Fact]
    public void Config_with_byte_order_mark_is_read()
    {
        var path = _dir.File("config.json");
        File.WriteAllBytes(path, [0xEF, 0xBB, 0xBF, .. System.Text.Encoding.UTF8.GetBytes(Llama)]);
        Assert.Equal(128, ModelConfig.Load(path).HiddenSize);
    }
}
