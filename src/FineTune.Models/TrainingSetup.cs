using FineTune.Engine;

namespace FineTune.Models;

public enum FinetuningType { Lora, Freeze, Full }

/// <summary>ZeRO-3's partition: rank <see cref="Rank"/> of <see cref="WorldSize"/> owns chunk Rank of each group's flat layout.</summary>
public sealed record ParameterSharding(int Rank, int WorldSize);

/// <summary>
/// Which parameters train and how, with LLaMA-Factory's meanings:
/// lora_target "all" = every linear layer but the output head; freeze_trainable_layers n &gt; 0 trains the
/// last n layers, n &lt; 0 the first −n; freeze_trainable_modules "all" or names under a layer such as
/// mlp, self_attn, input_layernorm (freeze_extra_modules adds embed_tokens, norm, lm_head…);
/// additional_target are modules trained fully beside the adapters (PEFT modules_to_save).
/// </summary>
public sealed record TrainingSetup
{
    public FinetuningType FinetuningType { get; init; } = FinetuningType.Lora;
    public int LoraRank { get; init; } = 8;
    /// <summary>Default: twice the rank (LLaMA-Factory).</summary>
    public double? LoraAlpha { get; init; }
    public double LoraDropout { get; init; }
    public IReadOnlyList<string> LoraTarget { get; init; } = ["all"];
    public bool UseRslora { get; init; }
    public IReadOnlyList<string> AdditionalTarget { get; init; } = [];
    public int FreezeTrainableLayers { get; init; } = 2;
    public IReadOnlyList<string> FreezeTrainableModules { get; init; } = ["all"];
    public IReadOnlyList<string> FreezeExtraModules { get; init; } = [];
    /// <summary>off: keep every layer's activations; on: recompute every layer's forward in the backward; auto: keep what
    /// fits <see cref="MaxMemoryBytes"/> (or the device's free memory less a margin) and recompute the rest.</summary>
    public CheckpointingMode Checkpointing { get; init; }

    /// <summary>true sets <see cref="Checkpointing"/> on, false off; reads whether any layer may be recomputed.</summary>
    public bool GradientCheckpointing
    {
        get => Checkpointing != CheckpointingMode.Off;
        init => Checkpointing = value ? CheckpointingMode.On : CheckpointingMode.Off;
    }

    /// <summary>
    /// auto's ceiling for the device memory of a training step (weights, optimizer state, activations, scratch);
    /// null: the free device memory less a margin, and on the CPU no ceiling (every layer kept).
    /// </summary>
    public long? MaxMemoryBytes { get; init; }
    /// <summary>NEFTune: uniform noise of magnitude alpha/sqrt(seq_len·hidden) on the embeddings while training.</summary>
    public double? NeftuneNoiseAlpha { get; init; }
    /// <summary>Seeds LoRA initialisation, LoRA dropout and NEFTune noise.</summary>
    public int Seed { get; init; } = 42;
    /// <summary>Rows of logits materialised at once by the fused LM head + cross-entropy.</summary>
    public int LogitsChunkRows { get; init; } = 256;
    /// <summary>
    /// A value head (TRL's AutoModelForCausalLMWithValueHead, LLaMA-Factory's reward model): a trainable
    /// Linear(hidden, 1) with bias, v_head.summary, on the final-normed hidden state, trained in every finetuning type.
    /// </summary>
    public bool ValueHead { get; init; }
    /// <summary>Dropout on the hidden state the value head reads while training (TRL's summary_dropout_prob, 0.1 by default).</summary>
    public double ValueHeadDropout { get; init; } = 0.1;

    /// <summary>
    /// adamw_8bit / paged_adamw_8bit: AdamW's moments as bitsandbytes' 8-bit block-wise states for every trainable tensor
    /// of at least 4096 values (bnb's min_8bit_size; smaller ones keep F32 moments, as bnb does).
    /// </summary>
    public bool EightBitOptimizerStates { get; init; }

    /// <summary>
    /// ZeRO-1/2 over several processes: the model allocates no AdamW moments; the data-parallel trainer holds, on each
    /// rank, the moments of the chunks that rank owns (1/world of them). Such a model cannot run its own optimizer step.
    /// </summary>
    public bool ShardedOptimizerStates { get; init; }

