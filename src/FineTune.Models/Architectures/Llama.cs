namespace FineTune.Models.Architectures;

/// <summary>
/// Llama (LlamaForCausalLM): the reference block — pre-norm RMSNorm, SwiGLU, RoPE; attention_bias puts biases on
/// q/k/v/o, mlp_bias on gate/up/down. LlamaConfig defaults: vocab 32000, 2048 positions, head_dim = hidden / heads.
/// llama.cpp rotates interleaved pairs, so the GGUF export permutes the rows of q and k.
/// </summary>
internal static class Llama
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "llama",
        ClassName = "LlamaForCausalLM",
        DefaultVocabSize = 32000,
        DefaultMaxPositionEmbeddings = 2048,
        QkvBias = BiasRule.FromConfig,
        OutputBias = BiasRule.FromConfig,
        MlpBias = BiasRule.FromConfig,
        Gguf = new GgufNaming("llama", PermuteQkRows: true, GgufNaming.StandardLayerTensors),
        ScratchChatTemplate = ChatTemplates.ChatMl,
    };
}
