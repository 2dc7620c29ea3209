namespace FineTune.Models.Tests.Formats;

/// <summary>Scratch models in three shapes, each also exported as F32 GGUF: the input llama-quantize reads.</summary>
public sealed class MixModels : IDisposable
{
    private readonly TempDir _dir = new();

    public static readonly Dictionary<string, ScratchModelSpec> Specs = new()
    {
        // Tied embeddings (token_embd takes the output's type), rows of 256 for the K-quants, ffn_down rows of 48
        // (neither 256 nor 32 blocks: F16), attn_output rows of 64 (a 32-value fallback).
        ["llama-tied"] = new ScratchModelSpec
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 256, IntermediateSize = 48, NumHiddenLayers = 1,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, TieWordEmbeddings = true, Seed = 12,
        },
        // The demo's size: no row is a multiple of 256, every K-quant falls back.
        ["qwen3-tiny"] = new ScratchModelSpec { Seed = 13 },
    };

    public MixModels()
    {
        foreach (var (name, spec) in Specs)
        {
            ScratchModel.Generate(spec, Dir(name));
            GgufExporter.Export(Dir(name), F32Gguf(name), GgufFileType.F32, name);
        }
    }

    public string Dir(string model) => _dir.File(model);
    public string F32Gguf(string model) => _dir.File(model + "-f32.gguf");
    public string File(string name) => _dir.File(name);

    public void Dispose() => _dir.Dispose();
}

/// <summary>
/// FineTune's per-tensor types against llama.cpp's own choice (llama_quant_compute_types: the llama_tensor_get_type
/// that llama-quantize runs) on real model shapes, and whole files against llama.cpp's llama-quantize
/// (llama_model_quantize) run on FineTune's F32 export of the same model (libllama, node-llama-cpp 3.21.1).
/// </summary>
public sealed class GgufTypeMixTests(MixModels models) : IClassFixture<MixModels>
{
    /// <summary>(architecture, hidden, intermediate, layers, heads, KV heads, head dim, vocabulary, tied) of real models.</summary>
    public static readonly Dictionary<string, (string Arch, int Hidden, int Ff, int Layers, int Heads, int KvHeads, int HeadDim, int Vocab, bool Tied)> Shapes = new()
    {
        ["qwen2.5-0.5b"] = ("qwen2", 896, 4864, 24, 14, 2, 64, 151936, true),
        ["qwen2.5-7b"] = ("qwen2", 3584, 18944, 28, 28, 4, 128, 152064, false),
        ["qwen3-0.6b"] = ("qwen3", 1024, 3072, 28, 16, 8, 128, 151936, true),
        ["qwen3-8b"] = ("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, false),
        ["llama3.2-1b"] = ("llama", 2048, 8192, 16, 32, 8, 64, 128256, true),
        ["llama3-8b"] = ("llama", 4096, 14336, 32, 32, 8, 128, 128256, false),
        ["llama3-70b"] = ("llama", 8192, 28672, 80, 64, 8, 128, 128256, false),
        ["mistral-7b-v0.1"] = ("llama", 4096, 14336, 32, 32, 8, 128, 32000, false),
        ["scratch-demo"] = ("qwen3", 128, 256, 2, 4, 2, 32, 269, false),
    };

    public static TheoryData<string, GgufFileType> ShapeCases()
    {
        var data = new TheoryData<string, GgufFileType>();
        foreach (var shape in Shapes.Keys)
            foreach (var ft in Enum.GetValues<GgufFileType>())
                data.Add(shape, ft);
        return data;
    }

    /// <summary>The GGUF tensors of a dense model, in llama.cpp's file order (by layer, then by name).</summary>
    private static List<(string Name, long[] Shape)> TensorsOf(string arch, int h, int ff, int layers, int heads, int kv, int hd, int vocab, bool tied)
    {
        var list = new List<(string Name, long[] Shape)> { ("token_embd.weight", [vocab, h]), ("output_norm.weight", [h]) };
        if (!tied) list.Add(("output.weight", [vocab, h]));
        for (int l = 0; l < layers; l++)
        {
            var p = $"blk.{l}.";
            list.Add((p + "attn_norm.weight", [h]));
            list.Add((p + "attn_q.weight", [heads * hd, h]));
            list.Add((p + "attn_k.weight", [kv * hd, h]));
            list.Add((p + "attn_v.weight", [kv * hd, h]));
            list.Add((p + "attn_output.weight", [h, heads * hd]));
            if (arch == "qwen2")
            {
                list.Add((p + "attn_q.bias", [heads * hd]));
                list.Add((p + "attn_k.bias", [kv * hd]));
                list.Add((p + "attn_v.bias", [kv * hd]));
            }
            if (arch == "qwen3")
            {
                list.Add((p + "attn_q_norm.weight", [hd]));
                list.Add((p + "attn_k_norm.weight", [hd]));
            }
            list.Add((p + "ffn_norm.weight", [h]));
            list.Add((p + "ffn_gate.weight", [ff, h]));
            list.Add((p + "ffn_up.weight", [ff, h]));
            list.Add((p + "ffn_down.weight", [h, ff]));
        }
        static int Layer(string n) => n.StartsWith("blk.", StringComparison.Ordinal) ? int.Parse(n.AsSpan(4, n.IndexOf('.', 4) - 4)) : -1;
        return [.. list.OrderBy(t => Layer(t.Name)).ThenBy(t => t.Name, StringComparer.Ordinal)];
    }

    [Theory]
    [MemberData(nameof(ShapeCases))]
    public void Each_tensor_of_a_real_shape_gets_llama_cpps_type(string shape, GgufFileType fileType)
    {
        var s = Shapes[shape];
        var tensors = TensorsOf(s.Arch, s.Hidden, s.Ff, s.Layers, s.Heads, s.KvHeads, s.HeadDim, s.Vocab, s.Tied);
        var expected = GgmlNative.LlamaTensorTypes(s.Arch, s.Hidden, s.Ff, s.Layers, s.Heads, s.KvHeads, s.HeadDim, fileType, tensors);
        var mix = new GgufTypeMix(fileType, s.Arch, s.Layers, s.Heads, s.KvHeads, s.Tied);
        Assert.Equal(
            tensors.Select((t, i) => $"{t.Name}: {expected[i]}"),
            tensors.Select(t => $"{t.Name}: {mix.TypeOf(t.Name, t.Shape).Type}"));
    }

    public static TheoryData<string, GgufFileType> FileCases()
    {
        var data = new TheoryData<string, GgufFileType>();
        foreach (var model in MixModels.Specs.Keys)
            foreach (var ft in Enum.GetValues<GgufFileType>())
                data.Add(model, ft);
        return data;
    }

    [Theory]
    [MemberData(nameof(FileCases))]
    public void Every_tensor_has_the_type_and_bytes_llama_quantize_writes(string model, GgufFileType fileType)
    {
        var reference = models.File($"{model}-{fileType}-llama.gguf");
        var ours = models.File($"{model}-{fileType}-finetune.gguf");
        GgmlNative.LlamaQuantize(models.F32Gguf(model), reference, fileType);
        GgufExporter.Export(models.Dir(model), ours, fileType, model);

        var expected = new GgufTensorTable(reference);
        var actual = new GgufTensorTable(ours);
        Assert.Equal((uint)fileType, expected.Metadata["general.file_type"]);
        Assert.Equal((uint)fileType, actual.Metadata["general.file_type"]);
        Assert.Equal(
            expected.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal).Select(t => $"{t.Name}: {t.Type}"),
            actual.Tensors.Values.OrderBy(t => t.Name, StringComparer.Ordinal).Select(t => $"{t.Name}: {t.Type}"));
        foreach (var name in expected.Tensors.Keys)
            Assert.True(expected.Data(name).SequenceEqual(actual.Data(name)), $"{name} ({actual.Tensors[name].Type}): the bytes differ from llama-quantize's");
    }

