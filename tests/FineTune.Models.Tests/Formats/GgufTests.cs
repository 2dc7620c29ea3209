using System.Text;
using System.Text.Json.Nodes;

namespace FineTune.Models.Tests.Formats;

public sealed class GgufTests : IDisposable
{
    private readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void Header_metadata_tensor_info_and_alignment_have_the_exact_bytes()
    {
        var w = new GgufWriter();
        w.Add("general.alignment", 32u);
        w.AddTensor("t", [2], GgufTensorType.F32, span => FloatConversions.Encode([1f, 2f], SafetensorsDType.F32, span));
        using var ms = new MemoryStream();
        w.Write(ms);
        var expected = new List<byte>();
        expected.AddRange("GGUF"u8.ToArray());
        expected.AddRange(BitConverter.GetBytes(3u));
        expected.AddRange(BitConverter.GetBytes(1UL));                    // tensors
        expected.AddRange(BitConverter.GetBytes(1UL));                    // metadata
        expected.AddRange(BitConverter.GetBytes(17UL));
        expected.AddRange("general.alignment"u8.ToArray());
        expected.AddRange(BitConverter.GetBytes(4u));                     // UINT32
        expected.AddRange(BitConverter.GetBytes(32u));
        expected.AddRange(BitConverter.GetBytes(1UL));
        expected.AddRange("t"u8.ToArray());
        expected.AddRange(BitConverter.GetBytes(1u));                     // n_dims
        expected.AddRange(BitConverter.GetBytes(2UL));                    // ne[0]
        expected.AddRange(BitConverter.GetBytes(0u));                     // F32
        expected.AddRange(BitConverter.GetBytes(0UL));                    // offset
        Assert.Equal(90, expected.Count);
        expected.AddRange(new byte[96 - 90]);                             // pad to 32
        expected.AddRange(BitConverter.GetBytes(1f));
        expected.AddRange(BitConverter.GetBytes(2f));
        expected.AddRange(new byte[128 - 104]);
        Assert.Equal(expected.ToArray(), ms.ToArray());
    }

    [Fact]
    public void Q8_0_block_is_f16_scale_and_rounded_int8()
    {
        var x = Enumerable.Range(0, 32).Select(i => i - 16f).ToArray(); // −16 … 15, amax 16
        var bytes = new byte[34];
        GgmlQuants.QuantizeBlocks(GgufTensorType.Q8_0, x, bytes);
        float d = (float)BitConverter.ToHalf(bytes);
        Assert.Equal((float)(Half)(16f / 127f), d);
        Assert.Equal(unchecked((byte)(sbyte)-127), bytes[2]);   // −16 → −127
        Assert.Equal(119, bytes[33]);                          // round(15 · 127/16) = round(119.06)
        var back = new float[32];
        GgmlQuants.Dequantize(GgufTensorType.Q8_0, bytes, back);
        for (int i = 0; i < 32; i++)
            Assert.InRange(Math.Abs(back[i] - x[i]), 0, d / 2 + 1e-3f);
    }

