namespace FineTune.Models.Architectures;

/// <summary>
/// Qwen3-MoE (Qwen3MoeForCausalLM): the qwen3 block (q/k RMSNorm per head) whose MLP is a mixture of experts on the
/// layers decoder_sparse_step and mlp_only_layers pick (layer l is sparse when l ∉ mlp_only_layers and
/// (l + 1) % decoder_sparse_step == 0; a dense layer keeps gate/up/down of intermediate_size). The router
/// mlp.gate [num_experts, hidden] gives logits; softmax in fp32, the num_experts_per_tok largest (ties to the lower
/// index), renormalised to sum 1 when norm_topk_prob; each chosen expert is a SwiGLU MLP of moe_intermediate_size.
/// Qwen3MoeConfig defaults: 128 experts, top 8, moe_intermediate_size 768, norm_topk_prob false, decoder_sparse_step 1,
/// router_aux_loss_coef 0.001, output_router_logits false, vocab 151936, 32768 positions, head_dim = hidden / heads.
/// llama.cpp's qwen3moe takes ffn_gate_inp and the experts stacked as ffn_{gate,up,down}_exps [E, …] and always
/// renormalises the top-k weights (so the GGUF export needs norm_topk_prob true and no dense layers).
/// </summary>
internal static class Qwen3Moe
{
    public static readonly ModelArchitecture Architecture = new()
    {
        ModelType = "qwen3_moe",
        ClassName = "Qwen3MoeForCausalLM",
        DefaultVocabSize = 151936,
        DefaultMaxPositionEmbeddings = 32768,
        QkvBias = BiasRule.FromConfig,
        OutputBias = BiasRule.FromConfig,
        Block = new BlockOptions { QkNorm = true, Mlp = MlpKind.MixtureOfExperts },
        Experts = new ExpertLayout
        {
            ExpertCountKey = "num_experts",
            DefaultExpertCount = 128,
            DefaultTopK = 8,
            ExpertIntermediateKey = "moe_intermediate_size",
            DefaultExpertIntermediate = 768,
            NormTopKFromConfig = true,
            SparseLayersFromConfig = true,
        },
        Gguf = new GgufNaming("qwen3moe", PermuteQkRows: false, [.. GgufNaming.StandardLayerTensors, ("mlp.gate", "ffn_gate_inp")]),
        ScratchChatTemplate = ChatTemplates.ChatMlWithThinkSwitch,
    };
}
