using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>What to generate: a small model of one architecture with seeded random weights.</summary>
public sealed record ScratchModelSpec
{
    public ModelArchitecture Architecture { get; init; } = ModelArchitecture.Qwen3;
    public int HiddenSize { get; init; } = 64;
    public int IntermediateSize { get; init; } = 128;
    public int NumHiddenLayers { get; init; } = 2;
    public int NumAttentionHeads { get; init; } = 4;
    public int NumKeyValueHeads { get; init; } = 2;
    public int HeadDim { get; init; } = 16;
    /// <summary>Vocabulary rows of the embedding; default (null) the tokenizer's size. Must not be smaller.</summary>
    public int? VocabSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public double RopeTheta { get; init; } = 1_000_000;
    public double RmsNormEps { get; init; } = 1e-6;
    public bool TieWordEmbeddings { get; init; } = true;
    public int Seed { get; init; }
    /// <summary>Standard deviation of the normal init of weight matrices (HF's initializer_range).</summary>
    public double InitializerRange { get; init; } = 0.02;
    /// <summary>Stored weight type: F32, BF16 or F16.</summary>
    public SafetensorsDType DType { get; init; } = SafetensorsDType.F32;
    /// <summary>The experts of a mixture-of-experts family (qwen3_moe, mixtral): HF's keys; null takes the family's config defaults.</summary>
    public MoeConfig? Moe { get; init; }
    /// <summary>A tokenizer.json to copy (a tokenizer_config.json beside it is copied too); null: the built-in byte-level BPE.</summary>
    public string? TokenizerPath { get; init; }

    // Gemma 2/3 (HF's config keys; null: the family's config-class default).
    public int? SlidingWindow { get; init; }
    /// <summary>"sliding_attention" / "full_attention" per layer; null: the family's pattern.</summary>
    public IReadOnlyList<string>? LayerTypes { get; init; }
    public double? QueryPreAttnScalar { get; init; }
    public double? AttnLogitSoftcapping { get; init; }
    public double? FinalLogitSoftcapping { get; init; }
    public double? RopeLocalBaseFreq { get; init; }
}

/// <summary>
/// Generates a Hugging Face model directory that transformers loads as it is: config.json,
/// model.safetensors, generation_config.json, tokenizer.json and tokenizer_config.json.
/// The same spec gives the same bytes on every machine: weights come from a per-tensor
/// SplitMix64 stream seeded by (seed, tensor name), and the approximately normal values are the
/// Irwin–Hall sum of 12 uniforms minus 6 (mean 0, variance 1), which uses only exact IEEE additions.
/// Norm weights are 1, as HF initialises them; q/k/v biases (qwen2) are random too so that tests
/// comparing implementations exercise them.
/// </summary>
public static class ScratchModel
{
    /// <summary>Special tokens of the built-in tokenizer, in id order after the byte tokens and merges.</summary>
    public static readonly IReadOnlyList<(string Content, bool Special)> BuiltInSpecialTokens =
    [
        ("<|endoftext|>", true),
        ("<|im_start|>", true),
        ("<|im_end|>", true),
        ("<think>", false),
        ("</think>", false),
    ];

