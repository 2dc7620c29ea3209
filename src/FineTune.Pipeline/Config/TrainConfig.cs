using System.ComponentModel;
using System.ComponentModel.DataAnnotations;
using FineTune.Models;
using FineTune.Training;

namespace FineTune.Pipeline.Config;

// finetuning_type and lr_scheduler_type take the engine's own enums (Models.FinetuningType, Training.LrSchedulerType):
// one list of values for the binder, the schema and the engine, so none can gain a value the others lack.

/// <summary>
/// What a train stage optimises, LLaMA-Factory's <c>stage</c>: pt (next-token loss on plain text), sft (loss on the answers
/// of chat samples), dpo and rm (preference pairs: chosen over rejected), kto (answers tagged desirable or undesirable).
/// </summary>
public enum TrainingObjective { Pt, Sft, Dpo, Kto, Rm }

/// <summary>Where a train stage reports its log, as the HF Trainer's <c>report_to</c>: nowhere, TensorBoard event files, an MLflow server, or both.</summary>
public enum ReportTo { None, Tensorboard, Mlflow, All }

/// <summary>
/// <c>gradient_checkpointing</c>: true and false as the YAML booleans they were (fingerprinted as booleans, so pipelines
/// that set them keep their lock), or auto: the engine keeps what fits the memory budget and recomputes the rest.
/// </summary>
public enum GradientCheckpointingSetting { False, True, Auto }

/// <summary><c>stages.train</c>: LLaMA-Factory's finetuning and Hugging Face training arguments.</summary>
public sealed record TrainConfig
{
    /// <summary>Pattern shared by train.device and eval.device.</summary>
    public const string DevicePattern = @"^(auto|cpu|cuda(:[0-9]+)?)$";

    [RegularExpression(DevicePattern), NotFingerprinted, Description("auto (CUDA when present), cpu, cuda or cuda:N. Not part of the fingerprint: where a stage runs does not change what it means.")]
    public string Device { get; init; } = "auto";

    [ScalarOrList, NotFingerprinted, OmittedWhenUnset, Description("Several processes (`finetune run --nproc-per-node N`, torchrun): the GPU of each local rank, [0, 1, …] (local rank i trains on the i-th), or auto (local rank i on GPU i). Not part of the fingerprint.")]
    public IReadOnlyList<string>? Devices { get; init; }

    [Range(0, 3), NotFingerprinted, Description("Several processes: 0 plain data parallel (every rank keeps all optimizer states), 1 optimizer states sharded across ranks (ZeRO-1), 2 gradients too (ZeRO-2), 3 parameters too (ZeRO-3: each rank holds its chunk of every trained weight and gathers one layer at a time; full and freeze, pt and sft). Not part of the fingerprint: the result is the same.")]
    public int ZeroStage { get; init; }

    // Kept out of the block's fingerprint because it enters it resolved: pt and sft decide what the split stage
    // tokenizes (the loader writes the objective onto stages.split.stage, whose output train's fingerprint covers), so a
    // pipeline that moves `stage: sft` from split to train keeps its fingerprints and lock.
    [NotFingerprinted, Description("Training objective, as LLaMA-Factory's stage: pt, sft, dpo, kto or rm. Default: stages.split.stage (the older place for pt/sft), else sft. dpo and rm need ranking datasets (ranking: true), kto a kto_tag column.")]
    public TrainingObjective? Stage { get; init; }

    /// <summary>The objective after the loader resolved it (never null on a loaded pipeline).</summary>
    public TrainingObjective Objective => Stage ?? TrainingObjective.Sft;

    /// <summary>Objectives that train on preference data and not on plain answers.</summary>
    public bool IsPreference => Objective is TrainingObjective.Dpo or TrainingObjective.Kto or TrainingObjective.Rm;

    public FinetuningType FinetuningType { get; init; } = FinetuningType.Lora;

    [Range(1, 65536)] public int LoraRank { get; init; } = 8;

    [Range(0.0, 1e6), Description("LoRA scale numerator; default lora_rank * 2.")]
    public double? LoraAlpha { get; init; }

    [Range(0.0, 1.0, MaximumIsExclusive = true)] public double LoraDropout { get; init; } = 0.0;

