namespace FineTune.Models.Architectures;

/// <summary>
/// Mixtral (MixtralForCausalLM): the mistral block (no biases) whose every MLP is a mixture of num_local_experts
/// SwiGLU experts of intermediate_size. The checkpoints name the block block_sparse_moe: router
/// block_sparse_moe.gate [E, hidden], experts block_sparse_moe.experts.E.w1 (gate), w3 (up), w2 (down); transformers 5
/// renames the block mlp and fuses the experts on load. Routing: softmax in fp32, top num_experts_per_tok (ties to the
/// lower index), always renormalised. MixtralConfig defaults: 8 experts, top 2, router_aux_loss_coef 0.001,
/// output_router_logits false, sliding_window null, vocab 32000, 131072 positions, rms_norm_eps 1e-5.
/// llama.cpp loads it as the llama architecture (q/k rows permuted) with ffn_gate_inp and ffn_{gate,up,down}_exps.
/// </summary>
internal static class Mixtral
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "mixtral",
        ClassName = "MixtralForCausalLM",
        DefaultVocabSize = 32000,
        DefaultMaxPositionEmbeddings = 131072,
        DefaultRmsNormEps = 1e-5,
        QkvBias = BiasRule.Never,
        OutputBias = BiasRule.Never,
        Block = new BlockOptions { Mlp = MlpKind.MixtureOfExperts },
        Names = new ModuleNames { Mlp = "block_sparse_moe" },
        Experts = new ExpertLayout
        {
            ExpertCountKey = "num_local_experts",
            DefaultExpertCount = 8,
            DefaultTopK = 2,
            Gate = "w1",
            Up = "w3",
            Down = "w2",
            MoeModule = "block_sparse_moe",
        },
        Gguf = new GgufNaming("llama", PermuteQkRows: true, [.. GgufNaming.StandardLayerTensors, ("block_sparse_moe.gate", "ffn_gate_inp")]),
        ScratchChatTemplate = ChatTemplates.ChatMl,
        ScratchExtraConfig = new Dictionary<string, Func<System.Text.Json.Nodes.JsonNode?>>
        {
            ["attention_dropout"] = () => 0.0,
            ["use_cache"] = () => true,
            ["sliding_window"] = () => null,
            ["router_jitter_noise"] = () => 0.0,
        },
    };
}
