namespace FineTune.Models.Architectures;

/// <summary>
/// Gemma 3 text models (Gemma3ForCausalLM, model_type gemma3_text; also the language model of a
/// Gemma3ForConditionalGeneration checkpoint, see <see cref="ModelConfig.LanguageModelWeights"/>). Gemma 2's block with a
/// per-head (1 + w) RMSNorm on q and k before RoPE, five local layers to one global (layer_types, or
/// sliding_window_pattern 6), local layers rotating with rope_local_base_freq (10000) and global ones with rope_theta
/// (1e6) and rope_scaling; soft-caps only where config.json sets them (Gemma3TextConfig: none). Defaults: vocab
/// 262208, 131072 positions, head_dim 256, window 4096, query_pre_attn_scalar 256, tied embeddings.
/// </summary>
internal static class Gemma3
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "gemma3_text",
        ClassName = "Gemma3ForCausalLM",
        DefaultHeadDim = 256,
        DefaultVocabSize = 262208,
        DefaultMaxPositionEmbeddings = 131072,
        DefaultRopeTheta = 1_000_000.0,
        DefaultTieWordEmbeddings = true,
        DefaultHiddenAct = "gelu_pytorch_tanh",
        QkvBias = BiasRule.FromConfig,
        OutputBias = BiasRule.FromConfig,
        Block = GemmaBlock.Options(qkNorm: true),
        Interleaved = new InterleavedAttentionDefaults(SlidingWindowPattern: 6, SlidingWindow: 4096, QueryPreAttnScalar: 256,
            AttnLogitSoftcapping: null, FinalLogitSoftcapping: null, LocalRopeTheta: 10000.0),
        Gguf = new GgufNaming("gemma3", PermuteQkRows: false, GemmaBlock.GgufLayerTensors) { NormWeightOffset = 1f },
        ScratchChatTemplate = ChatTemplates.ChatMl,
        ScratchWritesPadTokenId = true,
    };
}

/// <summary>What gemma 2 and 3 share: the block options and llama.cpp's tensor names for the sandwich layer.</summary>
internal static class GemmaBlock
{
    public static BlockOptions Options(bool qkNorm) => new()
    {
        NormPlacement = NormPlacement.Sandwich,
        NormWeightOffset = 1f,
        Activation = MlpActivation.GeluTanh,
        ScaleEmbeddingBySqrtHidden = true,
        QkNorm = qkNorm,
        SoftCapping = true,
        SlidingWindow = true,
        QueryPreAttnScalar = true,
    };

    /// <summary>convert_hf_to_gguf.py's names: post_attention_layernorm is llama.cpp's post_attention_norm, not ffn_norm.</summary>
    public static readonly IReadOnlyList<(string Hf, string Gguf)> GgufLayerTensors =
    [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
}