    [ScalarOrList, Description("Modules that get LoRA adapters: 'all' (every linear layer but the output head) or names such as q_proj, v_proj.")]
    public IReadOnlyList<string> LoraTarget { get; init; } = ["all"];

    [Description("Rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r.")]
    public bool UseRslora { get; init; }

    [Range(0.0, 1e6), Description("LoRA+ learning-rate ratio of B over A.")]
    public double? LoraplusLrRatio { get; init; }

    [ScalarOrList, Description("Modules trained fully besides the adapters (e.g. embed_tokens, lm_head).")]
    public IReadOnlyList<string>? AdditionalTarget { get; init; }

    [Range(-4096, 4096), Description("freeze: train the last n layers (negative: the first -n).")]
    public int FreezeTrainableLayers { get; init; } = 2;

    [ScalarOrList, Description("freeze: modules trained inside the trainable layers ('all' or names such as mlp, self_attn).")]
    public IReadOnlyList<string> FreezeTrainableModules { get; init; } = ["all"];

    [ScalarOrList, Description("freeze: modules trained besides the trainable layers (e.g. embed_tokens, norm, lm_head).")]
    public IReadOnlyList<string>? FreezeExtraModules { get; init; }

    [Range(0.0, 10.0, MinimumIsExclusive = true)] public double LearningRate { get; init; } = 5e-5;
    [Range(0.0, 1e6)] public double NumTrainEpochs { get; init; } = 3.0;

    [Range(-1, int.MaxValue), Description("Total optimizer steps; -1: use num_train_epochs.")]
    public int MaxSteps { get; init; } = -1;

    [Range(1, 65536)] public int PerDeviceTrainBatchSize { get; init; } = 8;
    [Range(1, 65536)] public int GradientAccumulationSteps { get; init; } = 1;
    public LrSchedulerType LrSchedulerType { get; init; } = LrSchedulerType.Linear;
    [Range(0, int.MaxValue)] public int WarmupSteps { get; init; } = 0;
    [Range(0.0, 1.0)] public double WarmupRatio { get; init; } = 0.0;
    [Range(0.0, 10.0)] public double WeightDecay { get; init; } = 0.0;
    [Range(0.0, 1.0, MaximumIsExclusive = true)] public double AdamBeta1 { get; init; } = 0.9;
    [Range(0.0, 1.0, MaximumIsExclusive = true)] public double AdamBeta2 { get; init; } = 0.999;
    [Range(0.0, 1.0, MinimumIsExclusive = true)] public double AdamEpsilon { get; init; } = 1e-8;

    [Range(0.0, 1e9), Description("Clip the global gradient norm to this value; 0 disables clipping.")]
    public double MaxGradNorm { get; init; } = 1.0;

    [Range(0.0, 1e6), Description("NEFTune noise on the embeddings.")]
    public double? NeftuneNoiseAlpha { get; init; }

    [Range(0.0, 1e6), OmittedWhenUnset, Description("Mixture-of-experts models (qwen3_moe, mixtral): the router load-balancing loss's coefficient, as LLaMA-Factory's moe_aux_loss_coef: set and non-zero, training turns output_router_logits on with this router_aux_loss_coef; unset or 0 keeps config.json's (output_router_logits false: no such loss). Default unset.")]
    public double? MoeAuxLossCoef { get; init; }

    [Range(0, int.MaxValue)] public int Seed { get; init; } = 42;
    // What a run logs, plots and keeps on the side does not change the adapter it trains: these keys stay out of the
    // fingerprint (changing them re-runs nothing) and out of the checkpoint folder's key (a run resumes across them).
    [Range(1, int.MaxValue), NotFingerprinted, Description("A trainer_log.jsonl line and a progress update every n steps. Not part of the fingerprint.")]
    public int LoggingSteps { get; init; } = 10;

    [Range(1, int.MaxValue), NotFingerprinted, Description("Save a checkpoint every n steps (in .finetune/work, for resume_from_checkpoint). Not part of the fingerprint.")]
    public int SaveSteps { get; init; } = 500;