    [Fact]
    public void Q4_K_M_gives_attn_v_and_ffn_down_Q6_K_in_the_more_bits_layers()
    {
        var mix = new GgufTypeMix(GgufFileType.Q4_K_M, "qwen3", layers: 28, heads: 16, kvHeads: 8, tiedEmbeddings: true);
        var q6 = Enumerable.Range(0, 28).Where(l => mix.TypeOf($"blk.{l}.attn_v.weight", [1024, 1024]).Type == GgufTensorType.Q6_K);
        // n/8 = 3, 7n/8 = 24: layers 0–2, 24–27, and (l − 3) % 3 == 2 between.
        Assert.Equal([0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27], q6);
        Assert.Equal(GgufTensorType.Q6_K, mix.TypeOf("blk.5.ffn_down.weight", [1024, 3072]).Type);
        Assert.Equal(GgufTensorType.Q4_K, mix.TypeOf("blk.6.ffn_down.weight", [1024, 3072]).Type);
        Assert.Equal(GgufTensorType.Q4_K, mix.TypeOf("blk.6.attn_q.weight", [2048, 1024]).Type);
        Assert.Equal(GgufTensorType.Q6_K, mix.TypeOf("token_embd.weight", [151936, 1024]).Type); // tied: the output's type
        Assert.Equal(GgufTensorType.F32, mix.TypeOf("blk.6.attn_norm.weight", [1024]).Type);
    }

    [Fact]
    public void A_70B_llama_gives_attn_v_Q5_K_where_the_mix_says_Q4_K()
    {
        var mix = new GgufTypeMix(GgufFileType.Q4_K_M, "llama", layers: 80, heads: 64, kvHeads: 8, tiedEmbeddings: false);
        // n/8 = 10: layer 11 is not a "more bits" layer ((11 − 10) % 3 = 1), layer 12 is.
        Assert.Equal(GgufTensorType.Q5_K, mix.TypeOf("blk.11.attn_v.weight", [1024, 8192]).Type);
        Assert.Equal(GgufTensorType.Q6_K, mix.TypeOf("blk.12.attn_v.weight", [1024, 8192]).Type);
        Assert.Equal(GgufTensorType.Q4_K, mix.TypeOf("token_embd.weight", [128256, 8192]).Type); // untied: the default
    }

    [Fact]
    public void Rows_that_hold_no_256_block_fall_back_as_llama_quantize_does()
    {
        var mix = new GgufTypeMix(GgufFileType.Q5_K_M, "qwen2", layers: 24, heads: 14, kvHeads: 2, tiedEmbeddings: true);
        Assert.Equal(new GgufTensorChoice(GgufTensorType.Q5_1, GgufTensorType.Q5_K), mix.TypeOf("blk.9.attn_q.weight", [896, 896]));
        Assert.Equal(new GgufTensorChoice(GgufTensorType.F16, GgufTensorType.Q6_K), mix.TypeOf("blk.0.ffn_down.weight", [896, 4868]));
        Assert.Equal(new GgufTensorChoice(GgufTensorType.Q8_0), mix.TypeOf("token_embd.weight", [151936, 896])); // 896 % 256 ≠ 0: Q8_0 by the mix rule
    }
}
