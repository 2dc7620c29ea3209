using System.Text.Json.Nodes;
using FineTune.Models.Architectures;

namespace FineTune.Models;

/// <summary>Whether a group of projections has biases: never, always (whatever config.json says), or as a config key says.</summary>
public enum BiasRule { Never, Always, FromConfig }

/// <summary>
/// Where a decoder block normalises: <see cref="PreNorm"/> (llama: x + attn(norm(x)), x + mlp(norm(x))) or
/// <see cref="Sandwich"/> (gemma 2/3: x + post_norm(attn(input_norm(x))), x + post_ff_norm(mlp(pre_ff_norm(x)))).
/// </summary>
public enum NormPlacement { PreNorm, Sandwich }

/// <summary>The gated MLP's activation: SwiGLU (silu) or GeGLU with the tanh approximation of GELU (gelu_pytorch_tanh).</summary>
public enum MlpActivation { Silu, GeluTanh }

/// <summary>A dense gated MLP per layer, or a mixture of experts (a router picks top-k expert MLPs per token).</summary>
public enum MlpKind { Dense, MixtureOfExperts }

/// <summary>
/// What a decoder block of the family computes beyond the llama block (pre-norm RMSNorm, SwiGLU, RoPE on every layer).
/// Values that vary per checkpoint (sliding window size, soft-cap values, query_pre_attn_scalar) are config.json keys
/// read by <see cref="ModelConfig"/>; this record says which of them the family has.
/// </summary>
public sealed record BlockOptions
{
    public NormPlacement NormPlacement { get; init; } = NormPlacement.PreNorm;
    /// <summary>RMSNorm scales by (offset + w): 0 in llama-style models, 1 in gemma (whose norm weights start at 0).</summary>
    public float NormWeightOffset { get; init; }
    public MlpActivation Activation { get; init; } = MlpActivation.Silu;
    public MlpKind Mlp { get; init; } = MlpKind.Dense;
    /// <summary>Gemma: the embedding output is multiplied by √hidden_size (in the compute dtype).</summary>
    public bool ScaleEmbeddingBySqrtHidden { get; init; }
    /// <summary>Qwen3, Gemma 3: per-head RMSNorm on queries and keys (q_norm, k_norm) before RoPE.</summary>
    public bool QkNorm { get; init; }
    /// <summary>Phi-3: q, k and v are one linear qkv_proj [q + 2·kv, hidden] in the files.</summary>
    public bool FusedQkv { get; init; }
    /// <summary>Phi-3: gate and up are one linear gate_up_proj [2·intermediate, hidden] in the files.</summary>
    public bool FusedGateUp { get; init; }
    /// <summary>Gemma 2: tanh soft-capping of attention logits (attn_logit_softcapping) and of the final logits (final_logit_softcapping).</summary>
    public bool SoftCapping { get; init; }
    /// <summary>Gemma 2/3, Mistral: sliding-window layers (sliding_window), interleaved with global ones where the family says so.</summary>
    public bool SlidingWindow { get; init; }
    /// <summary>Gemma: attention scores are scaled by query_pre_attn_scalar^-½ instead of head_dim^-½.</summary>
    public bool QueryPreAttnScalar { get; init; }
}

/// <summary>
/// The config.json defaults of a family with interleaved local (sliding-window) and global attention layers (gemma 2/3),
/// as its transformers config class has them. A layer is local when (i + 1) % <see cref="SlidingWindowPattern"/> ≠ 0 (gemma 2:
/// 2, alternating from a local layer 0; gemma 3: 6, every 6th layer global) unless config.json lists layer_types.
/// <see cref="LocalRopeTheta"/>: rope_local_base_freq of the local layers (null: they share the global rope).
/// </summary>
public sealed record InterleavedAttentionDefaults(int SlidingWindowPattern, int SlidingWindow, double QueryPreAttnScalar,
    double? AttnLogitSoftcapping, double? FinalLogitSoftcapping, double? LocalRopeTheta);

/// <summary>
/// The module names of a family's HF weights: model.embed_tokens, model.layers.N.{attention}.{q_proj…}, model.norm, lm_head.
/// Every family FineTune knows uses the same paths; fused families name qkv_proj / gate_up_proj and sandwich families the
/// extra norms.
/// </summary>
public sealed record ModuleNames
{
    public string Embedding { get; init; } = "model.embed_tokens";
    public string Layers { get; init; } = "model.layers";
    public string FinalNorm { get; init; } = "model.norm";
    public string LmHead { get; init; } = "lm_head";
    public string InputNorm { get; init; } = "input_layernorm";
    public string PostAttentionNorm { get; init; } = "post_attention_layernorm";
    /// <summary>Sandwich norms only: before and after the MLP.</summary>
    public string PreFeedforwardNorm { get; init; } = "pre_feedforward_layernorm";
    public string PostFeedforwardNorm { get; init; } = "post_feedforward_layernorm";
    public string Attention { get; init; } = "self_attn";
    public string Q { get; init; } = "q_proj";
    public string K { get; init; } = "k_proj";
    public string V { get; init; } = "v_proj";
    public string O { get; init; } = "o_proj";
    public string QNorm { get; init; } = "q_norm";
    public string KNorm { get; init; } = "k_norm";
    public string Qkv { get; init; } = "qkv_proj";
    public string Mlp { get; init; } = "mlp";
    public string Gate { get; init; } = "gate_proj";
    public string Up { get; init; } = "up_proj";
    public string Down { get; init; } = "down_proj";
    public string GateUp { get; init; } = "gate_up_proj";

