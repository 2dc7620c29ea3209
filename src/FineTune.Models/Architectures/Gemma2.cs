namespace FineTune.Models.Architectures;

/// <summary>
/// Gemma 2 (Gemma2ForCausalLM). The block: embedding × √hidden (the normalizer cast to the compute dtype), RMSNorm
/// scaling by (1 + w) in fp32, sandwich norms (input_layernorm → attention → post_attention_layernorm, added to the
/// residual; pre_feedforward_layernorm → GeGLU MLP with gelu_pytorch_tanh → post_feedforward_layernorm, added),
/// scores scaled by query_pre_attn_scalar^-½ and soft-capped as attn_logit_softcapping·tanh(s/cap), local layers
/// (every even layer) attending to the last sliding_window keys, and the final logits soft-capped by
/// final_logit_softcapping. Gemma2Config defaults: vocab 256000, 8192 positions, head_dim 256, tied embeddings,
/// window 4096, query_pre_attn_scalar 256, caps 50 and 30. llama.cpp's gemma2 rotates halves (no permutation) and
/// stores the norm weights with the 1 added (convert_hf_to_gguf.py), post_attention_norm / post_ffw_norm beside them.
/// </summary>
internal static class Gemma2
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "gemma2",
        ClassName = "Gemma2ForCausalLM",
        DefaultHeadDim = 256,
        DefaultVocabSize = 256000,
        DefaultMaxPositionEmbeddings = 8192,
        DefaultTieWordEmbeddings = true,
        DefaultHiddenAct = "gelu_pytorch_tanh",
        QkvBias = BiasRule.FromConfig,
        OutputBias = BiasRule.FromConfig,
        Block = GemmaBlock.Options(qkNorm: false),
        Interleaved = new InterleavedAttentionDefaults(SlidingWindowPattern: 2, SlidingWindow: 4096, QueryPreAttnScalar: 256,
            AttnLogitSoftcapping: 50.0, FinalLogitSoftcapping: 30.0, LocalRopeTheta: null),
        Gguf = new GgufNaming("gemma2", PermuteQkRows: false, GemmaBlock.GgufLayerTensors) { NormWeightOffset = 1f },
        ScratchChatTemplate = ChatTemplates.ChatMl,
        ScratchWritesPadTokenId = true,
    };
}
