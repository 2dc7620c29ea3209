namespace FineTune.Models.Architectures;

/// <summary>
/// Qwen3 (Qwen3ForCausalLM): the llama block with a per-head RMSNorm on q and k (over head_dim, before RoPE);
/// attention_bias puts biases on q/k/v/o. Qwen3Config defaults: head_dim 128, vocab 151936, 32768 positions.
/// Scratch models carry ChatML with Qwen3's enable_thinking switch.
/// </summary>
internal static class Qwen3
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "qwen3",
        ClassName = "Qwen3ForCausalLM",
        DefaultHeadDim = 128,
        DefaultVocabSize = 151936,
        DefaultMaxPositionEmbeddings = 32768,
        QkvBias = BiasRule.FromConfig,
        OutputBias = BiasRule.FromConfig,
        Block = new BlockOptions { QkNorm = true },
        Gguf = new GgufNaming("qwen3", PermuteQkRows: false, GgufNaming.StandardLayerTensors),
        ScratchChatTemplate = ChatTemplates.ChatMlWithThinkSwitch,
    };
}