    public static readonly ModuleNames Standard = new();

    public string Layer(int index) => $"{Layers}.{index}";
}

/// <summary>
/// How llama.cpp names the family: its architecture string (the prefix of the metadata keys {arch}.block_count …),
/// whether Q/K rows are permuted from HF's rotate-halves layout into interleaved pairs (llama only), and the
/// tensor names of a layer's modules (HF path under model.layers.N → blk.N.{name}).
/// </summary>
public sealed record GgufNaming(string Architecture, bool PermuteQkRows, IReadOnlyList<(string Hf, string Gguf)> LayerTensors)
{
    /// <summary>Added to every RMSNorm weight on export: gemma's (1 + w) norms are stored as 1 + w (llama.cpp multiplies by the stored value).</summary>
    public float NormWeightOffset { get; init; }

    /// <summary>llama.cpp's names for the llama-style layer (convert_hf_to_gguf.py's tensor map).</summary>
    public static readonly IReadOnlyList<(string Hf, string Gguf)> StandardLayerTensors =
    [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
}

/// <summary>
/// A mixture-of-experts family's experts as config.json and the checkpoints name them. A layer's MLP module holds the
/// router {mlp}.{Router}.weight [experts, hidden] and per expert {mlp}.{Experts}.E.{Gate|Up}.weight [moe_inter, hidden],
/// {mlp}.{Experts}.E.{Down}.weight [hidden, moe_inter] (the hub checkpoints' layout, which transformers 5 converts into
/// its fused gate_up_proj [E, 2·inter, hidden] / down_proj [E, hidden, inter] parameters on load). The engine holds each
/// projection of all experts as one stacked parameter {mlp}.{Experts}.{Gate} [E, inter, hidden] (no ".weight").
/// </summary>
public sealed record ExpertLayout
{
    /// <summary>num_experts (qwen3_moe) or num_local_experts (mixtral).</summary>
    public required string ExpertCountKey { get; init; }
    public required int DefaultExpertCount { get; init; }
    public required int DefaultTopK { get; init; }
    /// <summary>The experts' intermediate size key: moe_intermediate_size (qwen3_moe); null: intermediate_size itself (mixtral).</summary>
    public string? ExpertIntermediateKey { get; init; }
    public int DefaultExpertIntermediate { get; init; }
    /// <summary>Whether norm_topk_prob is a key (qwen3_moe, default false); otherwise the top-k weights are always renormalised (mixtral).</summary>
    public bool NormTopKFromConfig { get; init; }
    /// <summary>Whether decoder_sparse_step and mlp_only_layers pick dense layers (qwen3_moe); otherwise every layer is sparse.</summary>
    public bool SparseLayersFromConfig { get; init; }
    public double DefaultRouterAuxLossCoef { get; init; } = 0.001;
    public string Router { get; init; } = "gate";
    public string ExpertList { get; init; } = "experts";
    public string Gate { get; init; } = "gate_proj";
    public string Up { get; init; } = "up_proj";
    public string Down { get; init; } = "down_proj";
    /// <summary>The module of the MoE block in the checkpoints (mixtral: block_sparse_moe; transformers 5 renames it mlp).</summary>
    public string? MoeModule { get; init; }
}

/// <summary>
/// One model family, described once: everything config parsing, the engine's block, weight naming, LoRA targets,
/// merge, GGUF export and scratch-model generation need to know about it. The families are the files of
/// src/FineTune.Models/Architectures; adding one is one file there plus its entry in <see cref="All"/>.
/// Merge needs no rule per family: every LoRA target, fused or not, folds as W' = W + s·B·A on its own weight
/// (a fused module's B spans all of its outputs, so the fold is the fused weight's).
/// </summary>
public sealed class ModelArchitecture
{
    /// <summary>HF's model_type (config.json), also the scratch block's <c>architecture</c> value.</summary>
    public required string ModelType { get; init; }
    /// <summary>HF's class in config.json's "architectures", e.g. Qwen3ForCausalLM.</summary>
    public required string ClassName { get; init; }

