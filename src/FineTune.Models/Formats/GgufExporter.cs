using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>What an export wrote.</summary>
public sealed record GgufExportResult(string Path, string Architecture, int Tensors, long Bytes, IReadOnlyDictionary<GgufTensorType, int> TensorTypes, IReadOnlyList<string> Notes);

/// <summary>
/// Converts a Hugging Face model directory (llama, mistral, qwen2, qwen3) into one GGUF v3 file that
/// llama.cpp and Ollama load: llama.cpp's architecture names and tensor names, its metadata keys, the
/// tokenizer embedded as tokenizer.ggml.* ("gpt2" byte-level BPE: tokens, token types, merges; or "llama" SentencePiece-style
/// BPE: tokens, scores, token types, add_space_prefix, see <see cref="GgufSentencePiece"/>; special ids, add_bos/add_eos),
/// and llama's Q/K row permutation (llama.cpp rotates interleaved pairs for the llama architecture, HF
/// rotates halves; qwen2/qwen3 use the halves layout in llama.cpp too, so they are written as they are).
/// Streaming: the writer asks for each tensor a chunk of rows at a time; a chunk is read from the memory-mapped
/// safetensors, converted, permuted and quantized into buffers every chunk reuses, so memory holds one chunk, not the model.
/// The file type picks each tensor's type as llama-quantize does (<see cref="GgufTypeMix"/>): 1-D tensors (norms,
/// biases) stay F32, matrices take the mix's type, quantized with ggml's reference quantizers (<see cref="GgmlQuants"/>).
/// </summary>
public static class GgufExporter
{
    /// <summary>llama.cpp's token types (llama_token_type).</summary>
    public const int TokenNormal = 1, TokenUnknown = 2, TokenControl = 3, TokenUserDefined = 4, TokenUnused = 5, TokenByte = 6;

    /// <summary>llama.cpp's architecture name (the table's; mistral models load as llama).</summary>
    public static string ArchitectureName(ModelArchitecture a) => a.Gguf.Architecture;

    /// <summary>HF tensor name of a llama-style model → llama.cpp's (token_embd, blk.N.attn_q, output_norm, output …); null when unknown.</summary>
    public static string? TensorName(string hf) => TensorName(hf, ModelArchitecture.Llama);

    /// <summary>HF tensor name → llama.cpp's, by the family's names in the architecture table; null when unknown.</summary>
    public static string? TensorName(string hf, ModelArchitecture family)
    {
        var n = family.Names;
        if (hf == $"{n.Embedding}.weight") return "token_embd.weight";
        if (hf == $"{n.FinalNorm}.weight") return "output_norm.weight";
        if (hf == $"{n.LmHead}.weight") return "output.weight";
        string layers = n.Layers + ".";
        if (!hf.StartsWith(layers, StringComparison.Ordinal))
            return null;
        int dot = hf.IndexOf('.', layers.Length);
        if (dot < 0 || !int.TryParse(hf.AsSpan(layers.Length, dot - layers.Length), out int layer))
            return null;
        var rest = hf[(dot + 1)..];
        foreach (var (h, g) in family.Gguf.LayerTensors)
            if (rest.StartsWith(h + ".", StringComparison.Ordinal) && rest[(h.Length + 1)..] is "weight" or "bias")
                return $"blk.{layer}.{g}.{rest[(h.Length + 1)..]}";
        return null;
    }

    /// <summary>
    /// Reorders the rows of each head from HF's halves layout [x₀ … x_{d/2−1}, y₀ … y_{d/2−1}] into
    /// llama.cpp's interleaved pairs [x₀, y₀, x₁, y₁, …]: new row h·d + 2i + j ← old row h·d + j·d/2 + i.
    /// Works for weights [heads·d, in] and biases [heads·d] (cols = 1).
    /// </summary>
    public static float[] PermuteForInterleavedRope(ReadOnlySpan<float> w, int heads, int cols)
    {
        var result = new float[w.Length];
        PermuteForInterleavedRope(w, heads, cols, result);
        return result;
    }

