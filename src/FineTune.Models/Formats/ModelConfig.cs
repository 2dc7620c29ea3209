using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Models;

/// <summary>
/// RoPE scaling as Hugging Face writes it under <c>rope_scaling</c> (transformers 4.x) or
/// <c>rope_parameters</c> (transformers 5.x). <see cref="Type"/> is linear | dynamic | yarn | llama3 | longrope ("su" reads as longrope).
/// </summary>
public sealed record RopeScaling
{
    public required string Type { get; init; }
    public double Factor { get; init; } = 1.0;
    /// <summary>Whether config.json gave the factor (longrope derives it from the context lengths when not).</summary>
    public bool HasFactor { get; init; }
    /// <summary>longrope: the per-frequency divisors of inv_freq up to and beyond original_max_position_embeddings.</summary>
    public IReadOnlyList<double>? ShortFactor { get; init; }
    public IReadOnlyList<double>? LongFactor { get; init; }
    /// <summary>yarn, llama3 and dynamic: the context length the model was pre-trained with.</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }
    /// <summary>llama3: wavelengths above original/low_freq_factor are divided by the factor.</summary>
    public double? LowFreqFactor { get; init; }
    /// <summary>llama3: wavelengths below original/high_freq_factor are kept.</summary>
    public double? HighFreqFactor { get; init; }
    /// <summary>yarn: the ramp's fast and slow boundaries (HF defaults 32 and 1).</summary>
    public double? BetaFast { get; init; }
    public double? BetaSlow { get; init; }
    /// <summary>yarn: the attention temperature; HF's default is 0.1·ln(factor)+1.</summary>
    public double? AttentionFactor { get; init; }

    public static readonly IReadOnlyList<string> KnownTypes = ["linear", "dynamic", "yarn", "llama3", "longrope"];
}

/// <summary>
/// Where a Gemma3ForConditionalGeneration checkpoint keeps its language model: HF text-model names model.X and
/// lm_head.weight are stored as language_model.model.X / language_model.lm_head.weight (transformers 4) or
/// model.language_model.X / lm_head.weight (transformers 5).
/// </summary>
public sealed record LanguageModelWeights
{
    /// <summary>The stored names to try for a text-model tensor name, in order.</summary>
    public IEnumerable<string> StoredNames(string name)
    {
        if (name.StartsWith("model.", StringComparison.Ordinal))
        {
            yield return "language_model." + name;
            yield return "model.language_model." + name["model.".Length..];
        }
        else
        {
            yield return "language_model." + name;
            yield return name;
        }
    }
}