    [Fact]
    public void A_mistral_model_exports_the_gguf_bytes_of_the_llama_model_with_its_weights_and_decodes_alike()
    {
        // Why LlamaCppGenerationTests leaves mistral out: llama.cpp loads it as llama, and FineTune writes the same file,
        // so llama.cpp's decode of one is its decode of the other; FineTune's logits of the two agree to the bit.
        string Export(ModelArchitecture family)
        {
            string dir = _dir.File($"{family.ModelType}/demo");
            ScratchModel.Generate(new ScratchModelSpec { Architecture = family, TieWordEmbeddings = false, Seed = 3 }, dir);
            GgufExporter.Export(dir, _dir.File($"{family.ModelType}.gguf"), GgufTensorType.F16);
            return dir;
        }
        string llama = Export(ModelArchitecture.Llama), mistral = Export(ModelArchitecture.Mistral);
        Assert.Equal("mistral", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(mistral, "config.json")))!["model_type"]);
        byte[] a = File.ReadAllBytes(_dir.File("llama.gguf")), b = File.ReadAllBytes(_dir.File("mistral.gguf"));
        Assert.True(a.Length > 100_000, $"{a.Length} bytes");
        Assert.Equal(a, b);
        float[] Logits(string dir)
        {
            using var model = CausalLM.Load(dir, new FineTune.Engine.Cpu.CpuBackend(1), TrainingSetup.Inference);
            return model.ForwardLogits(TinyModels.PackedBatch());
        }
        Assert.Equal(Logits(llama), Logits(mistral));
    }

    [Fact]
    public void Llama_rope_permutation_interleaves_the_halves_of_each_head()
    {
        // 2 heads of 4 rows, 1 column: [a0 a1 b0 b1 | c0 c1 d0 d1] → [a0 b0 a1 b1 | c0 d0 c1 d1]
        float[] w = [0, 1, 10, 11, 20, 21, 30, 31];
        Assert.Equal(new float[] { 0, 10, 1, 11, 20, 30, 21, 31 }, GgufExporter.PermuteForInterleavedRope(w, 2, 1));
    }

    [Theory]
    [InlineData("model.embed_tokens.weight", "token_embd.weight")]
    [InlineData("model.layers.3.self_attn.q_proj.weight", "blk.3.attn_q.weight")]
    [InlineData("model.layers.0.self_attn.k_proj.bias", "blk.0.attn_k.bias")]
    [InlineData("model.layers.12.self_attn.o_proj.weight", "blk.12.attn_output.weight")]
    [InlineData("model.layers.1.self_attn.q_norm.weight", "blk.1.attn_q_norm.weight")]
    [InlineData("model.layers.1.post_attention_layernorm.weight", "blk.1.ffn_norm.weight")]
    [InlineData("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight")]
    [InlineData("model.norm.weight", "output_norm.weight")]
    [InlineData("lm_head.weight", "output.weight")]
    public void Tensor_names_follow_llama_cpp(string hf, string gguf) => Assert.Equal(gguf, GgufExporter.TensorName(hf));

    private static float[] ReadTensor(string file, JsonObject parsed, string name, int count)
    {
        var info = parsed["tensorInfos"]!.AsArray().Single(t => t!["name"]!.GetValue<string>() == name)!;
        long start = parsed["tensorDataOffset"]!.GetValue<long>() + info["offset"]!.GetValue<long>();
        var bytes = File.ReadAllBytes(file);
        var values = new float[count];
        switch (info["dtype"]!.GetValue<int>())
        {
            case 0: FloatConversions.Decode(bytes.AsSpan((int)start, count * 4), SafetensorsDType.F32, values); break;
            case 1: FloatConversions.Decode(bytes.AsSpan((int)start, count * 2), SafetensorsDType.F16, values); break;
            case 30: FloatConversions.Decode(bytes.AsSpan((int)start, count * 2), SafetensorsDType.BF16, values); break;
            case 8: GgmlQuants.Dequantize(GgufTensorType.Q8_0, bytes.AsSpan((int)start, count / 32 * 34), values); break;
        }
        return values;
    }

    [Fact]
    public void Qwen3_f16_export_parses_with_the_expected_metadata_and_tensors()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 4 }, _dir.File("m"));
        var result = GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.F16, "tiny");
        var g = NodeFixtures.ReadGguf(_dir.File("m.gguf"));
        var md = g["metadata"]!;
        Assert.Equal(3, md["version"]!.GetValue<int>());
        Assert.Equal("qwen3", md["general.architecture"]!.GetValue<string>());
        Assert.Equal("tiny", md["general.name"]!.GetValue<string>());
        Assert.Equal(1, md["general.file_type"]!.GetValue<int>());
        Assert.Equal(2, md["qwen3.block_count"]!.GetValue<int>());
        Assert.Equal(2048, md["qwen3.context_length"]!.GetValue<int>());
        Assert.Equal(64, md["qwen3.embedding_length"]!.GetValue<int>());
        Assert.Equal(128, md["qwen3.feed_forward_length"]!.GetValue<int>());
        Assert.Equal(4, md["qwen3.attention.head_count"]!.GetValue<int>());
        Assert.Equal(2, md["qwen3.attention.head_count_kv"]!.GetValue<int>());
        Assert.Equal(16, md["qwen3.attention.key_length"]!.GetValue<int>());
        Assert.Equal(16, md["qwen3.attention.value_length"]!.GetValue<int>());
        Assert.Equal(1e6, md["qwen3.rope.freq_base"]!.GetValue<double>());
        Assert.Equal(1e-6, md["qwen3.attention.layer_norm_rms_epsilon"]!.GetValue<double>(), 1e-12);
        Assert.Equal("gpt2", md["tokenizer.ggml.model"]!.GetValue<string>());
        Assert.Equal("gpt-2", md["tokenizer.ggml.pre"]!.GetValue<string>());
        Assert.Equal(269, md["tokenizer.ggml.tokens"]!.AsArray().Count);
        Assert.Equal("Ġt", md["tokenizer.ggml.tokens"]![256]!.GetValue<string>());
        Assert.Equal(3, md["tokenizer.ggml.token_type"]![266]!.GetValue<int>());  // <|im_end|>: control
        Assert.Equal(4, md["tokenizer.ggml.token_type"]![267]!.GetValue<int>());  // <think>: user-defined
        Assert.Equal("Ġ t", md["tokenizer.ggml.merges"]![0]!.GetValue<string>());
        Assert.Equal(266, md["tokenizer.ggml.eos_token_id"]!.GetValue<int>());
        Assert.Equal(264, md["tokenizer.ggml.padding_token_id"]!.GetValue<int>());
        Assert.Contains("<|im_start|>", md["tokenizer.chat_template"]!.GetValue<string>());
        Assert.Equal(new JsonArray(9, 8).ToJsonString(), g["types"]!["tokenizer.ggml.tokens"]!.ToJsonString()); // ARRAY of STRING

        var infos = g["tensorInfos"]!.AsArray();
        Assert.Equal(result.Tensors, infos.Count);
        Assert.Equal(2 + 2 * 11, infos.Count); // token_embd, output_norm, 11 per layer (tied: no output.weight)
        var embd = infos.Single(t => t!["name"]!.GetValue<string>() == "token_embd.weight")!;
        Assert.Equal("[64,269]", embd["shape"]!.ToJsonString());
        Assert.Equal(1, embd["dtype"]!.GetValue<int>());
        Assert.Equal(0, infos.Single(t => t!["name"]!.GetValue<string>() == "blk.1.attn_k_norm.weight")!["dtype"]!.GetValue<int>());
        Assert.All(infos, t => Assert.Equal(0, t!["offset"]!.GetValue<long>() % 32));

        using var source = SafetensorsReader.Open(_dir.File("m"));
        var src = source.ReadAsFloat32("model.layers.1.mlp.down_proj.weight");
        var back = ReadTensor(_dir.File("m.gguf"), g, "blk.1.ffn_down.weight", src.Length);
        Assert.Equal(src.Select(v => (float)(Half)v).ToArray(), back);
    }

    [Fact]
    public void Q8_0_export_dequantizes_within_half_a_step_of_the_source()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 5 }, _dir.File("m"));
        GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.Q8_0);
        var g = NodeFixtures.ReadGguf(_dir.File("m.gguf"));
        Assert.Equal(7, g["metadata"]!["general.file_type"]!.GetValue<int>());
        using var source = SafetensorsReader.Open(_dir.File("m"));
        var src = source.ReadAsFloat32("model.layers.0.self_attn.v_proj.weight");
        var back = ReadTensor(_dir.File("m.gguf"), g, "blk.0.attn_v.weight", src.Length);
        double worst = 0;
        for (int b = 0; b < src.Length / 32; b++)
        {
            float step = src.Skip(b * 32).Take(32).Max(Math.Abs) / 127f;
            for (int i = b * 32; i < b * 32 + 32; i++)
            {
                double err = Math.Abs(back[i] - src[i]);
                // Q8_0's error: half a quantisation step, plus the f16 rounding of the scale (≤ 2⁻¹¹ relative) times |q| ≤ 127.
                double bound = step * (0.5 + 127 * Math.Pow(2, -11)) + 1e-7;
                Assert.True(err <= bound, $"element {i}: |{back[i]} − {src[i]}| > {bound}");
                worst = Math.Max(worst, err / step);
            }
        }
        Assert.InRange(worst, 0.4, 0.5 + 127 * Math.Pow(2, -11));
    }

    [Fact]
    public void Q4_K_M_export_of_rows_below_256_says_which_tensors_fell_back()
    {
        ScratchModel.Generate(new ScratchModelSpec { Seed = 6 }, _dir.File("m")); // hidden 64, intermediate 128
        var result = GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufFileType.Q4_K_M);
        Assert.Equal(
        [
            "11 tensors have rows of 64, not a multiple of 256: written as Q5_0 instead of Q4_K (as llama-quantize does)",
            "1 tensor has rows of 64, not a multiple of 256: written as Q8_0 instead of Q6_K (as llama-quantize does)",
            "1 tensor has rows of 128, not a multiple of 256: written as Q5_0 instead of Q4_K (as llama-quantize does)",
            "1 tensor has rows of 128, not a multiple of 256: written as Q8_0 instead of Q6_K (as llama-quantize does)",
        ], result.Notes.Where(n => n.Contains("rows of", StringComparison.Ordinal)));
        // The tied embeddings' rows of 64 hold no 256 block either: Q8_0 by the mix's own rule.
        Assert.Equal(new Dictionary<GgufTensorType, int> { [GgufTensorType.F32] = 9, [GgufTensorType.Q5_0] = 12, [GgufTensorType.Q8_0] = 3 },
            result.TensorTypes.ToDictionary());
        Assert.Equal(15, NodeFixtures.ReadGguf(_dir.File("m.gguf"))["metadata"]!["general.file_type"]!.GetValue<int>());
    }

    [Fact]
    public void Writer_asks_each_tensor_for_row_chunks_in_order_into_one_buffer_after_the_header()
    {
        // 256 values a chunk: a [10, 64] F32 tensor comes in 4 + 4 + 2 rows; a [6, 96] Q8_0 one with a granule of 3 rows
        // (more than 256 / 96) in 3 + 3; a 1-D tensor is one row.
        var w = new GgufWriter(chunkValues: 256);
        var calls = new List<(string Tensor, long First, int Rows, int Bytes, nint Address, long Written)>();
        using var ms = new MemoryStream();
        GgufRowSource Source(string name, int rowLength, GgufTensorType type) => (first, rows, destination) =>
        {
            nint address;
            unsafe { fixed (byte* p = destination) address = (nint)p; }
            calls.Add((name, first, rows, destination.Length, address, ms.Length));
            var values = new float[rows * rowLength];
            for (int i = 0; i < values.Length; i++)
                values[i] = (float)Math.Sin(first * rowLength + i);
            GgmlQuants.Quantize(type, values, rowLength, destination);
        };
        w.AddTensor("a", [10, 64], GgufTensorType.F32, Source("a", 64, GgufTensorType.F32));
        w.AddTensor("b", [6, 96], GgufTensorType.Q8_0, Source("b", 96, GgufTensorType.Q8_0), rowGranule: 3);
        w.AddTensor("c", [40], GgufTensorType.F16, Source("c", 40, GgufTensorType.F16));
        w.Write(ms);

        Assert.Equal(new (string, long, int, int)[] { ("a", 0, 4, 1024), ("a", 4, 4, 1024), ("a", 8, 2, 512), ("b", 0, 3, 306), ("b", 3, 3, 306), ("c", 0, 1, 80) },
            calls.Select(c => (c.Tensor, c.First, c.Rows, c.Bytes)).ToArray());
        Assert.Single(calls.Select(c => c.Address).Distinct());
        // Data: a 2,560 bytes, b 612 padded to 640, c 80 padded to 96; nothing of it was written before the first chunk.
        long dataStart = ms.Length - (2560 + 640 + 96);
        Assert.Equal(0, dataStart % 32);
        Assert.Equal(dataStart, calls[0].Written);
        var a = new float[640];
        FloatConversions.Decode(ms.ToArray().AsSpan((int)dataStart, 2560), SafetensorsDType.F32, a);
        Assert.Equal(Enumerable.Range(0, 640).Select(i => (float)Math.Sin(i)).ToArray(), a);
    }

    [Fact]
    public void Llama_export_in_chunks_of_one_head_writes_the_bytes_of_the_default_chunks()
    {
        // k_proj [32, 64] holds 2 heads of 16 rows: 1,024 values a chunk permutes one head at a time.
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Llama, TieWordEmbeddings = false, NumHiddenLayers = 1 }, _dir.File("m"));
        GgufExporter.Export(_dir.File("m"), _dir.File("whole.gguf"), GgufFileType.Q8_0, "m");
        GgufExporter.Export(_dir.File("m"), _dir.File("chunked.gguf"), GgufFileType.Q8_0, "m", chunkValues: 1024);
        Assert.Equal(File.ReadAllBytes(_dir.File("whole.gguf")), File.ReadAllBytes(_dir.File("chunked.gguf")));
    }

    [Fact]
    public void Llama_export_permutes_q_and_k_rows()
    {
        ScratchModel.Generate(new ScratchModelSpec { Architecture = ModelArchitecture.Llama, TieWordEmbeddings = false, NumHiddenLayers = 1 }, _dir.File("m"));
        GgufExporter.Export(_dir.File("m"), _dir.File("m.gguf"), GgufTensorType.BF16);
        var g = NodeFixtures.ReadGguf(_dir.File("m.gguf"));
        Assert.Equal("llama", g["metadata"]!["general.architecture"]!.GetValue<string>());
        Assert.Equal(16, g["metadata"]!["llama.rope.dimension_count"]!.GetValue<int>());
        Assert.Contains(g["tensorInfos"]!.AsArray(), t => t!["name"]!.GetValue<string>() == "output.weight");
        using var source = SafetensorsReader.Open(_dir.File("m"));
        var k = source.ReadAsFloat32("model.layers.0.self_attn.k_proj.weight");
        var back = ReadTensor(_dir.File("m.gguf"), g, "blk.0.attn_k.weight", k.Length);
        var permuted = GgufExporter.PermuteForInterleavedRope(k, 2, 64);
        Assert.Equal(permuted.Select(v => FloatConversions.BFloat16ToSingle(FloatConversions.SingleToBFloat16(v))).ToArray(), back);
        var v0 = source.ReadAsFloat32("model.layers.0.self_attn.v_proj.weight");
        Assert.Equal(v0.Select(v => FloatConversions.BFloat16ToSingle(FloatConversions.SingleToBFloat16(v))).ToArray(),
            ReadTensor(_dir.File("m.gguf"), g, "blk.0.attn_v.weight", v0.Length));
    }

    [Fact]
    public void Modelfile_has_from_the_template_given_stops_once_each_and_system()
    {
        var text = OllamaModelfile.Build("model-q8_0.gguf", "{{ range .Messages }}{{ .Content }}{{ end }}", ["<|im_end|>", "<|endoftext|>", "<|im_end|>", "say \"stop\""], "You are FineTune.");
        Assert.Equal(
            "FROM ./model-q8_0.gguf\n" +
            "TEMPLATE \"\"\"{{ range .Messages }}{{ .Content }}{{ end }}\"\"\"\n" +
            "PARAMETER stop \"<|im_end|>\"\n" +
            "PARAMETER stop \"<|endoftext|>\"\n" +
            "PARAMETER stop \"say \\\"stop\\\"\"\n" +
            "SYSTEM \"\"\"You are FineTune.\"\"\"\n", text);
    }
}