    [Range(1, int.MaxValue), NotFingerprinted, Description("Keep only the newest n checkpoints. Not part of the fingerprint.")]
    public int? SaveTotalLimit { get; init; }

    [Range(1, int.MaxValue), Description("Evaluate on the validation split every n steps (needs split.val_size > 0).")]
    public int? EvalSteps { get; init; }

    [NotFingerprinted, Description("Write training_loss.svg (and training_eval_loss.svg) into the output, as reports. Not part of the fingerprint: an up-to-date stage keeps the plots of the run that made it.")]
    public bool PlotLoss { get; init; }

    // Tracking reports the run; it changes no byte of what is trained, so it stays out of the fingerprint.
    [NotFingerprinted, Description("Report the training log (loss, learning_rate, grad_norm, epoch, eval_loss, … under the HF Trainer's names) to tensorboard (event files under runs/ in the output, as reports), mlflow (the REST API at MLFLOW_TRACKING_URI) or all. Not part of the fingerprint: an up-to-date stage is not re-run to report.")]
    public ReportTo ReportTo { get; init; } = ReportTo.None;

    /// <summary>Pattern of max_memory: a size in bytes with an optional unit (CheckpointingPlanner.ParseBytes reads it).</summary>
    public const string MemorySizePattern = @"^[0-9]+(\.[0-9]+)? ?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$";

    [Description("Recompute activations in the backward to save memory: true (every layer), false (none) or auto (the default): keep as many layers' activations (or, per layer, its GEMM outputs: selective recompute) as fit max_memory, or the free device memory less a margin, and recompute the rest; the run prints its plan. On the CPU, auto keeps every layer unless max_memory is set. Gradients are the same bits either way.")]
    public GradientCheckpointingSetting GradientCheckpointing { get; init; } = GradientCheckpointingSetting.Auto;

    [RegularExpression(MemorySizePattern), NotFingerprinted, Description("gradient_checkpointing auto: the device memory a training step may use, e.g. 40GiB or 80GB (default: the free device memory less a margin). Not part of the fingerprint: it changes what is kept, not the result.")]
    public string? MaxMemory { get; init; }

    [NotFingerprinted, Description("true: continue from the latest checkpoint of this run (same model, data and train parameters) if there is one, else start fresh; or a checkpoint directory (relative to the pipeline file). Not part of the fingerprint: a resumed run ends as the uninterrupted one would.")]
    public string? ResumeFromCheckpoint { get; init; }

    // Preference objectives' keys (LLaMA-Factory's names and defaults). Unset keys stay out of the fingerprint, so a
    // pipeline that never names them keeps its lock; the defaults apply in TrainStage.Preference.
    [Range(0.0, 1e6, MinimumIsExclusive = true), OmittedWhenUnset, Description("dpo/kto: β, the temperature of the implicit reward (orpo: the odds-ratio weight λ; simpo: β). Default 0.1.")]
    public double? PrefBeta { get; init; }

    [OmittedWhenUnset, Description("dpo: the pairwise loss: sigmoid (DPO), hinge, ipo, orpo (no reference model) or simpo (no reference model). Default sigmoid.")]
    public Training.Objectives.PreferenceLoss? PrefLoss { get; init; }

    [Range(0.0, 1e6), OmittedWhenUnset, Description("dpo/kto: weight of an SFT loss on the chosen (desirable) answers. Default 0.")]
    public double? PrefFtx { get; init; }

    [Range(0.0, 0.5), OmittedWhenUnset, Description("dpo with pref_loss sigmoid: cDPO's label smoothing, the probability that a pair's label is wrong. Default 0.")]
    public double? DpoLabelSmoothing { get; init; }

    [Range(0.0, 1e6), OmittedWhenUnset, Description("dpo with pref_loss simpo: the target reward margin γ. Default 0.5.")]
    public double? SimpoGamma { get; init; }

    [Range(0.0, 1e6, MinimumIsExclusive = true), OmittedWhenUnset, Description("kto: weight of the desirable answers' losses. Default 1.0.")]
    public double? KtoChosenWeight { get; init; }

