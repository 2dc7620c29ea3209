namespace FineTune.Models.Architectures;

/// <summary>
/// Mistral (MistralForCausalLM): the llama block without biases. MistralConfig defaults: vocab 32000, 131072
/// positions. llama.cpp loads it as the llama architecture (interleaved rope: q/k rows permuted).
/// </summary>
internal static class Mistral
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "mistral",
        ClassName = "MistralForCausalLM",
        DefaultVocabSize = 32000,
        DefaultMaxPositionEmbeddings = 131072,
        QkvBias = BiasRule.Never,
        OutputBias = BiasRule.Never,
        Gguf = new GgufNaming("llama", PermuteQkRows: true, GgufNaming.StandardLayerTensors),
        ScratchChatTemplate = ChatTemplates.ChatMl,
    };
}
