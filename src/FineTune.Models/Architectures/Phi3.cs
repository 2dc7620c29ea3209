namespace FineTune.Models.Architectures;

/// <summary>
/// Phi-3 / Phi-4 (Phi3ForCausalLM): the llama block without biases, with q/k/v stored as one qkv_proj
/// [q + 2·kv, hidden] and gate/up as one gate_up_proj [2·intermediate, hidden] (gate rows first). PEFT targets the
/// fused modules by their own names (one lora_A [r, hidden], one lora_B spanning all fused outputs), so a merge folds
/// W' = W + s·B·A on the fused weight. Phi3Config defaults: vocab 32064, 4096 positions, rms_norm_eps 1e-5.
/// RoPE may be longrope (short_factor / long_factor per frequency; the attention factor from
/// max_position_embeddings / original_max_position_embeddings). llama.cpp's phi3 takes attn_qkv and a fused ffn_up,
/// rotates halves as HF does (no permutation) and reads longrope as rope_factors_short / rope_factors_long tensors.
/// </summary>
internal static class Phi3
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "phi3",
        ClassName = "Phi3ForCausalLM",
        DefaultVocabSize = 32064,
        DefaultMaxPositionEmbeddings = 4096,
        DefaultRmsNormEps = 1e-5,
        QkvBias = BiasRule.Never,
        OutputBias = BiasRule.Never,
        Block = new BlockOptions { FusedQkv = true, FusedGateUp = true },
        Gguf = new GgufNaming("phi3", PermuteQkRows: false,
        [
            ("input_layernorm", "attn_norm"),
            ("self_attn.qkv_proj", "attn_qkv"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        ]),
        ScratchChatTemplate = ChatTemplates.ChatMl,
        ScratchWritesPadTokenId = true,
    };
}