    [Range(0.0, 1e6, MinimumIsExclusive = true), OmittedWhenUnset, Description("kto: weight of the undesirable answers' losses. Default 1.0.")]
    public double? KtoRejectedWeight { get; init; }

    // QLoRA and the 8-bit optimizer (LLaMA-Factory's names). Unset keys stay out of the fingerprint, so pipelines that
    // never name them keep their lock.
    [Range(4, 8), OmittedWhenUnset, Description("QLoRA: hold the frozen decoder linears as bitsandbytes 4-bit (4) or LLM.int8 (8); lora only.")]
    public int? QuantizationBit { get; init; }

    [OmittedWhenUnset, Description("quantization_bit 4: nf4 (NormalFloat, default) or fp4.")]
    public QuantizationType? QuantizationType { get; init; }

    [OmittedWhenUnset, Description("quantization_bit 4: quantize the block absmax again in 8 bits (bnb's double quantization). Default true.")]
    public bool? DoubleQuantization { get; init; }

    [OmittedWhenUnset, Description("Quantization backend; only bnb (bitsandbytes' formats) is implemented.")]
    public QuantizationMethod? QuantizationMethod { get; init; }

    // FP8 frozen base (LLaMA-Factory's fp8). Unset stays out of the fingerprint, so pipelines that never name it keep their lock.
    [OmittedWhenUnset, Description("Hold the frozen decoder linears as FP8 E4M3 (per-tensor scale) and run their products on Hopper's FP8 tensor cores (activations E4M3, gradients E5M2, scaled per step); LoRA and everything else stay bf16. lora or freeze, device cuda on an sm_90 GPU, not with quantization_bit. Default false.")]
    public bool? Fp8 { get; init; }

    [OmittedWhenUnset, Description("fp8: how activations and gradients are scaled before their FP8 casts. current (default): each tensor by its own amax, two passes over it (Transformer Engine's current scaling). delayed: each cast site by the largest amax of its last fp8_amax_history passes, the tensor's amax recorded as it casts, one pass (Transformer Engine's DelayedScaling recipe; values past the scale saturate). Other bits than current.")]
    public Fp8ScalingChoice? Fp8Scaling { get; init; }

    [OmittedWhenUnset, Range(1, 65536), Description("fp8_scaling: delayed: the passes of amax history per cast site (Transformer Engine's amax_history_len). Default 1024.")]
    public int? Fp8AmaxHistory { get; init; }

    // Which CUDA kernels run attention. Unset stays out of the fingerprint, so pipelines that never name it keep their lock.
    [OmittedWhenUnset, Description("CUDA attention kernels of the unpacked causal layers: cudnn (cuDNN's fused attention with its backward without atomic additions: bit-reproducible; FineTune's flash kernels where libcudnn 9 is missing or refuses a shape), cudnn_fast (cuDNN's atomic backward: faster at long sequences, not bit-reproducible run to run) or flash (FineTune's flash kernels for every layer: the same bits whether or not the machine has cuDNN). Packed sequences, sliding windows, soft-caps and head_dim 256 always run the flash kernels. Unset: the FINETUNE_ATTENTION environment variable, else cudnn.")]
    public AttentionChoice? Attention { get; init; }

    [OmittedWhenUnset, Description("adamw_torch (default), adamw_8bit or paged_adamw_8bit (bitsandbytes' 8-bit block-wise states; paging is not implemented, the update is adamw_8bit's).")]
    public OptimizerName? Optim { get; init; }

    /// <summary>Effective LoRA alpha (LLaMA-Factory: defaults to twice the rank).</summary>
    public double ResolvedLoraAlpha => LoraAlpha ?? LoraRank * 2.0;
}

/// <summary>The train stage's <c>fp8_scaling</c> (Engine.Fp8Scaling).</summary>
public enum Fp8ScalingChoice
{
    [YamlName("current")] Current,
    [YamlName("delayed")] Delayed,
}

/// <summary>The train stage's <c>attention</c>: which CUDA kernels run attention (CudaBackend.AttentionKernels).</summary>
public enum AttentionChoice
{
    [YamlName("cudnn")] Cudnn,
    [YamlName("cudnn_fast")] CudnnFast,
    [YamlName("flash")] Flash,
}