    /// <summary>A handful of merges (frequent English pairs) so the BPE merge path is exercised.</summary>
    public static readonly IReadOnlyList<(string Left, string Right)> BuiltInMerges =
    [
        ("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("o", "u"), ("Ġ", "a"), ("r", "e"),
    ];

    /// <summary>The chat template a scratch model of the family carries (the architecture table's).</summary>
    public static string ChatTemplate(ModelArchitecture architecture) => architecture.ScratchChatTemplate;

    /// <summary>Writes the model into <paramref name="outputDirectory"/> (created if needed) and returns its config.</summary>
    public static ModelConfig Generate(ScratchModelSpec spec, string outputDirectory)
    {
        Validate(spec);
        Directory.CreateDirectory(outputDirectory);
        var tokenizerJson = Path.Combine(outputDirectory, "tokenizer.json");
        var tokenizerConfigPath = Path.Combine(outputDirectory, "tokenizer_config.json");
        SpecialIds ids;
        if (spec.TokenizerPath is null)
        {
            AtomicFile.WriteAllText(tokenizerJson, BuiltInTokenizerJson());
            var tok = HfTokenizerFile.Load(tokenizerJson);
            AtomicFile.WriteAllText(tokenizerConfigPath, TokenizerConfigJson(tok, spec.Architecture, "<|im_end|>", "<|endoftext|>", null, spec.MaxPositionEmbeddings));
            ids = new SpecialIds(tok.IdOf("<|endoftext|>"), [tok.IdOf("<|im_end|>")!.Value, tok.IdOf("<|endoftext|>")!.Value], tok.IdOf("<|endoftext|>"), tok.VocabSize);
        }
        else
        {
            ids = CopyTokenizer(spec, tokenizerJson, tokenizerConfigPath);
        }

        int vocab = spec.VocabSize ?? ids.VocabSize;
        if (vocab < ids.VocabSize)
            throw new ArgumentException($"vocab_size {vocab} is smaller than the tokenizer's {ids.VocabSize} tokens; leave vocab_size unset to use the tokenizer's size.");

        var config = new ModelConfig
        {
            Architecture = spec.Architecture,
            HiddenSize = spec.HiddenSize,
            IntermediateSize = spec.IntermediateSize,
            NumHiddenLayers = spec.NumHiddenLayers,
            NumAttentionHeads = spec.NumAttentionHeads,
            NumKeyValueHeads = spec.NumKeyValueHeads,
            HeadDim = spec.HeadDim,
            VocabSize = vocab,
            RmsNormEps = spec.RmsNormEps,
            RopeTheta = spec.RopeTheta,
            TieWordEmbeddings = spec.TieWordEmbeddings,
            // Biases where the family always has them (qwen2's q/k/v); a config-decided bias stays off.
            AttentionBias = spec.Architecture.QkvBias == BiasRule.Always,
            MaxPositionEmbeddings = spec.MaxPositionEmbeddings,
            BosTokenId = ids.Bos,
            PadTokenId = spec.Architecture.ScratchWritesPadTokenId ? ids.Pad : null,
            EosTokenIds = ids.Eos.Count > 0 ? [ids.Eos[0]] : [],
            TorchDtype = spec.DType.ToTorchDtype(),
            InitializerRange = spec.InitializerRange,
            HiddenAct = spec.Architecture.DefaultHiddenAct,
            Extra = spec.Architecture.ScratchExtraConfig.ToDictionary(e => e.Key, e => e.Value()),
            Moe = spec.Architecture.Experts is { } layout ? spec.Moe ?? DefaultMoe(layout, spec.IntermediateSize) : null,
        };
        if (spec.Architecture.Interleaved is { } d)
        {
            if (spec.LayerTypes is { } lt && (lt.Count != spec.NumHiddenLayers || lt.Any(t => t is not ("sliding_attention" or "full_attention"))))
                throw new ArgumentException($"layer_types must list {spec.NumHiddenLayers} entries, each sliding_attention or full_attention.");
            config = config with
            {
                SlidingWindow = spec.SlidingWindow ?? d.SlidingWindow,
                LayerTypes = spec.LayerTypes ?? Enumerable.Range(0, spec.NumHiddenLayers)
                    .Select(i => (i + 1) % d.SlidingWindowPattern != 0 ? "sliding_attention" : "full_attention").ToList(),
                QueryPreAttnScalar = spec.QueryPreAttnScalar ?? d.QueryPreAttnScalar,
                AttnLogitSoftcapping = spec.AttnLogitSoftcapping ?? d.AttnLogitSoftcapping,
                FinalLogitSoftcapping = spec.FinalLogitSoftcapping ?? d.FinalLogitSoftcapping,
                RopeLocalBaseFreq = spec.RopeLocalBaseFreq ?? d.LocalRopeTheta,
            };
        }
        config.Save(Path.Combine(outputDirectory, "config.json"));
        AtomicFile.WriteAllText(Path.Combine(outputDirectory, "generation_config.json"), GenerationConfigJson(ids));

        var writer = new SafetensorsWriter();
        foreach (var (name, shape, init) in TensorLayout(config))
        {
            var values = new float[shape.Aggregate(1L, (a, b) => a * b)];
            if (init == Init.Ones)
                values.AsSpan().Fill(config.Architecture.Block.NormWeightOffset == 0 ? 1f : 0f); // gemma's (1 + w) norms start at w = 0

            else
                FillNormal(values, spec.Seed, name, (float)spec.InitializerRange);
            writer.Add(name, values, shape, spec.DType);
        }
        writer.Save(Path.Combine(outputDirectory, "model.safetensors"));
        return config;
    }

    /// <summary>
    /// A small scratch model's experts when the spec names none: 8 experts, top 2, each of the scratch intermediate_size,
    /// top-k weights renormalised (as the released Qwen3-MoE checkpoints and every mixtral).
    /// </summary>
    private static MoeConfig DefaultMoe(ExpertLayout layout, int intermediate) => new()
    {
        NumExperts = Math.Min(8, layout.DefaultExpertCount),
        NumExpertsPerTok = Math.Min(2, layout.DefaultTopK),
        ExpertIntermediateSize = intermediate,
        NormTopKProb = true,
        RouterAuxLossCoef = layout.DefaultRouterAuxLossCoef,
    };

    private static void Validate(ScratchModelSpec s)
    {
        if (s.Moe is { } moe)
        {
            if (s.Architecture.Experts is not { } layout)
                throw new ArgumentException($"{s.Architecture.ModelType} has no experts; num_experts and the other mixture-of-experts keys are for qwen3_moe and mixtral.");
            if (moe.NumExperts < 1 || moe.NumExpertsPerTok < 1 || moe.NumExpertsPerTok > moe.NumExperts)
                throw new ArgumentException($"num_experts_per_tok ({moe.NumExpertsPerTok}) must be between 1 and {layout.ExpertCountKey} ({moe.NumExperts}).");
            if (moe.ExpertIntermediateSize < 1 || moe.DecoderSparseStep < 1)
                throw new ArgumentException("the experts' intermediate size and decoder_sparse_step must be positive.");
            foreach (int l in moe.MlpOnlyLayers)
                if (l < 0 || l >= s.NumHiddenLayers)
                    throw new ArgumentException($"mlp_only_layers names layer {l}, but the model has layers 0 … {s.NumHiddenLayers - 1}.");
        }
        if (s.HiddenSize <= 0 || s.IntermediateSize <= 0 || s.NumHiddenLayers <= 0 || s.HeadDim <= 0)
            throw new ArgumentException("scratch sizes must be positive.");
        if (s.NumAttentionHeads <= 0 || s.NumKeyValueHeads <= 0 || s.NumAttentionHeads % s.NumKeyValueHeads != 0)
            throw new ArgumentException($"num_attention_heads ({s.NumAttentionHeads}) must be a positive multiple of num_key_value_heads ({s.NumKeyValueHeads}).");
        if (s.HeadDim % 2 != 0)
            throw new ArgumentException($"head_dim ({s.HeadDim}) must be even for rotary embeddings.");
        if (s.DType is not (SafetensorsDType.F32 or SafetensorsDType.BF16 or SafetensorsDType.F16))
            throw new ArgumentException($"scratch weights are stored as F32, BF16 or F16, not {s.DType.HeaderName()}.");
    }

    private enum Init { Normal, Ones }

    /// <summary>HF's tensor names (the architecture table's) and shapes ([out, in] for linear weights) for a config.</summary>
    private static IEnumerable<(string Name, long[] Shape, Init Init)> TensorLayout(ModelConfig c)
    {
        var n = c.Architecture.Names;
        long h = c.HiddenSize, q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, i = c.IntermediateSize;
        yield return ($"{n.Embedding}.weight", [c.VocabSize, h], Init.Normal);
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string pre = n.Layer(l), attn = $"{pre}.{n.Attention}", mlp = $"{pre}.{n.Mlp}";
            yield return ($"{pre}.{n.InputNorm}.weight", [h], Init.Ones);
            // Fused families store q, k, v as one [q + 2·kv, h] matrix (qkv_proj).
            foreach (var (proj, rows) in c.Architecture.Block.FusedQkv ? [(n.Qkv, q + 2 * kv)] : new[] { (n.Q, q), (n.K, kv), (n.V, kv) })
            {
                yield return ($"{attn}.{proj}.weight", [rows, h], Init.Normal);
                if (c.AttentionBias)
                    yield return ($"{attn}.{proj}.bias", [rows], Init.Normal);
            }
            yield return ($"{attn}.{n.O}.weight", [h, q], Init.Normal);
            if (c.HasQkNorm)
            {
                yield return ($"{attn}.{n.QNorm}.weight", [c.HeadDim], Init.Ones);
                yield return ($"{attn}.{n.KNorm}.weight", [c.HeadDim], Init.Ones);
            }
            yield return ($"{pre}.{n.PostAttentionNorm}.weight", [h], Init.Ones);
            if (c.Architecture.Block.NormPlacement == NormPlacement.Sandwich)
            {
                yield return ($"{pre}.{n.PreFeedforwardNorm}.weight", [h], Init.Ones);
                yield return ($"{pre}.{n.PostFeedforwardNorm}.weight", [h], Init.Ones);
            }
            if (c.Moe is { } moe && moe.IsSparse(l) && c.Architecture.Experts is { } x)
            {
                // The hub layout: the router, then gate/up/down per expert (transformers 5 fuses them on load).
                long ei = moe.ExpertIntermediateSize;
                yield return ($"{mlp}.{x.Router}.weight", [moe.NumExperts, h], Init.Normal);
                for (int e = 0; e < moe.NumExperts; e++)
                {
                    yield return ($"{mlp}.{x.ExpertList}.{e}.{x.Gate}.weight", [ei, h], Init.Normal);
                    yield return ($"{mlp}.{x.ExpertList}.{e}.{x.Up}.weight", [ei, h], Init.Normal);
                    yield return ($"{mlp}.{x.ExpertList}.{e}.{x.Down}.weight", [h, ei], Init.Normal);
                }
                continue;
            }
            if (c.Architecture.Block.FusedGateUp)
                yield return ($"{mlp}.{n.GateUp}.weight", [2 * i, h], Init.Normal);
            else
            {
                yield return ($"{mlp}.{n.Gate}.weight", [i, h], Init.Normal);
                yield return ($"{mlp}.{n.Up}.weight", [i, h], Init.Normal);
            }
            yield return ($"{mlp}.{n.Down}.weight", [h, i], Init.Normal);
        }
        yield return ($"{n.FinalNorm}.weight", [h], Init.Ones);
        if (!c.TieWordEmbeddings)
            yield return ($"{n.LmHead}.weight", [c.VocabSize, h], Init.Normal);
    }