    /// <summary>The same permutation into <paramref name="result"/> (as long as <paramref name="w"/>).</summary>
    public static void PermuteForInterleavedRope(ReadOnlySpan<float> w, int heads, int cols, Span<float> result)
    {
        int rows = w.Length / cols, d = rows / heads, half = d / 2;
        if (rows % heads != 0 || d % 2 != 0)
            throw new ArgumentException($"{rows} rows do not split into {heads} heads of even size");
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    w.Slice((h * d + j * half + i) * cols, cols).CopyTo(result.Slice((h * d + 2 * i + j) * cols, cols));
    }

    /// <summary>Exports with every matrix in <paramref name="type"/> (F32, F16, BF16 or Q8_0: the file types of one type).</summary>
    public static GgufExportResult Export(string modelDir, string outputPath, GgufTensorType type, string? modelName = null) =>
        Export(modelDir, outputPath, type switch
        {
            GgufTensorType.F32 => GgufFileType.F32,
            GgufTensorType.F16 => GgufFileType.F16,
            GgufTensorType.BF16 => GgufFileType.BF16,
            GgufTensorType.Q8_0 => GgufFileType.Q8_0,
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "use a GgufFileType for the quantized mixes"),
        }, modelName);

    public static GgufExportResult Export(string modelDir, string outputPath, GgufFileType fileType, string? modelName = null) =>
        Export(modelDir, outputPath, fileType, modelName, GgufWriter.DefaultChunkValues);

    /// <summary>The export with the writer's chunk size given (tests: many chunks per tensor on a tiny model).</summary>
    internal static GgufExportResult Export(string modelDir, string outputPath, GgufFileType fileType, string? modelName, int chunkValues)
    {
        var config = ModelConfig.Load(modelDir);
        var family = config.Architecture;
        var arch = family.Gguf.Architecture;
        var notes = new List<string>();
        var w = new GgufWriter(chunkValues: chunkValues);
        w.Add("general.architecture", arch);
        w.Add("general.type", "model");
        w.Add("general.name", modelName ?? new DirectoryInfo(modelDir).Name);
        w.Add("general.file_type", (uint)fileType);
        w.Add("general.quantization_version", 2u);
        w.Add($"{arch}.vocab_size", (uint)config.VocabSize);
        w.Add($"{arch}.context_length", (uint)config.MaxPositionEmbeddings);
        w.Add($"{arch}.embedding_length", (uint)config.HiddenSize);
        w.Add($"{arch}.block_count", (uint)config.NumHiddenLayers);
        w.Add($"{arch}.feed_forward_length", (uint)config.IntermediateSize);
        w.Add($"{arch}.attention.head_count", (uint)config.NumAttentionHeads);
        w.Add($"{arch}.attention.head_count_kv", (uint)config.NumKeyValueHeads);
        w.Add($"{arch}.attention.key_length", (uint)config.HeadDim);
        w.Add($"{arch}.attention.value_length", (uint)config.HeadDim);
        w.Add($"{arch}.rope.dimension_count", (uint)config.HeadDim);
        w.Add($"{arch}.rope.freq_base", (float)config.RopeTheta);
        w.Add($"{arch}.attention.layer_norm_rms_epsilon", (float)config.RmsNormEps);
        if (config.Moe is { } moe) AddExpertMetadata(w, arch, config, moe, modelDir);
        var ropeTensors = new List<(string Name, float[] Values)>();
        switch (config.RopeScaling)
        {
            case { Type: "longrope" } s:
                {
                    // convert_hf_to_gguf's Phi3: the factors as rope_factors_short/long tensors, the context lengths and
                    // the attention factor transformers derives (√(1 + ln(max/original) / ln(original)) unless given).
                    int original = s.OriginalMaxPositionEmbeddings ?? config.MaxPositionEmbeddings;
                    double scale = s.HasFactor ? s.Factor : (double)config.MaxPositionEmbeddings / original;
                    double attnFactor = s.AttentionFactor ?? (scale <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(scale) / Math.Log(original)));
                    w.Add($"{arch}.rope.scaling.original_context_length", (uint)original);
                    w.Add($"{arch}.rope.scaling.attn_factor", (float)attnFactor);
                    ropeTensors.Add(("rope_factors_long.weight", s.LongFactor!.Select(v => (float)v).ToArray()));
                    ropeTensors.Add(("rope_factors_short.weight", s.ShortFactor!.Select(v => (float)v).ToArray()));
                    break;
                }
            case { Type: "linear" } s:
                w.Add($"{arch}.rope.scaling.type", "linear");
                w.Add($"{arch}.rope.scaling.factor", (float)s.Factor);
                break;
            case { Type: "yarn" } s:
                w.Add($"{arch}.rope.scaling.type", "yarn");
                w.Add($"{arch}.rope.scaling.factor", (float)s.Factor);
                if (s.OriginalMaxPositionEmbeddings is { } omp)
                    w.Add($"{arch}.rope.scaling.original_context_length", (uint)omp);
                break;
            case { Type: "llama3" } s:
                ropeTensors.Add(("rope_freqs.weight", Llama3RopeFactors(config, s)));
                break;
            case { Type: "dynamic" }:
                notes.Add("rope_scaling dynamic has no GGUF equivalent; the file uses unscaled RoPE (set the context in the runtime)");
                break;
        }
        AddInterleavedAttention(w, arch, config, modelDir, notes);
        AddTokenizer(w, modelDir, config, notes);

        using var reader = SafetensorsReader.Open(modelDir);
        var counts = new Dictionary<GgufTensorType, int>();
        int tensors = 0;
        foreach (var (ropeName, freqs) in ropeTensors)
        {
            w.AddTensor(ropeName, [freqs.Length], GgufTensorType.F32, span => FloatConversions.Encode(freqs, SafetensorsDType.F32, span));
            Count(counts, GgufTensorType.F32);
            tensors++;
        }
        // llama.cpp treats the embeddings as tied when the file has no output.weight.
        var mix = new GgufTypeMix(fileType, arch, config.NumHiddenLayers, config.NumAttentionHeads, config.NumKeyValueHeads,
            tiedEmbeddings: !reader.Tensors.ContainsKey($"{family.Names.LmHead}.weight"));
        var fallbacks = new SortedDictionary<(long Row, GgufTensorType From, GgufTensorType To), int>();
        var scratch = new RowScratch();
        var experts = ExpertStacks.Of(reader, family);
        foreach (var info in reader.Tensors.Values.OrderBy(t => t.Name, TensorNameComparer.Instance))
        {
            if (experts.TryGetValue(info.Name, out var stack))
            {
                // Expert 0's tensor stands for the stack [E, rows, cols]; the other experts' tensors are rows of it.
                if (stack is null) continue;
                var stackChoice = mix.TypeOf(stack.GgufName, stack.Shape);
                if (stackChoice.FallbackFrom is { } f)
                    fallbacks[(stack.Shape[^1], f, stackChoice.Type)] = fallbacks.GetValueOrDefault((stack.Shape[^1], f, stackChoice.Type)) + 1;
                w.AddTensor(stack.GgufName, stack.Shape, stackChoice.Type, (first, rows, destination) => stack.EncodeRows(reader, first, rows, stackChoice.Type, scratch, destination));
                Count(counts, stackChoice.Type);
                tensors++;
                continue;
            }
            var ggufName = TensorName(info.Name, family)
                ?? throw new ModelFormatException(info.FilePath, $"tensor \"{info.Name}\" has no GGUF name; FineTune exports the decoder weights of {ModelArchitecture.SupportedList} models only.");
            var name = info.Name;
            var shape = info.Shape;
            var choice = mix.TypeOf(ggufName, shape);
            var tensorType = choice.Type;
            if (choice.FallbackFrom is { } from)
                fallbacks[(shape[^1], from, tensorType)] = fallbacks.GetValueOrDefault((shape[^1], from, tensorType)) + 1;
            var names = family.Names;
            int? permuteHeads = family.Gguf.PermuteQkRows && name.Contains($".{names.Attention}.{names.Q}.", StringComparison.Ordinal) ? config.NumAttentionHeads
                : family.Gguf.PermuteQkRows && name.Contains($".{names.Attention}.{names.K}.", StringComparison.Ordinal) ? config.NumKeyValueHeads
                : null;
            // Weights [heads·d, in] are permuted a whole number of heads at a time; a bias [heads·d] is one row.
            int granule = permuteHeads is not null && shape.Count == 2 ? config.HeadDim : 1;
            // Gemma's (1 + w) norms: llama.cpp multiplies by the stored weight, so the file holds 1 + w (convert_hf_to_gguf.py).
            float addend = name.EndsWith("norm.weight", StringComparison.Ordinal) ? family.Gguf.NormWeightOffset : 0f;
            w.AddTensor(ggufName, shape, tensorType, (first, rows, destination) =>
                EncodeRows(reader, info, first, rows, tensorType, permuteHeads is null ? null : shape.Count == 2 ? rows / config.HeadDim : permuteHeads, addend, scratch, destination),
                granule);
            Count(counts, tensorType);
            tensors++;
        }
        foreach (var ((row, from, to), n) in fallbacks)
            notes.Add(n == 1
                ? $"1 tensor has rows of {row}, not a multiple of {GgmlQuants.BlockSize(from)}: written as {to} instead of {from} (as llama-quantize does)"
                : $"{n} tensors have rows of {row}, not a multiple of {GgmlQuants.BlockSize(from)}: written as {to} instead of {from} (as llama-quantize does)");
        w.Save(outputPath);
        return new GgufExportResult(outputPath, arch, tensors, new FileInfo(outputPath).Length, counts, notes);
    }

    /// <summary>
    /// llama.cpp's expert keys (convert_hf_to_gguf: expert_count, expert_used_count, and for qwen3moe
    /// expert_feed_forward_length). llama.cpp always renormalises the chosen weights and has no dense layers in these
    /// architectures, so a model that differs is refused rather than exported to a file that computes something else.
    /// </summary>
    private static void AddExpertMetadata(GgufWriter w, string arch, ModelConfig config, MoeConfig moe, string modelDir)
    {
        string file = Path.Combine(modelDir, "config.json");
        if (!moe.NormTopKProb)
            throw new ModelFormatException(file, $"\"norm_topk_prob\" is false, but llama.cpp's {arch} always renormalises the top-k router weights; the GGUF would compute another model (set norm_topk_prob: true, as the released Qwen3-MoE checkpoints do, or export hf only).");
        if (Enumerable.Range(0, config.NumHiddenLayers).FirstOrDefault(l => !moe.IsSparse(l), -1) is var dense and >= 0)
            throw new ModelFormatException(file, $"layer {dense} is a dense MLP (mlp_only_layers / decoder_sparse_step), but llama.cpp's {arch} has experts in every layer; export hf only.");
        w.Add($"{arch}.expert_count", (uint)moe.NumExperts);
        w.Add($"{arch}.expert_used_count", (uint)moe.NumExpertsPerTok);
        if (config.Architecture.Experts!.ExpertIntermediateKey is not null)
            w.Add($"{arch}.expert_feed_forward_length", (uint)moe.ExpertIntermediateSize);
    }

    /// <summary>
    /// One of llama.cpp's stacked expert tensors blk.N.ffn_{gate,up,down}_exps [E, rows, cols], made of the hub's
    /// per-expert tensors {mlp}.experts.E.{proj}.weight [rows, cols] in expert order.
    /// </summary>
    private sealed class ExpertStacks(string ggufName, IReadOnlyList<SafetensorsTensorInfo> experts)
    {
        public string GgufName { get; } = ggufName;
        public IReadOnlyList<long> Shape { get; } = [experts.Count, experts[0].Shape[0], experts[0].Shape[1]];

        /// <summary>Per expert tensor name: its stack (expert 0) or null (the others, written as rows of expert 0's stack).</summary>
        public static Dictionary<string, ExpertStacks?> Of(SafetensorsReader reader, ModelArchitecture family)
        {
            var result = new Dictionary<string, ExpertStacks?>(StringComparer.Ordinal);
            if (family.Experts is not { } x) return result;
            var pattern = new System.Text.RegularExpressions.Regex(
                $@"^{System.Text.RegularExpressions.Regex.Escape(family.Names.Layers)}\.(\d+)\.{System.Text.RegularExpressions.Regex.Escape(family.Names.Mlp)}\.{x.ExpertList}\.(\d+)\.(\w+)\.weight$");
            var groups = new Dictionary<(int Layer, string Proj), SortedDictionary<int, SafetensorsTensorInfo>>();
            foreach (var info in reader.Tensors.Values)
                if (pattern.Match(info.Name) is { Success: true } m)
                {
                    var key = (int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), m.Groups[3].Value);
                    if (!groups.TryGetValue(key, out var g)) groups[key] = g = [];
                    g[int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture)] = info;
                }
            foreach (var ((layer, proj), g) in groups)
            {
                string exps = proj == x.Gate ? "ffn_gate_exps" : proj == x.Up ? "ffn_up_exps" : proj == x.Down ? "ffn_down_exps"
                    : throw new ModelFormatException(g.Values.First().FilePath, $"tensor \"{g.Values.First().Name}\" is no expert projection FineTune knows ({x.Gate}, {x.Up}, {x.Down}).");
                var list = g.Values.ToList();
                if (g.Keys.Last() != list.Count - 1 || list.Any(t => !t.Shape.SequenceEqual(list[0].Shape)))
                    throw new ModelFormatException(list[0].FilePath, $"layer {layer}'s {proj} experts are not numbered 0 … {list.Count - 1} with one shape; the checkpoint is incomplete.");
                var stack = new ExpertStacks($"blk.{layer}.{exps}.weight", list);
                result[list[0].Name] = stack;
                foreach (var t in list.Skip(1)) result[t.Name] = null;
            }
            return result;
        }

        private readonly IReadOnlyList<SafetensorsTensorInfo> _experts = experts;

        /// <summary>Rows [first, first + rows) of the stack (row r is row r mod rows_e of expert r / rows_e), encoded.</summary>
        public void EncodeRows(SafetensorsReader reader, long first, int rows, GgufTensorType type, RowScratch scratch, Span<byte> destination)
        {
            long perExpert = Shape[1], rowLength = Shape[2];
            int n = checked((int)(rows * rowLength));
            var values = scratch.Values(n);
            for (long r = first, done = 0; done < rows;)
            {
                var info = _experts[(int)(r / perExpert)];
                long within = r % perExpert;
                int take = (int)Math.Min(rows - done, perExpert - within), elem = info.DType.ElementSize();
                FloatConversions.Decode(reader.GetBytes(info.Name, within * rowLength * elem, checked((int)(take * rowLength * elem))), info.DType,
                    values.Slice((int)(done * rowLength), (int)(take * rowLength)));
                done += take;
                r += take;
            }
            GgmlQuants.Quantize(type, values, rowLength, destination);
        }
    }

    /// <summary>Float buffers that every chunk reuses (the writer asks for one chunk at a time).</summary>
    private sealed class RowScratch
    {
        private float[] _values = [], _permuted = [];
        public Span<float> Values(int n) => (_values.Length >= n ? _values : _values = new float[n]).AsSpan(0, n);
        public Span<float> Permuted(int n) => (_permuted.Length >= n ? _permuted : _permuted = new float[n]).AsSpan(0, n);
    }

    /// <summary>
    /// Rows [first, first + rows) of a safetensors tensor, read from the memory map, converted to float32, permuted for
    /// llama's interleaved RoPE when <paramref name="permuteHeads"/> is set (the heads these rows hold), and encoded.
    /// </summary>
    private static void EncodeRows(SafetensorsReader reader, SafetensorsTensorInfo info, long first, int rows, GgufTensorType type,
        int? permuteHeads, float addend, RowScratch scratch, Span<byte> destination)
    {
        long rowLength = info.Shape[^1];
        int n = checked((int)(rows * rowLength)), elemSize = info.DType.ElementSize();
        var values = scratch.Values(n);
        FloatConversions.Decode(reader.GetBytes(info.Name, first * rowLength * elemSize, n * elemSize), info.DType, values);
        if (addend != 0f) System.Numerics.Tensors.TensorPrimitives.Add(values, addend, values);
        if (permuteHeads is { } heads)
        {
            var permuted = scratch.Permuted(n);
            PermuteForInterleavedRope(values, heads, info.Shape.Count == 2 ? (int)rowLength : 1, permuted);
            values = permuted;
        }
        GgmlQuants.Quantize(type, values, rowLength, destination);
    }

    /// <summary>
    /// Gemma 2/3's attention keys as convert_hf_to_gguf.py writes them: {arch}.attention.sliding_window, and gemma2's
    /// {arch}.attn_logit_softcapping / {arch}.final_logit_softcapping. llama.cpp fixes what the file cannot say — the
    /// local/global pattern (gemma2: alternating, gemma3: every 6th global), gemma3's local rope base (10000) and the
    /// attention scale (head_dim^-½, or (hidden/heads)^-½ for the 27B models) — so a config that differs gets a note.
    /// </summary>
    private static void AddInterleavedAttention(GgufWriter w, string arch, ModelConfig config, string modelDir, List<string> notes)
    {
        if (config.Architecture.Interleaved is not { } d) return;
        // llama.cpp's gemma2 always projects with token_embd (convert_hf_to_gguf.py drops lm_head): an untied head would be lost.
        if (arch == "gemma2" && !config.TieWordEmbeddings)
            throw new ModelFormatException(Path.Combine(modelDir, "config.json"),
                "gemma2 sets tie_word_embeddings: false, but llama.cpp's gemma2 ties the output projection to the token embeddings; a GGUF would drop lm_head. Export the HF format, or train with tie_word_embeddings: true.");
        w.Add($"{arch}.attention.sliding_window", (uint)(config.SlidingWindow ?? d.SlidingWindow));
        if (arch == "gemma2")
        {
            if (config.AttnLogitSoftcapping is { } a) w.Add($"{arch}.attn_logit_softcapping", (float)a);
            if (config.FinalLogitSoftcapping is { } f) w.Add($"{arch}.final_logit_softcapping", (float)f);
        }
        else if (config.AttnLogitSoftcapping is not null || config.FinalLogitSoftcapping is not null)
            notes.Add($"{arch}: llama.cpp applies no logit soft-capping to this architecture; the config's soft-caps are not in the file");
        var pattern = Enumerable.Range(0, config.NumHiddenLayers).Select(i => (i + 1) % d.SlidingWindowPattern != 0 ? "sliding_attention" : "full_attention");
        if (config.LayerTypes is { } types && !types.SequenceEqual(pattern))
            notes.Add($"layer_types differ from {arch}'s fixed pattern (every {d.SlidingWindowPattern}th layer global), which llama.cpp uses");
        if (config.QueryPreAttnScalar is { } q && q != config.HeadDim && q != (double)config.HiddenSize / config.NumAttentionHeads)
            notes.Add($"query_pre_attn_scalar {q} is neither head_dim nor hidden_size / num_attention_heads; llama.cpp scales attention by one of those");
        if (d.LocalRopeTheta is { } local && config.RopeLocalBaseFreq is { } f2 && f2 != local)
            notes.Add($"rope_local_base_freq {f2}: llama.cpp's {arch} rotates local layers with base {local}");
    }

    private static void Count(Dictionary<GgufTensorType, int> counts, GgufTensorType t) => counts[t] = counts.GetValueOrDefault(t) + 1;

    /// <summary>
    /// llama3 rope scaling as a per-frequency divisor tensor (rope_freqs): wavelengths shorter than
    /// original/high_freq_factor keep 1, longer than original/low_freq_factor get the factor, and the band
    /// between blends smoothly: 1 / ((1 − s)/factor + s) with s = (original/λ − low)/(high − low).
    /// </summary>
    public static float[] Llama3RopeFactors(ModelConfig c, RopeScaling s)
    {
        double factor = s.Factor, low = s.LowFreqFactor ?? 1, high = s.HighFreqFactor ?? 4;
        double original = s.OriginalMaxPositionEmbeddings ?? 8192;
        double lowWavelen = original / low, highWavelen = original / high;
        var result = new float[c.HeadDim / 2];
        for (int i = 0; i < result.Length; i++)
        {
            double freq = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / c.HeadDim);
            double wavelen = 2 * Math.PI / freq;
            double f;
            if (wavelen < highWavelen) f = 1;
            else if (wavelen > lowWavelen) f = factor;
            else
            {
                double smooth = (original / wavelen - low) / (high - low);
                f = 1 / ((1 - smooth) / factor + smooth);
            }
            result[i] = (float)f;
        }
        return result;
    }

    private static void AddTokenizer(GgufWriter w, string modelDir, ModelConfig config, List<string> notes)
    {
        var tokPath = Path.Combine(modelDir, "tokenizer.json");
        var tok = HfTokenizerFile.Load(tokPath);
        if (tok.VocabSize > config.VocabSize)
            throw new ModelFormatException(tokPath, $"the tokenizer has {tok.VocabSize} tokens but the model's embedding only {config.VocabSize} rows.");
        var tokens = new string[config.VocabSize];
        for (int i = 0; i < tokens.Length; i++)
            tokens[i] = (i < tok.Tokens.Count ? tok.Tokens[i]?.Content : null) ?? $"[PAD{i}]";
        var types = new int[config.VocabSize];
        if (GgufSentencePiece.IsSentencePieceBpe(tok.Root))
        {
            var layout = GgufSentencePiece.Detect(tokPath, tok.Root);
            for (int i = 0; i < types.Length; i++)
                types[i] = GgufSentencePiece.TokenType(i < tok.Tokens.Count ? tok.Tokens[i] : null, layout.UnknownToken);
            w.Add("tokenizer.ggml.model", "llama");
            w.Add("tokenizer.ggml.tokens", tokens);
            w.Add("tokenizer.ggml.scores", GgufSentencePiece.Scores(tok, config.VocabSize));
            w.Add("tokenizer.ggml.token_type", types);
            w.Add("tokenizer.ggml.add_space_prefix", layout.AddSpacePrefix);
            if (layout.UnknownToken is { } unk && tok.IdOf(unk) is { } unkId)
                w.Add("tokenizer.ggml.unknown_token_id", (uint)unkId);
        }
        else if (tok.ModelType == "BPE")
        {
            var pre = GgufPreTokenizer.Detect(tokPath, tok.Root);
            notes.AddRange(pre.Notes);
            for (int i = 0; i < types.Length; i++)
            {
                var t = i < tok.Tokens.Count ? tok.Tokens[i] : null;
                types[i] = t is null ? TokenUnused : !t.Added ? TokenNormal : t.Special ? TokenControl : TokenUserDefined;
            }
            w.Add("tokenizer.ggml.model", "gpt2");
            w.Add("tokenizer.ggml.pre", pre.Name);
            w.Add("tokenizer.ggml.tokens", tokens);
            w.Add("tokenizer.ggml.token_type", types);
            w.Add("tokenizer.ggml.merges", tok.Merges);
        }
        else
        {
            throw new ModelFormatException(tokPath, $"the tokenizer is {tok.ModelType}; GGUF export supports byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, DeepSeek, …) and SentencePiece-style BPE tokenizers with byte fallback (Llama 2, Mistral v1, Gemma 2/3) only.");
        }

        var tcPath = Path.Combine(modelDir, "tokenizer_config.json");
        var tc = File.Exists(tcPath) ? JsonNode.Parse(File.ReadAllText(tcPath)) as JsonObject : null;
        int? Id(string key) => TokenContent(tc?[key]) is { } s ? tok.IdOf(s) : null;
        var bos = Id("bos_token") ?? config.BosTokenId;
        var eos = Id("eos_token") ?? config.EosTokenId;
        var pad = Id("pad_token") ?? config.PadTokenId;
        if (bos is { } b) w.Add("tokenizer.ggml.bos_token_id", (uint)b);
        if (eos is { } e) w.Add("tokenizer.ggml.eos_token_id", (uint)e);
        if (pad is { } p) w.Add("tokenizer.ggml.padding_token_id", (uint)p);
        w.Add("tokenizer.ggml.add_bos_token", tc?["add_bos_token"] is JsonValue ab && ab.TryGetValue<bool>(out var addBos) && addBos);
        if (tc?["add_eos_token"] is JsonValue ae && ae.TryGetValue<bool>(out var addEos))
            w.Add("tokenizer.ggml.add_eos_token", addEos);
        var template = ChatTemplateOf(modelDir);
        if (template is not null)
            w.Add("tokenizer.chat_template", template);
        else
            notes.Add("no chat template in tokenizer_config.json; the GGUF carries none");
    }

    /// <summary>The Jinja chat template of a model directory (tokenizer_config.json or chat_template.jinja).</summary>
    public static string? ChatTemplateOf(string modelDir)
    {
        var jinja = Path.Combine(modelDir, "chat_template.jinja");
        if (File.Exists(jinja))
            return File.ReadAllText(jinja);
        var tcPath = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(tcPath) || JsonNode.Parse(File.ReadAllText(tcPath)) is not JsonObject tc)
            return null;
        return tc["chat_template"] switch
        {
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonArray named => named.OfType<JsonObject>().FirstOrDefault(o => o["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
            _ => null,
        };
    }

    private static string? TokenContent(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };
}