    // config.json defaults: what transformers' config class assumes when a key is absent.
    /// <summary>head_dim when config.json has none; null: hidden_size / num_attention_heads.</summary>
    public int? DefaultHeadDim { get; init; }
    public required int DefaultVocabSize { get; init; }
    public required int DefaultMaxPositionEmbeddings { get; init; }
    public double DefaultRmsNormEps { get; init; } = 1e-6;
    public double DefaultRopeTheta { get; init; } = 10000.0;
    /// <summary>tie_word_embeddings when config.json has none (gemma: true).</summary>
    public bool DefaultTieWordEmbeddings { get; init; }
    /// <summary>hidden_act (gemma: hidden_activation) when config.json has none.</summary>
    public string DefaultHiddenAct { get; init; } = "silu";
    /// <summary>Gemma 2/3: sliding-window and global layers, soft-caps and query_pre_attn_scalar (null for the other families).</summary>
    public InterleavedAttentionDefaults? Interleaved { get; init; }
    /// <summary>Biases of q/k/v; FromConfig reads attention_bias.</summary>
    public required BiasRule QkvBias { get; init; }
    /// <summary>Bias of o_proj; FromConfig reads attention_bias.</summary>
    public required BiasRule OutputBias { get; init; }
    /// <summary>Biases of gate/up/down; FromConfig reads mlp_bias.</summary>
    public BiasRule MlpBias { get; init; } = BiasRule.Never;

    public BlockOptions Block { get; init; } = new();
    public ModuleNames Names { get; init; } = ModuleNames.Standard;
    public required GgufNaming Gguf { get; init; }
    /// <summary>The chat template a scratch model of the family carries in its tokenizer_config.json.</summary>
    public required string ScratchChatTemplate { get; init; }
    /// <summary>Keys a scratch model's config.json carries beyond the ones <see cref="ModelConfig"/> writes.</summary>
    public IReadOnlyDictionary<string, Func<JsonNode?>> ScratchExtraConfig { get; init; } = ScratchExtras.Common;
    /// <summary>
    /// Whether a scratch config.json names pad_token_id: where the config class defaults it to an id beyond a small
    /// vocabulary (Phi3Config: 32000, used as the embedding's padding_idx) transformers would not load the model otherwise.
    /// </summary>
    public bool ScratchWritesPadTokenId { get; init; }
    /// <summary>What of the family the engine does not run yet (null: all of it); CausalLM refuses such models with this text.</summary>
    public string? EngineGap { get; init; }
    /// <summary>Mixture-of-experts families (Block.Mlp = MixtureOfExperts): config keys, defaults and weight names of the experts.</summary>
    public ExpertLayout? Experts { get; init; }

    /// <summary>The linear modules LoRA may target, in PEFT's names (what lora_target and target_modules say).</summary>
    public IReadOnlyList<string> LoraTargets => _loraTargets ??=
    [
        .. Block.FusedQkv ? [Names.Qkv] : new[] { Names.Q, Names.K, Names.V },
        Names.O,
        .. Block.FusedGateUp ? [Names.GateUp] : new[] { Names.Gate, Names.Up },
        Names.Down,
    ];
    private IReadOnlyList<string>? _loraTargets;

    public override string ToString() => ModelType;

    public static ModelArchitecture Llama => Architectures.Llama.Architecture;
    public static ModelArchitecture Qwen2 => Architectures.Qwen2.Architecture;
    public static ModelArchitecture Qwen3 => Architectures.Qwen3.Architecture;
    public static ModelArchitecture Mistral => Architectures.Mistral.Architecture;
    public static ModelArchitecture Phi3 => Architectures.Phi3.Architecture;
    public static ModelArchitecture Gemma2 => Architectures.Gemma2.Architecture;
    public static ModelArchitecture Gemma3 => Architectures.Gemma3.Architecture;
    public static ModelArchitecture Qwen3Moe => Architectures.Qwen3Moe.Architecture;
    public static ModelArchitecture Mixtral => Architectures.Mixtral.Architecture;

    /// <summary>Every family FineTune reads and trains, in the order messages list them.</summary>
    public static IReadOnlyList<ModelArchitecture> All => AllFamilies.Value;
    // Lazy: the families' own static fields must be complete before the list reads them.
    private static readonly Lazy<IReadOnlyList<ModelArchitecture>> AllFamilies = new(() => [Llama, Qwen2, Qwen3, Mistral, Phi3, Gemma2, Gemma3, Qwen3Moe, Mixtral]);

    /// <summary>The family of an HF model_type (case-insensitive); null when FineTune does not know it.</summary>
    public static ModelArchitecture? Find(string modelType) =>
        All.FirstOrDefault(a => string.Equals(a.ModelType, modelType, StringComparison.OrdinalIgnoreCase));

    /// <summary>"llama, qwen2, qwen3, mistral, phi3, gemma2, gemma3_text, qwen3_moe and mixtral": the families for messages.</summary>
    public static string SupportedList => string.Join(", ", All.Take(All.Count - 1).Select(a => a.ModelType)) + " and " + All[^1].ModelType;
}