    /// <summary>Fills with std·N(0,1)-like values from the stream of (seed, name).</summary>
    public static void FillNormal(Span<float> values, int seed, string tensorName, float std)
    {
        // FNV-1a of the name, mixed with the seed, starts a SplitMix64 stream per tensor.
        ulong state = 14695981039346656037UL;
        foreach (char ch in tensorName)
        {
            state ^= ch;
            state *= 1099511628211UL;
        }
        state ^= (ulong)(uint)seed * 0x9E3779B97F4A7C15UL;
        for (int k = 0; k < values.Length; k++)
        {
            double sum = 0;
            for (int u = 0; u < 12; u++)
                sum += (SplitMix64(ref state) >> 11) * (1.0 / (1UL << 53));
            values[k] = (float)((sum - 6.0) * std);
        }
    }

    private static ulong SplitMix64(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private sealed record SpecialIds(int? Bos, IReadOnlyList<int> Eos, int? Pad, int VocabSize);

    private static SpecialIds CopyTokenizer(ScratchModelSpec spec, string tokenizerJson, string tokenizerConfigPath)
    {
        var source = spec.TokenizerPath!;
        if (Directory.Exists(source))
            source = Path.Combine(source, "tokenizer.json");
        var tok = HfTokenizerFile.Load(source);
        File.Copy(source, tokenizerJson, overwrite: true);
        var sourceConfig = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(source))!, "tokenizer_config.json");
        string? eos, pad, bos;
        if (File.Exists(sourceConfig))
        {
            File.Copy(sourceConfig, tokenizerConfigPath, overwrite: true);
            var cfg = JsonNode.Parse(File.ReadAllText(sourceConfig)) as JsonObject ?? new JsonObject();
            eos = TokenString(cfg["eos_token"]);
            pad = TokenString(cfg["pad_token"]);
            bos = TokenString(cfg["bos_token"]);
        }
        else
        {
            eos = FirstPresent(tok, "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end_of_text|>");
            pad = FirstPresent(tok, "<|endoftext|>", "<pad>", "<|finetune_right_pad_id|>") ?? eos;
            bos = FirstPresent(tok, "<|begin_of_text|>", "<s>");
            AtomicFile.WriteAllText(tokenizerConfigPath, TokenizerConfigJson(tok, spec.Architecture, eos, pad, bos, spec.MaxPositionEmbeddings));
        }
        int? Id(string? t) => t is null ? null : tok.IdOf(t);
        var eosIds = new List<int>();
        if (Id(eos) is { } e) eosIds.Add(e);
        if (Id(FirstPresent(tok, "<|endoftext|>")) is { } eot && !eosIds.Contains(eot)) eosIds.Add(eot);
        return new SpecialIds(Id(bos) ?? Id(pad), eosIds, Id(pad), tok.VocabSize);
    }

    private static string? TokenString(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };

    private static string? FirstPresent(HfTokenizerFile tok, params string[] candidates) =>
        candidates.FirstOrDefault(c => tok.IdOf(c) is not null);

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The built-in tokenizer: 256 byte tokens (id = byte value, GPT-2 byte alphabet), the merges, then the chat tokens.</summary>
    public static string BuiltInTokenizerJson()
    {
        var alphabet = HfTokenizerFile.ByteToUnicode();
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++)
            vocab[alphabet[b].ToString()] = b;
        int next = 256;
        var merges = new JsonArray();
        foreach (var (l, r) in BuiltInMerges)
        {
            vocab[l + r] = next++;
            merges.Add($"{l} {r}");
        }
        var added = new JsonArray();
        foreach (var (content, special) in BuiltInSpecialTokens)
            added.Add(new JsonObject
            {
                ["id"] = next++,
                ["content"] = content,
                ["single_word"] = false,
                ["lstrip"] = false,
                ["rstrip"] = false,
                ["normalized"] = false,
                ["special"] = special,
            });
        JsonObject ByteLevel(bool addPrefixSpace, bool trimOffsets) => new()
        {
            ["type"] = "ByteLevel",
            ["add_prefix_space"] = addPrefixSpace,
            ["trim_offsets"] = trimOffsets,
            ["use_regex"] = true,
        };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = ByteLevel(false, true),
            ["post_processor"] = ByteLevel(false, false),
            ["decoder"] = ByteLevel(false, true),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = false,
                ["byte_fallback"] = false,
                ["ignore_merges"] = false,
                ["vocab"] = vocab,
                ["merges"] = merges,
            },
        };
        return root.ToJsonString(Indented) + "\n";
    }

    private static string TokenizerConfigJson(HfTokenizerFile tok, ModelArchitecture arch, string? eos, string? pad, string? bos, int maxLength)
    {
        var decoder = new JsonObject();
        foreach (var t in tok.Tokens)
            if (t is { Added: true })
                decoder[t.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
                {
                    ["content"] = t.Content,
                    ["lstrip"] = false,
                    ["normalized"] = false,
                    ["rstrip"] = false,
                    ["single_word"] = false,
                    ["special"] = t.Special,
                };
        var root = new JsonObject
        {
            ["add_bos_token"] = false,
            ["add_eos_token"] = false,
            ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = decoder,
            ["bos_token"] = bos,
            ["chat_template"] = ChatTemplate(arch),
            ["clean_up_tokenization_spaces"] = false,
            ["eos_token"] = eos,
            ["errors"] = "replace",
            ["model_max_length"] = maxLength,
            ["pad_token"] = pad,
            ["split_special_tokens"] = false,
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["unk_token"] = null,
        };
        return root.ToJsonString(Indented) + "\n";
    }

    private static string GenerationConfigJson(SpecialIds ids)
    {
        var root = new JsonObject
        {
            ["bos_token_id"] = ids.Bos,
            ["eos_token_id"] = ids.Eos.Count == 1 ? JsonValue.Create(ids.Eos[0]) : new JsonArray(ids.Eos.Select(e => (JsonNode?)JsonValue.Create(e)).ToArray()),
            ["pad_token_id"] = ids.Pad,
        };
        return root.ToJsonString(Indented) + "\n";
    }
}
