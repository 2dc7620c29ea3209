namespace FineTune.Models.Architectures;

/// <summary>
/// Qwen2 / Qwen2.5 (Qwen2ForCausalLM): the llama block with biases on q/k/v always (Qwen2Attention builds them with
/// bias=True whatever config.json says) and none on o. Qwen2Config defaults: vocab 151936, 32768 positions.
/// llama.cpp's qwen2 rotates halves as HF does: no permutation.
/// </summary>
internal static class Qwen2
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "qwen2",
        ClassName = "Qwen2ForCausalLM",
        DefaultVocabSize = 151936,
        DefaultMaxPositionEmbeddings = 32768,
        QkvBias = BiasRule.Always,
        OutputBias = BiasRule.Never,
        Gguf = new GgufNaming("qwen2", PermuteQkRows: false, GgufNaming.StandardLayerTensors),
        ScratchChatTemplate = ChatTemplates.ChatMl,
    };
}