    /// <summary>
    /// ZeRO-3 over several processes: this rank holds, of every trainable tensor, only its chunk of the F32 master (and of
    /// the compute copy); the whole values exist one layer at a time, gathered into a window before the layer computes
    /// (see <see cref="CausalLM.ShardedGroups"/>). Implies <see cref="ShardedOptimizerStates"/>. Full and freeze only.
    /// </summary>
    public ParameterSharding? ShardedParameters { get; init; }

    /// <summary>
    /// ZeRO-2 without whole gradients (full and freeze): the trainable tensors' gradients are views of one layer's gradient
    /// window (<see cref="CausalLM.ShardedGroups"/>), handed on after every backward, and the rank keeps its chunk of the
    /// step's gradient; values and masters stay whole. <see cref="ShardedParameters"/> shards the gradients so as well.
    /// </summary>
    public ParameterSharding? ShardedGradients { get; init; }

    /// <summary>
    /// fp8 (LLaMA-Factory's fp8: true): the frozen decoder linears (q, k, v, o, gate, up, down) held as FP8 E4M3 with a
    /// per-tensor scale, their products on Hopper's FP8 tensor cores with activations quantized per step to E4M3 and output
    /// gradients to E5M2; LoRA, activations and everything else stay in the compute dtype. Not with <see cref="Quantization"/>.
    /// </summary>
    public bool Fp8 { get; init; }

    /// <summary>
    /// fp8: how the activations and output gradients are scaled before their casts. Current (the default): each tensor
    /// by its own amax (two passes over it). Delayed (Transformer Engine's DelayedScaling): each cast site by the largest
    /// amax of its last <see cref="Fp8AmaxHistory"/> passes, recording the tensor's amax as it casts (one pass).
    /// </summary>
    public Fp8Scaling Fp8Scaling { get; init; } = Fp8Scaling.Current;

    /// <summary>fp8 with delayed scaling: passes of amax history per cast site (TE's amax_history_len, default 1024).</summary>
    public int Fp8AmaxHistory { get; init; } = Fp8DelayedScale.DefaultHistory;

    /// <summary>QLoRA: the frozen decoder linears held 4-bit or 8-bit (null: the compute dtype).</summary>
    public Quantization.QuantizationSetup? Quantization { get; init; }

    /// <summary>
    /// LLaMA-Factory's moe_aux_loss_coef: when set and non-zero, mixture-of-experts models train with output_router_logits
    /// on and this router_aux_loss_coef; null or 0 keeps config.json's (output_router_logits false: no load-balancing loss).
    /// </summary>
    public double? MoeAuxLossCoef { get; init; }

    public double ResolvedLoraAlpha => LoraAlpha ?? LoraRank * 2.0;

    /// <summary>
    /// PEFT's rank_pattern: (pattern, rank) pairs tried in order against a module's full name
    /// (<c>model.layers.0.self_attn.v_proj</c>); the first that matches it or a dotted suffix of it wins over <see cref="LoraRank"/>.
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, int>> LoraRankPattern { get; init; } = [];

    /// <summary>PEFT's alpha_pattern, matched as <see cref="LoraRankPattern"/>, overriding <see cref="ResolvedLoraAlpha"/>.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> LoraAlphaPattern { get; init; } = [];

    public int LoraRankFor(string module) => PeftPattern.Lookup(LoraRankPattern, module) ?? LoraRank;

    public double LoraAlphaFor(string module) => PeftPattern.Lookup(LoraAlphaPattern, module) ?? ResolvedLoraAlpha;

    /// <summary>alpha/r, or alpha/√r with rsLoRA, with the module's own rank and alpha (PEFT's LoraLayer.scaling).</summary>
    public double LoraScaleFor(string module) => PeftPattern.Scale(LoraAlphaFor(module), LoraRankFor(module), UseRslora);

    /// <summary>Inference only: nothing trains, no gradients or optimizer state are allocated.</summary>
    public static TrainingSetup Inference { get; } = new() { FinetuningType = FinetuningType.Freeze, FreezeTrainableLayers = 0, FreezeTrainableModules = [] };
}