/// <summary>
/// The mixture-of-experts keys of a config.json (qwen3_moe: num_experts, num_experts_per_tok, moe_intermediate_size,
/// norm_topk_prob, decoder_sparse_step, mlp_only_layers; mixtral: num_local_experts, num_experts_per_tok with the
/// experts of intermediate_size and renormalised top-k weights), with router_aux_loss_coef and output_router_logits.
/// </summary>
public sealed record MoeConfig
{
    public required int NumExperts { get; init; }
    public required int NumExpertsPerTok { get; init; }
    public required int ExpertIntermediateSize { get; init; }
    public bool NormTopKProb { get; init; }
    public int DecoderSparseStep { get; init; } = 1;
    public IReadOnlyList<int> MlpOnlyLayers { get; init; } = [];
    public double RouterAuxLossCoef { get; init; } = 0.001;
    public bool OutputRouterLogits { get; init; }
    /// <summary>mixtral's router_jitter_noise (multiplicative noise on the router input while training; 0 = none).</summary>
    public double RouterJitterNoise { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> is a mixture of experts (Qwen3MoeDecoderLayer's rule; mixtral: every layer).</summary>
    public bool IsSparse(int layer) => !MlpOnlyLayers.Contains(layer) && NumExperts > 0 && (layer + 1) % DecoderSparseStep == 0;

    /// <summary>Every config.json key this record stands for, under the family's names.</summary>
    public static IEnumerable<string> Keys(ExpertLayout layout) =>
    [
        "num_experts", "num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "output_router_logits",
        .. layout.ExpertIntermediateKey is { } k ? [k] : Array.Empty<string>(),
        .. layout.NormTopKFromConfig ? ["norm_topk_prob"] : Array.Empty<string>(),
        .. layout.SparseLayersFromConfig ? ["decoder_sparse_step", "mlp_only_layers"] : Array.Empty<string>(),
        .. layout.MoeModule is not null ? ["router_jitter_noise"] : Array.Empty<string>(),
    ];
}

/// <summary>
/// A Hugging Face <c>config.json</c> of a family in <see cref="ModelArchitecture.All"/>, with the defaults
/// that transformers applies when a key is absent (the family's <see cref="ModelArchitecture"/> holds them). Keys FineTune does not model are kept in
/// <see cref="Extra"/> so that <see cref="Save"/> writes them back.
/// </summary>
public sealed record ModelConfig
{
    public required ModelArchitecture Architecture { get; init; }
    public required int HiddenSize { get; init; }
    public required int IntermediateSize { get; init; }
    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int VocabSize { get; init; }
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Bias on q/k/v (and, for llama's attention_bias, o) projections. Qwen2 always has q/k/v biases.</summary>
    public bool AttentionBias { get; init; }
    /// <summary>llama's mlp_bias: biases on gate/up/down.</summary>
    public bool MlpBias { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public string HiddenAct { get; init; } = "silu";
    public int? BosTokenId { get; init; }
    /// <summary>All end-of-sequence ids (config.json may hold one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public int? PadTokenId { get; init; }
    /// <summary>bfloat16 | float16 | float32 (torch_dtype, or dtype in transformers 5).</summary>
    public string TorchDtype { get; init; } = "float32";
    public double InitializerRange { get; init; } = 0.02;
    /// <summary>Gemma 2/3: query_pre_attn_scalar (scores scaled by its ^-½); null for the other families.</summary>
    public double? QueryPreAttnScalar { get; init; }
    /// <summary>Gemma 2/3: sliding_window, the keys a local layer sees (p − j &lt; window).</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Gemma 2/3: per layer "sliding_attention" or "full_attention" (layer_types, or the family's pattern).</summary>
    public IReadOnlyList<string>? LayerTypes { get; init; }
    /// <summary>Gemma: attn_logit_softcapping and final_logit_softcapping (null: no capping).</summary>
    public double? AttnLogitSoftcapping { get; init; }
    public double? FinalLogitSoftcapping { get; init; }
    /// <summary>Gemma 3: rope_local_base_freq, the rope base of the local layers (null: they use rope_theta).</summary>
    public double? RopeLocalBaseFreq { get; init; }
    /// <summary>
    /// A Gemma3ForConditionalGeneration directory (model_type gemma3): the prefixes its language model's weights carry
    /// ("language_model." before model.* and lm_head, or transformers 5's "model.language_model." for model.*); null for
    /// a text-only model. Saving writes the text model alone (model_type gemma3_text).
    /// </summary>
    public LanguageModelWeights? LanguageModelWeights { get; init; }
    /// <summary>The experts of a mixture-of-experts family (null for dense families).</summary>
    public MoeConfig? Moe { get; init; }
    /// <summary>Keys of config.json that FineTune does not interpret, written back by <see cref="Save"/>.</summary>
    public IReadOnlyDictionary<string, JsonNode?> Extra { get; init; } = new Dictionary<string, JsonNode?>();

    public int? EosTokenId => EosTokenIds.Count > 0 ? EosTokenIds[0] : null;

    /// <summary>The family's per-head RMSNorm on queries and keys (q_norm, k_norm).</summary>
    public bool HasQkNorm => Architecture.Block.QkNorm;

    /// <summary>HF's model_type string: llama, qwen2, qwen3, mistral.</summary>
    public string ModelType => Architecture.ModelType;

    /// <summary>HF's class name in "architectures", e.g. Qwen3ForCausalLM.</summary>
    public string ArchitectureClassName => Architecture.ClassName;

    public static string ModelTypeOf(ModelArchitecture architecture) => architecture.ModelType;

    /// <summary>The family of a model_type (case-insensitive); null when unknown.</summary>
    public static ModelArchitecture? ParseArchitecture(string modelType) => ModelArchitecture.Find(modelType);

    /// <summary>The most FineTune reads of a config.json (they hold sizes and names, a few KB).</summary>
    public const long MaxConfigBytes = 16L << 20;

    /// <summary>Reads config.json from a file or from a model directory.</summary>
    public static ModelConfig Load(string path)
    {
        var file = Directory.Exists(path) ? Path.Combine(path, "config.json") : path;
        if (!File.Exists(file))
            throw new ModelFormatException(file, "config.json not found; a Hugging Face model directory needs one (download the model again or point to the right directory).");
        var obj = JsonInput.ReadObject(file, MaxConfigBytes, "config.json must be a regular JSON file (download the model again).");
        return FromJson(obj, file);
    }

    /// <summary>Interprets a parsed config.json; <paramref name="file"/> is used in error messages.</summary>
    public static ModelConfig FromJson(JsonObject obj, string file)
    {
        var reader = new ConfigReader(obj, file);
        var modelType = reader.String("model_type");
        // Gemma 3's multimodal checkpoints: the language model is text_config (a Gemma3TextConfig); FineTune trains it alone.
        if (modelType == "gemma3")
            return ConditionalGeneration(obj, file);
        if (modelType is null)
            throw new ModelFormatException(file, $"missing \"model_type\"; FineTune supports {ModelArchitecture.SupportedList} models.");
        var arch = ParseArchitecture(modelType)
            ?? throw new ModelFormatException(file, $"unsupported architecture \"{modelType}\" (model_type); FineTune supports {ModelArchitecture.SupportedList} models.");

        // Bounds well above every released model: a value outside them is a broken or hostile file, which would
        // otherwise pass download and fail in training with a negative dimension or an allocation of petabytes.
        int hidden = reader.Range("hidden_size", reader.RequiredInt("hidden_size"), 1, MaxHiddenSize);
        int heads = reader.Range("num_attention_heads", reader.RequiredInt("num_attention_heads"), 1, MaxHeads);
        int layers = reader.Range("num_hidden_layers", reader.RequiredInt("num_hidden_layers"), 1, MaxLayers);
        int intermediate = reader.Range("intermediate_size", reader.RequiredInt("intermediate_size"), 1, MaxIntermediateSize);
        int kvHeads = reader.Range("num_key_value_heads", reader.Int("num_key_value_heads") ?? heads, 1, MaxHeads);
        if (heads % kvHeads != 0)
            throw new ModelFormatException(file, $"\"num_key_value_heads\" ({kvHeads}) must divide \"num_attention_heads\" ({heads}): each key/value head serves a whole group of query heads.");
        int headDim;
        if (reader.Int("head_dim") is { } hd)
        {
            headDim = reader.Range("head_dim", hd, 2, MaxHeadDim);
            if (headDim % 2 != 0)
                throw new ModelFormatException(file, $"\"head_dim\" must be even (RoPE rotates pairs of dimensions), got {headDim}.");
        }
        else if (arch.DefaultHeadDim is { } defaultHeadDim)
            headDim = defaultHeadDim; // the family's config class default (Qwen3Config: 128); the others use hidden_size / num_attention_heads.
        else
        {
            if (hidden % heads != 0)
                throw new ModelFormatException(file, $"\"hidden_size\" ({hidden}) is not divisible by \"num_attention_heads\" ({heads}); set \"head_dim\".");
            headDim = hidden / heads;
            if (headDim % 2 != 0)
                throw new ModelFormatException(file, $"the head dimension \"hidden_size\" / \"num_attention_heads\" = {headDim} must be even (RoPE rotates pairs of dimensions); set \"head_dim\".");
        }
        int vocab = reader.Range("vocab_size", reader.Int("vocab_size") ?? arch.DefaultVocabSize, 1, MaxVocabSize);
        int maxPositions = reader.Range("max_position_embeddings", reader.Int("max_position_embeddings") ?? arch.DefaultMaxPositionEmbeddings, 1, MaxPositions);

        // transformers 5 moved rope_theta and rope_scaling into rope_parameters; read both layouts.
        var ropeParams = obj["rope_parameters"] as JsonObject;
        // Gemma 3 in transformers 5: rope_parameters per layer type; the global layers' entry is the model's rope.
        JsonObject? localRopeParams = null;
        if (ropeParams?["full_attention"] is JsonObject fullRope)
        {
            localRopeParams = ropeParams["sliding_attention"] as JsonObject;
            ropeParams = fullRope;
        }
        var ropeParamsReader = ropeParams is null ? null : new ConfigReader(ropeParams, file, "rope_parameters.");
        double ropeTheta = reader.Double("rope_theta") is { } rt ? reader.Range("rope_theta", rt, 1, false, MaxRopeTheta, true, "(1, 1e+12]")
            : ropeParamsReader?.Double("rope_theta") is { } rpt ? ropeParamsReader.Range("rope_theta", rpt, 1, false, MaxRopeTheta, true, "(1, 1e+12]")
            : arch.DefaultRopeTheta;
        var scalingObj = obj["rope_scaling"] as JsonObject;
        var scaling = scalingObj is not null ? ParseRopeScaling(scalingObj, file, "rope_scaling.")
            : ropeParams is not null ? ParseRopeScaling(ropeParams, file, "rope_parameters.")
            : null;
        double rmsNormEps = reader.Double("rms_norm_eps") is { } eps ? reader.Range("rms_norm_eps", eps, 0, false, 1, false, "(0, 1)") : arch.DefaultRmsNormEps;
        if (scaling is { Type: "longrope" })
            scaling = CheckLongRope(scaling, reader, file, scalingObj is not null ? "rope_scaling." : "rope_parameters.", headDim, maxPositions);
        double initializerRange = reader.Double("initializer_range") is { } ir ? reader.Range("initializer_range", ir, 0, true, 1, true, "[0, 1]") : 0.02;

        // The family's rule (Qwen2Attention builds q/k/v with bias=True whatever the config says; mistral never has biases).
        bool attentionBias = arch.QkvBias switch
        {
            BiasRule.Always => true,
            BiasRule.Never => false,
            _ => reader.Bool("attention_bias") ?? false,
        };

        var moe = arch.Experts is { } layout ? ParseMoe(reader, layout, file, layers, intermediate) : null;

        var known = new HashSet<string>(StringComparer.Ordinal)
        {
            "model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "rms_norm_eps",
            "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "attention_bias", "mlp_bias",
            "max_position_embeddings", "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id",
            "torch_dtype", "dtype", "initializer_range",
        };
        var interleaved = arch.Interleaved is { } defaults ? ReadInterleaved(obj, reader, file, defaults, layers, localRopeParams) : null;
        if (interleaved is not null) known.UnionWith(InterleavedKeys);
        if (arch.Experts is { } expertLayout) known.UnionWith(MoeConfig.Keys(expertLayout));
        var extra = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal);
        foreach (var (key, value) in obj)
            if (!known.Contains(key))
                extra[key] = value?.DeepClone();

        return new ModelConfig
        {
            Architecture = arch,
            HiddenSize = hidden,
            IntermediateSize = intermediate,
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            VocabSize = vocab,
            RmsNormEps = rmsNormEps,
            RopeTheta = ropeTheta,
            RopeScaling = scaling,
            TieWordEmbeddings = reader.Bool("tie_word_embeddings") ?? arch.DefaultTieWordEmbeddings,
            AttentionBias = attentionBias,
            MlpBias = arch.MlpBias switch
            {
                BiasRule.Always => true,
                BiasRule.Never => false,
                _ => reader.Bool("mlp_bias") ?? false,
            },
            MaxPositionEmbeddings = maxPositions,
            // Gemma's config classes name it hidden_activation (checkpoints often carry hidden_act too).
            HiddenAct = (arch.Interleaved is not null ? reader.String("hidden_activation") : null) ?? reader.String("hidden_act") ?? arch.DefaultHiddenAct,
            BosTokenId = reader.Int("bos_token_id"),
            EosTokenIds = reader.IntOrList("eos_token_id"),
            PadTokenId = reader.Int("pad_token_id"),
            TorchDtype = reader.String("torch_dtype") ?? reader.String("dtype") ?? "float32",
            InitializerRange = initializerRange,
            QueryPreAttnScalar = interleaved?.QueryPreAttnScalar,
            SlidingWindow = interleaved?.SlidingWindow,
            LayerTypes = interleaved?.LayerTypes,
            AttnLogitSoftcapping = interleaved?.AttnLogitSoftcapping,
            FinalLogitSoftcapping = interleaved?.FinalLogitSoftcapping,
            RopeLocalBaseFreq = interleaved?.RopeLocalBaseFreq,
            Moe = moe,
            Extra = extra,
        };
    }

    private static readonly string[] InterleavedKeys =
    [
        "query_pre_attn_scalar", "sliding_window", "layer_types", "sliding_window_pattern", "attn_logit_softcapping",
        "final_logit_softcapping", "rope_local_base_freq", "hidden_activation",
    ];

    private sealed record Interleaved(double QueryPreAttnScalar, int SlidingWindow, IReadOnlyList<string> LayerTypes,
        double? AttnLogitSoftcapping, double? FinalLogitSoftcapping, double? RopeLocalBaseFreq);

    /// <summary>Gemma's attention keys, with its config class's defaults where a key is absent (an explicit null turns a soft-cap off).</summary>
    private static Interleaved ReadInterleaved(JsonObject obj, ConfigReader reader, string file, InterleavedAttentionDefaults d, int layers, JsonObject? localRopeParams)
    {
        double qpas = reader.Double("query_pre_attn_scalar") is { } q ? reader.Range("query_pre_attn_scalar", q, 0, false, 1e9, true, "(0, 1e+09]") : d.QueryPreAttnScalar;
        int window = reader.Int("sliding_window") is { } w ? reader.Range("sliding_window", w, 1, MaxPositions) : d.SlidingWindow;
        double? Cap(string key) => obj.ContainsKey(key) && obj[key] is null ? null
            : reader.Double(key) is { } v ? reader.Range(key, v, 0, false, 1e9, true, "(0, 1e+09]") : key == "attn_logit_softcapping" ? d.AttnLogitSoftcapping : d.FinalLogitSoftcapping;
        IReadOnlyList<string> types;
        if (obj["layer_types"] is JsonArray list)
        {
            if (list.Count != layers)
                throw new ModelFormatException(file, $"\"layer_types\" lists {list.Count} layers but \"num_hidden_layers\" is {layers}; give one entry per layer.");
            types = list.Select((t, i) => t is JsonValue v && v.TryGetValue<string>(out var s) && s is "sliding_attention" or "full_attention" ? s
                : throw new ModelFormatException(file, $"\"layer_types\"[{i}] must be \"sliding_attention\" or \"full_attention\", got {t?.ToJsonString() ?? "null"}.")).ToList();
        }
        else
        {
            int pattern = reader.Int("sliding_window_pattern") is { } p ? reader.Range("sliding_window_pattern", p, 1, MaxLayers) : d.SlidingWindowPattern;
            // transformers: layer i is local when (i + 1) % pattern != 0.
            types = Enumerable.Range(0, layers).Select(i => (i + 1) % pattern != 0 ? "sliding_attention" : "full_attention").ToList();
        }
        double? local = reader.Double("rope_local_base_freq") is { } lf ? reader.Range("rope_local_base_freq", lf, 1, false, MaxRopeTheta, true, "(1, 1e+12]")
            : localRopeParams is not null && new ConfigReader(localRopeParams, file, "rope_parameters.sliding_attention.").Double("rope_theta") is { } lt ? lt
            : d.LocalRopeTheta;
        return new Interleaved(qpas, window, types, Cap("attn_logit_softcapping"), Cap("final_logit_softcapping"), local);
    }

    /// <summary>
    /// A Gemma3ForConditionalGeneration config.json: its text_config read as a gemma3_text config (the language model's
    /// own keys; tie_word_embeddings and the token ids from the top level where text_config has none), weights under the
    /// language model's prefixes.
    /// </summary>
    private static ModelConfig ConditionalGeneration(JsonObject obj, string file)
    {
        if (obj["text_config"] is not JsonObject text)
            throw new ModelFormatException(file, "model_type \"gemma3\" (Gemma3ForConditionalGeneration) needs a \"text_config\" object: FineTune trains its language model; point to a gemma3_text model or a complete gemma3 directory.");
        var t = (JsonObject)text.DeepClone();
        t["model_type"] = "gemma3_text";
        foreach (var key in new[] { "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype" })
            if (!t.ContainsKey(key) && obj[key] is { } v) t[key] = v.DeepClone();
        return FromJson(t, file) with { LanguageModelWeights = new LanguageModelWeights() };
    }

    private const int MaxExperts = 4096;

    private static MoeConfig ParseMoe(ConfigReader reader, ExpertLayout layout, string file, int layers, int intermediate)
    {
        // Qwen3MoeConfig maps num_experts onto num_local_experts (attribute_map), so a config.json may carry either.
        string countKey = reader.Int(layout.ExpertCountKey) is not null ? layout.ExpertCountKey
            : reader.Int("num_local_experts") is not null ? "num_local_experts" : reader.Int("num_experts") is not null ? "num_experts" : layout.ExpertCountKey;
        int experts = reader.Range(countKey, reader.Int(countKey) ?? layout.DefaultExpertCount, 1, MaxExperts);
        int topK = reader.Range("num_experts_per_tok", reader.Int("num_experts_per_tok") ?? layout.DefaultTopK, 1, experts);
        int inter = layout.ExpertIntermediateKey is { } key
            ? reader.Range(key, reader.Int(key) ?? layout.DefaultExpertIntermediate, 1, MaxIntermediateSize)
            : intermediate;
        int step = layout.SparseLayersFromConfig ? reader.Range("decoder_sparse_step", reader.Int("decoder_sparse_step") ?? 1, 1, MaxLayers) : 1;
        var mlpOnly = layout.SparseLayersFromConfig ? reader.IntOrList("mlp_only_layers") : [];
        foreach (int l in mlpOnly)
            if (l < 0 || l >= layers)
                throw new ModelFormatException(file, $"\"mlp_only_layers\" names layer {l}, but the model has layers 0 … {layers - 1}.");
        double coef = reader.Double("router_aux_loss_coef") is { } c ? reader.Range("router_aux_loss_coef", c, 0, true, 1e6, true, "[0, 1e+06]") : layout.DefaultRouterAuxLossCoef;
        double jitter = reader.Double("router_jitter_noise") is { } j ? reader.Range("router_jitter_noise", j, 0, true, 1, true, "[0, 1]") : 0;
        return new MoeConfig
        {
            NumExperts = experts,
            NumExpertsPerTok = topK,
            ExpertIntermediateSize = inter,
            // Mixtral always renormalises the top-k weights; qwen3_moe when norm_topk_prob (Qwen3MoeConfig: false).
            NormTopKProb = layout.NormTopKFromConfig ? reader.Bool("norm_topk_prob") ?? false : true,
            DecoderSparseStep = step,
            MlpOnlyLayers = mlpOnly,
            RouterAuxLossCoef = coef,
            OutputRouterLogits = reader.Bool("output_router_logits") ?? false,
            RouterJitterNoise = jitter,
        };
    }

    private static RopeScaling? ParseRopeScaling(JsonObject o, string file, string prefix)
    {
        var r = new ConfigReader(o, file, prefix);
        var type = r.String("rope_type") ?? r.String("type");
        if (type is null or "default")
            return null;
        if (type == "su") type = "longrope"; // Phi-3's first configs: transformers reads "su" as longrope.
        if (!RopeScaling.KnownTypes.Contains(type))
            throw new ModelFormatException(file, $"unsupported rope_scaling type \"{type}\"; FineTune supports linear, dynamic, yarn, llama3 and longrope.");
        double? Positive(string key) => r.Double(key) is { } v ? r.Range(key, v, 0, false, MaxRopeFactor, true, "(0, 1e+06]") : null;
        var scaling = new RopeScaling
        {
            Type = type,
            Factor = Positive("factor") ?? 1.0,
            HasFactor = type == "longrope" && r.Double("factor") is not null, // only longrope tells an absent factor from 1
            ShortFactor = FactorList(o, "short_factor", file, prefix),
            LongFactor = FactorList(o, "long_factor", file, prefix),
            OriginalMaxPositionEmbeddings = r.Int("original_max_position_embeddings") is { } omp ? r.Range("original_max_position_embeddings", omp, 1, MaxPositions) : null,
            LowFreqFactor = Positive("low_freq_factor"),
            HighFreqFactor = Positive("high_freq_factor"),
            BetaFast = Positive("beta_fast"),
            BetaSlow = Positive("beta_slow"),
            AttentionFactor = Positive("attention_factor"),
        };
        // The engine's defaults (TransformerSpec.FromConfig): llama3 divides by high - low, yarn ramps from beta_slow to beta_fast.
        if (type == "llama3" && (scaling.HighFreqFactor ?? 4.0) <= (scaling.LowFreqFactor ?? 1.0))
            throw new ModelFormatException(file, $"\"{prefix}high_freq_factor\" ({Show(scaling.HighFreqFactor ?? 4.0)}) must be larger than \"{prefix}low_freq_factor\" ({Show(scaling.LowFreqFactor ?? 1.0)}).");
        if (type == "yarn" && (scaling.BetaFast ?? 32.0) <= (scaling.BetaSlow ?? 1.0))
            throw new ModelFormatException(file, $"\"{prefix}beta_fast\" ({Show(scaling.BetaFast ?? 32.0)}) must be larger than \"{prefix}beta_slow\" ({Show(scaling.BetaSlow ?? 1.0)}).");
        return scaling;
    }

    private static IReadOnlyList<double>? FactorList(JsonObject o, string key, string file, string prefix)
    {
        if (o[key] is null) return null;
        if (o[key] is not JsonArray list)
            throw new ModelFormatException(file, $"\"{prefix}{key}\" must be a list of numbers (one per rotary frequency).");
        var values = new double[list.Count];
        for (int i = 0; i < list.Count; i++)
            values[i] = list[i] is JsonValue v && v.TryGetValue<double>(out var d) && d > 0 && double.IsFinite(d) ? d
                : throw new ModelFormatException(file, $"\"{prefix}{key}\"[{i}] must be a positive number, got {list[i]?.ToJsonString() ?? "null"}.");
        return values;
    }

    /// <summary>
    /// longrope needs short_factor and long_factor with one value per rotary frequency (head_dim / 2) and the
    /// pre-training context: original_max_position_embeddings of rope_scaling, or Phi3Config's top-level key.
    /// </summary>
    private static RopeScaling CheckLongRope(RopeScaling s, ConfigReader reader, string file, string prefix, int headDim, int maxPositions)
    {
        foreach (var (key, list) in new[] { ("short_factor", s.ShortFactor), ("long_factor", s.LongFactor) })
            if (list is null || list.Count != headDim / 2)
                throw new ModelFormatException(file, $"\"{prefix}{key}\" must list head_dim / 2 = {headDim / 2} numbers for longrope, " +
                    (list is null ? "but is missing." : $"got {list.Count}."));
        int original = s.OriginalMaxPositionEmbeddings
            ?? (reader.Int("original_max_position_embeddings") is { } omp ? reader.Range("original_max_position_embeddings", omp, 1, MaxPositions) : maxPositions);
        return s with { OriginalMaxPositionEmbeddings = original };
    }

    private const int MaxHiddenSize = 65536, MaxHeads = 1024, MaxLayers = 1024, MaxIntermediateSize = 262144, MaxHeadDim = 1024;
    private const int MaxVocabSize = 1 << 22, MaxPositions = 1 << 24;
    private const double MaxRopeTheta = 1e12, MaxRopeFactor = 1e6;

    private static string Show(double v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>The config as HF's JSON object (keys sorted, like transformers writes them).</summary>
    public JsonObject ToJson()
    {
        var entries = new SortedDictionary<string, JsonNode?>(StringComparer.Ordinal);
        foreach (var (k, v) in Extra)
            entries[k] = v?.DeepClone();
        entries["architectures"] = new JsonArray(ArchitectureClassName);
        entries["model_type"] = ModelType;
        entries["hidden_size"] = HiddenSize;
        entries["intermediate_size"] = IntermediateSize;
        entries["num_hidden_layers"] = NumHiddenLayers;
        entries["num_attention_heads"] = NumAttentionHeads;
        entries["num_key_value_heads"] = NumKeyValueHeads;
        entries["head_dim"] = HeadDim;
        entries["vocab_size"] = VocabSize;
        entries["rms_norm_eps"] = RmsNormEps;
        entries["rope_theta"] = RopeTheta;
        entries["rope_scaling"] = RopeScaling is null ? null : RopeScalingJson(RopeScaling);
        entries["tie_word_embeddings"] = TieWordEmbeddings;
        // The keys the family's config class has: attention_bias / mlp_bias where config.json decides the biases.
        if (Architecture.QkvBias == BiasRule.FromConfig)
            entries["attention_bias"] = AttentionBias;
        if (Architecture.MlpBias == BiasRule.FromConfig)
            entries["mlp_bias"] = MlpBias;
        entries["max_position_embeddings"] = MaxPositionEmbeddings;
        entries["hidden_act"] = HiddenAct;
        entries["bos_token_id"] = BosTokenId;
        entries["eos_token_id"] = EosTokenIds.Count switch
        {
            0 => null,
            1 => JsonValue.Create(EosTokenIds[0]),
            _ => new JsonArray(EosTokenIds.Select(i => (JsonNode?)JsonValue.Create(i)).ToArray()),
        };
        if (PadTokenId is not null)
            entries["pad_token_id"] = PadTokenId;
        entries["torch_dtype"] = TorchDtype;
        entries["initializer_range"] = InitializerRange;
        if (Architecture.Interleaved is not null)
        {
            entries["hidden_activation"] = HiddenAct;
            entries["query_pre_attn_scalar"] = QueryPreAttnScalar;
            entries["sliding_window"] = SlidingWindow;
            entries["layer_types"] = LayerTypes is null ? null : new JsonArray(LayerTypes.Select(x => (JsonNode?)JsonValue.Create(x)).ToArray());
            entries["attn_logit_softcapping"] = FloatJson(AttnLogitSoftcapping);
            entries["final_logit_softcapping"] = FloatJson(FinalLogitSoftcapping);
            if (RopeLocalBaseFreq is { } local) entries["rope_local_base_freq"] = FloatJson(local);
        }
        if (Moe is { } moe && Architecture.Experts is { } layout)
        {
            entries[layout.ExpertCountKey] = moe.NumExperts;
            entries["num_experts_per_tok"] = moe.NumExpertsPerTok;
            if (layout.ExpertIntermediateKey is { } key) entries[key] = moe.ExpertIntermediateSize;
            if (layout.NormTopKFromConfig) entries["norm_topk_prob"] = moe.NormTopKProb;
            if (layout.SparseLayersFromConfig)
            {
                entries["decoder_sparse_step"] = moe.DecoderSparseStep;
                entries["mlp_only_layers"] = new JsonArray(moe.MlpOnlyLayers.Select(l => (JsonNode?)JsonValue.Create(l)).ToArray());
            }
            entries["router_aux_loss_coef"] = FloatJson(moe.RouterAuxLossCoef);
            entries["output_router_logits"] = moe.OutputRouterLogits;
            if (layout.MoeModule is not null) entries["router_jitter_noise"] = FloatJson(moe.RouterJitterNoise);
        }
        var obj = new JsonObject();
        foreach (var (k, v) in entries)
            obj[k] = v;
        return obj;
    }

    /// <summary>
    /// A float config key as Python writes it (30.0, not 30): transformers 5's strict config classes refuse an int for
    /// a float field (Gemma2Config's final_logit_softcapping), and System.Text.Json writes a whole double without ".0".
    /// </summary>
    private static JsonNode? FloatJson(double? value)
    {
        if (value is not { } v) return null;
        string text = double.IsInteger(v) && Math.Abs(v) < 1e15
            ? v.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)
            : v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        return JsonNode.Parse(text);
    }

    private static JsonObject RopeScalingJson(RopeScaling s)
    {
        var o = new JsonObject { ["rope_type"] = s.Type };
        // longrope without a factor derives it from the context lengths: writing 1.0 would change the model.
        if (s.HasFactor || s.Type != "longrope") o["factor"] = s.Factor;
        if (s.OriginalMaxPositionEmbeddings is { } omp) o["original_max_position_embeddings"] = omp;
        if (s.LowFreqFactor is { } lf) o["low_freq_factor"] = lf;
        if (s.HighFreqFactor is { } hf) o["high_freq_factor"] = hf;
        if (s.BetaFast is { } bf) o["beta_fast"] = bf;
        if (s.BetaSlow is { } bs) o["beta_slow"] = bs;
        if (s.AttentionFactor is { } af) o["attention_factor"] = af;
        if (s.ShortFactor is { } sf) o["short_factor"] = new JsonArray(sf.Select(v => (JsonNode?)JsonValue.Create(v)).ToArray());
        if (s.LongFactor is { } lf2) o["long_factor"] = new JsonArray(lf2.Select(v => (JsonNode?)JsonValue.Create(v)).ToArray());
        return o;
    }

    /// <summary>Writes config.json (to a file path or into a directory), atomically.</summary>
    public void Save(string path)
    {
        var file = Directory.Exists(path) ? Path.Combine(path, "config.json") : path;
        AtomicFile.WriteAllText(file, ToJsonString());
    }

    /// <summary>The JSON text Save writes: two-space indent, sorted keys, a final newline.</summary>
    public string ToJsonString() =>
        ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
}
