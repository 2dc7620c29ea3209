namespace FineTune.Pipeline.Import;

/// <summary>What becomes of a LLaMA-Factory argument in a FineTune pipeline.</summary>
public enum KeyFate
{
    /// <summary>Written to a FineTune key (<see cref="LlamaFactoryKey.Target"/>), value kept.</summary>
    Carried,
    /// <summary>Has no effect in FineTune, and need not: <see cref="LlamaFactoryKey.Why"/> says why.</summary>
    Ignored,
    /// <summary>A feature FineTune lacks (<see cref="LlamaFactoryKey.Why"/> names it): the run would differ.</summary>
    Unsupported,
}

/// <summary>One LLaMA-Factory (or Hugging Face TrainingArguments) argument and where it goes in FineTune.</summary>
/// <param name="Target">For a carried key: its place in the pipeline (<c>stages.train.learning_rate</c>).</param>
/// <param name="Why">For an ignored or unsupported key: the reason, or the missing feature.</param>
/// <param name="Remark">For a carried key under another name: how the value translates.</param>
public sealed record LlamaFactoryKey(string Name, KeyFate Fate, string? Target, string? Why, string? Remark = null)
{
    /// <summary>The block a carried key belongs in (<c>stages.train</c>, <c>data</c>), or null.</summary>
    public string? Block => Target is null ? null : Target.Contains('.') ? Target[..Target.LastIndexOf('.')] : "(top level)";

    /// <summary>The key's name in its FineTune block (<c>gradient_checkpointing</c> for disable_gradient_checkpointing).</summary>
    public string? TargetKey => Target?[(Target.LastIndexOf('.') + 1)..];

    /// <summary>
    /// What to tell a user who put this key into a FineTune block where it is unknown: the block it belongs in (and its
    /// FineTune name), or that FineTune ignores it or lacks the feature.
    /// </summary>
    public string Hint => Fate switch
    {
        KeyFate.Ignored => $"LLaMA-Factory's {Name} is ignored in FineTune ({Why}): remove it",
        KeyFate.Unsupported => $"LLaMA-Factory's {Name} is unsupported in FineTune ({Why})",
        _ when LlamaFactoryImport.TargetKey(Target!) is null => $"LLaMA-Factory's {Name} is implied by the {Target} block: remove it",
        _ when TargetKey == Name => $"it belongs in {Block}",
        _ => $"it belongs in {Block} as {TargetKey}" + (Remark is null ? "" : $" ({Remark})"),
    };
}

/// <summary>
/// LLaMA-Factory's arguments (src/llamafactory/hparams: model, data, finetuning, generating arguments, plus the
/// transformers Seq2SeqTrainingArguments it takes) and their fate in FineTune: one table that the importer maps by and
/// that the pipeline loader consults to say, for a LLaMA-Factory key placed in the wrong block, where it belongs.
/// </summary>
public static class LlamaFactoryKeys
{
    private const string Cache = "the stage cache (.finetune/) decides where outputs go; `finetune path PIPELINE --stage NAME` prints it";
    private const string Hashing = "FineTune re-runs a stage when the content hash of its inputs changes, never by a flag";
    private const string Engine = "FineTune's engine picks the precision: bf16 weights and activations with fp32 master weights on CUDA, fp32 on the CPU";
    private const string Kernels = "FineTune's engine has its own fused kernels and attention";
    private const string OneProcess = "FineTune trains in one process on one device";
    private const string Loader = "FineTune's data loader is in-process and needs no workers";
    private const string Hub = "FineTune has no hub upload";
    private const string Multimodal = "FineTune trains text models only";
    private const string Inference = "FineTune's own generation engine serves and evaluates";

    private static readonly LlamaFactoryKey[] Table =
    [
        // model arguments
        C("model_name_or_path", "model.source"),
        C("model_revision", "stages.download.revision"),
        I("trust_remote_code", "FineTune runs no model code from the hub; it has its own implementations of the architectures it supports"),
        I("cache_dir", "downloads live in the stage cache"),
        I("use_fast_tokenizer", "FineTune has one tokenizer, which reads tokenizer.json"),
        I("low_cpu_mem_usage", "FineTune memory-maps safetensors"),
        I("flash_attn", Kernels),
        I("enable_liger_kernel", Kernels),
        I("use_unsloth", Kernels),
        I("use_unsloth_gc", Kernels),
        I("upcast_layernorm", "FineTune computes norms in fp32"),
        I("upcast_lmhead_output", "FineTune computes the loss from fp32 logits"),
        I("hf_hub_token", "set HF_TOKEN in the environment instead"),
        I("ms_hub_token", "FineTune downloads from the Hugging Face hub (or HF_ENDPOINT)"),
        I("om_hub_token", "FineTune downloads from the Hugging Face hub (or HF_ENDPOINT)"),
        I("print_param_status", "the train stage logs its trainable parameter count"),
        I("infer_backend", Inference),
        I("use_kv_cache", Inference),
        I("offload_folder", OneProcess),
        I("device_map", "stages.train.device chooses the device"),
        I("compute_dtype", Engine),
        I("model_max_length", "cutoff_len bounds the samples"),
        C("infer_dtype", "stages.merge.export_dtype"),
        U("adapter_name_or_path", "starting from an existing adapter"),
        U("adapter_folder", "starting from an existing adapter"),
        U("resize_vocab", "resizing the vocabulary"),
        U("split_special_tokens", "splitting special tokens"),
        U("add_tokens", "adding tokens to the vocabulary"),
        U("add_special_tokens", "adding tokens to the vocabulary"),
        U("new_special_tokens_config", "adding tokens to the vocabulary"),
        U("init_special_tokens", "adding tokens to the vocabulary"),
        U("rope_scaling", "RoPE scaling"),
        U("shift_attn", "shifted sparse attention (LongLoRA)"),
        U("mixture_of_depths", "mixture of depths"),
        U("train_from_scratch", "random initialisation of a hub model (FineTune's scratch source generates small models of its own)"),
        U("use_reentrant_gc", "choosing the checkpointing implementation"),
        U("block_diag_attn", "block-diagonal attention (neat_packing covers packed sequences)"),
        // quantization, export
        C("quantization_bit", "stages.train.quantization_bit"),
        C("quantization_method", "stages.train.quantization_method"),
        C("quantization_type", "stages.train.quantization_type"),
        C("double_quantization", "stages.train.double_quantization"),
        U("quantization_device_map", "device maps (FineTune holds the whole model on one device)"),
        C("fp8", "stages.train.fp8"),
        I("fp8_backend", "FineTune's fp8 runs its own FP8 products (cuBLASLt, per-tensor current scaling: torchao's tensorwise recipe)"),
        I("fp8_enable_fsdp_float8_all_gather", "FineTune does not shard weights with FSDP (its data parallel replicates the model)"),
        C("export_dir", "stages.export"),
        C("export_size", "stages.export.export_size"),
        I("export_device", Engine),
        U("export_quantization_bit", "GPTQ export (FineTune quantizes to GGUF: stages.export.gguf_type)"),
        U("export_quantization_dataset", "GPTQ export (FineTune quantizes to GGUF: stages.export.gguf_type)"),
        U("export_quantization_nsamples", "GPTQ export (FineTune quantizes to GGUF: stages.export.gguf_type)"),
        U("export_quantization_maxlen", "GPTQ export (FineTune quantizes to GGUF: stages.export.gguf_type)"),
        U("export_legacy_format", "the legacy .bin format (FineTune writes safetensors)"),
        U("export_hub_model_id", Hub),
        // data arguments
        C("template", "data.template"),
        C("dataset", "data.dataset"),
        C("dataset_dir", "data.dataset_dir"),
        U("eval_dataset", "a separate evaluation dataset (FineTune evaluates on the val_size split of the training data)"),
        I("media_dir", Multimodal),
        C("cutoff_len", "stages.split.cutoff_len"),
        C("train_on_prompt", "stages.split.train_on_prompt"),
        C("mask_history", "stages.split.mask_history"),
        C("packing", "stages.split.packing"),
        C("neat_packing", "stages.split.neat_packing"),
        C("enable_thinking", "stages.split.enable_thinking"),
        C("val_size", "stages.split.val_size"),
        C("max_samples", "stages.register.max_samples"),
        U("streaming", "streaming datasets"),
        U("buffer_size", "streaming datasets"),
        U("mix_strategy", "interleaving datasets (FineTune concatenates them)"),
        U("interleave_probs", "interleaving datasets (FineTune concatenates them)"),
        I("overwrite_cache", Hashing),
        I("preprocessing_batch_size", Loader),
        I("preprocessing_num_workers", Loader),
        I("ignore_pad_token_for_loss", "FineTune never trains on padding"),
        U("eval_on_each_dataset", "evaluating each dataset apart"),
        U("eval_num_beams", "beam search (FineTune's generation samples or decodes greedily)"),
        U("tool_format", "choosing a tool format apart from the template"),
        U("default_system", "replacing the template's default system prompt"),
        U("preserve_thinking", "keeping earlier turns' thinking"),
        I("tokenized_path", "the split stage's output is the tokenized dataset, cached by fingerprint"),
        I("data_shared_file_system", OneProcess),
        // finetuning arguments
        C("stage", "stages.train.stage"),
        C("finetuning_type", "stages.train.finetuning_type"),
        C("lora_rank", "stages.train.lora_rank"),
        C("lora_alpha", "stages.train.lora_alpha"),
        C("lora_dropout", "stages.train.lora_dropout"),
        C("lora_target", "stages.train.lora_target"),
        C("use_rslora", "stages.train.use_rslora"),
        C("loraplus_lr_ratio", "stages.train.loraplus_lr_ratio"),
        C("additional_target", "stages.train.additional_target"),
        C("freeze_trainable_layers", "stages.train.freeze_trainable_layers"),
        C("freeze_trainable_modules", "stages.train.freeze_trainable_modules"),
        C("freeze_extra_modules", "stages.train.freeze_extra_modules"),
        C("pref_beta", "stages.train.pref_beta"),
        C("pref_ftx", "stages.train.pref_ftx"),
        C("pref_loss", "stages.train.pref_loss"),
        C("dpo_label_smoothing", "stages.train.dpo_label_smoothing"),
        C("simpo_gamma", "stages.train.simpo_gamma"),
        C("kto_chosen_weight", "stages.train.kto_chosen_weight"),
        C("kto_rejected_weight", "stages.train.kto_rejected_weight"),
        C("plot_loss", "stages.train.plot_loss"),
        C("disable_gradient_checkpointing", "stages.train.gradient_checkpointing", "negated: LLaMA-Factory's disable_gradient_checkpointing: true is gradient_checkpointing: false"),
        U("use_dora", "DoRA (FineTune trains plain LoRA and rsLoRA: use_rslora)"),
        U("loraplus_lr_embedding", "a LoRA+ learning rate for embeddings"),
        U("pissa_init", "PiSSA initialisation"),
        U("pissa_iter", "PiSSA initialisation"),
        U("pissa_convert", "PiSSA initialisation"),
        U("create_new_adapter", "starting from an existing adapter"),
        U("oft_rank", "OFT adapters"),
        U("oft_block_size", "OFT adapters"),
        U("oft_target", "OFT adapters"),
        U("module_dropout", "OFT adapters"),
        U("pref_bco_weight", "BCO loss"),
        U("ref_model", "a separate reference model (FineTune's reference is the model the stage starts from)"),
        U("ref_model_adapters", "a separate reference model (FineTune's reference is the model the stage starts from)"),
        U("ref_model_quantization_bit", "a separate reference model (FineTune's reference is the model the stage starts from)"),
        U("reward_model", "PPO"),
        U("reward_model_adapters", "PPO"),
        U("reward_model_quantization_bit", "PPO"),
        U("reward_model_type", "PPO"),
        U("ppo_buffer_size", "PPO"),
        U("ppo_epochs", "PPO"),
        U("ppo_score_norm", "PPO"),
        U("ppo_target", "PPO"),
        U("ppo_whiten_rewards", "PPO"),
        U("ld_alpha", "LD-DPO"),
        U("use_galore", "GaLore"), U("galore_target", "GaLore"), U("galore_rank", "GaLore"), U("galore_update_interval", "GaLore"),
        U("galore_scale", "GaLore"), U("galore_proj_type", "GaLore"), U("galore_layerwise", "GaLore"),
        U("use_apollo", "APOLLO"), U("apollo_target", "APOLLO"), U("apollo_rank", "APOLLO"), U("apollo_update_interval", "APOLLO"),
        U("apollo_scale", "APOLLO"), U("apollo_proj", "APOLLO"), U("apollo_proj_type", "APOLLO"), U("apollo_scale_type", "APOLLO"),
        U("apollo_layerwise", "APOLLO"), U("apollo_scale_front", "APOLLO"),
        U("use_badam", "BAdam"), U("badam_mode", "BAdam"), U("badam_start_block", "BAdam"), U("badam_switch_mode", "BAdam"),
        U("badam_switch_interval", "BAdam"), U("badam_update_ratio", "BAdam"), U("badam_mask_mode", "BAdam"), U("badam_verbose", "BAdam"),
        U("use_llama_pro", "LLaMA Pro block expansion"),
        U("use_adam_mini", "Adam-mini"),
        U("use_muon", "the Muon optimizer"),
        U("use_mca", "Megatron training"),
        U("use_megatron_bridge", "Megatron training"),
        U("use_dft_loss", "the DFT loss"),
        U("use_asft_loss", "the ASFT loss"),
        U("use_eaft_loss", "the EAFT loss"),
        U("compute_accuracy", "token accuracy during training"),
        U("disable_shuffling", "training without shuffling"),
        U("early_stopping_steps", "early stopping"),
        I("freeze_vision_tower", Multimodal),
        I("freeze_multi_modal_projector", Multimodal),
        I("freeze_language_model", Multimodal),
        I("include_effective_tokens_per_second", "the train stage always logs tokens per second"),
        I("use_swanlab", "FineTune reports to tensorboard and mlflow only (report_to)"),
        // generating arguments
        C("do_sample", "stages.eval.do_sample"),
        C("temperature", "stages.eval.temperature"),
        C("top_p", "stages.eval.top_p"),
        C("top_k", "stages.eval.top_k"),
        C("max_new_tokens", "stages.eval.max_new_tokens"),
        C("repetition_penalty", "stages.eval.repetition_penalty"),
        U("num_beams", "beam search"),
        U("length_penalty", "beam search"),
        I("max_length", "max_new_tokens bounds generation"),
        I("skip_special_tokens", "generated text is decoded without special tokens"),
        // transformers TrainingArguments
        C("do_train", "stages.train"),
        C("do_eval", "stages.eval"),
        C("do_predict", "stages.eval"),
        C("predict_with_generate", "stages.eval.predict_with_generate"),
        C("per_device_eval_batch_size", "stages.eval.per_device_eval_batch_size"),
        C("eval_strategy", "stages.train.eval_steps"),
        C("evaluation_strategy", "stages.train.eval_steps"),
        C("eval_steps", "stages.train.eval_steps"),
        C("learning_rate", "stages.train.learning_rate"),
        C("num_train_epochs", "stages.train.num_train_epochs"),
        C("max_steps", "stages.train.max_steps"),
        C("per_device_train_batch_size", "stages.train.per_device_train_batch_size"),
        C("gradient_accumulation_steps", "stages.train.gradient_accumulation_steps"),
        C("lr_scheduler_type", "stages.train.lr_scheduler_type"),
        C("warmup_steps", "stages.train.warmup_steps"),
        C("warmup_ratio", "stages.train.warmup_ratio"),
        C("weight_decay", "stages.train.weight_decay"),
        C("adam_beta1", "stages.train.adam_beta1"),
        C("adam_beta2", "stages.train.adam_beta2"),
        C("adam_epsilon", "stages.train.adam_epsilon"),
        C("max_grad_norm", "stages.train.max_grad_norm"),
        C("neftune_noise_alpha", "stages.train.neftune_noise_alpha"),
        C("moe_aux_loss_coef", "stages.train.moe_aux_loss_coef"),
        C("seed", "stages.train.seed"),
        C("logging_steps", "stages.train.logging_steps"),
        C("save_steps", "stages.train.save_steps"),
        C("save_total_limit", "stages.train.save_total_limit"),
        C("gradient_checkpointing", "stages.train.gradient_checkpointing"),
        C("resume_from_checkpoint", "stages.train.resume_from_checkpoint"),
        C("optim", "stages.train"),
        I("output_dir", Cache),
        I("overwrite_output_dir", Cache),
        I("logging_dir", "trainer_log.jsonl is written into the train stage's output"),
        I("run_name", "the pipeline's name names the run"),
        C("report_to", "stages.train.report_to", "none, tensorboard, mlflow or all; other trackers are ignored"),
        I("bf16", Engine),
        I("fp16", Engine),
        I("pure_bf16", Engine),
        I("bf16_full_eval", Engine),
        I("fp16_full_eval", Engine),
        I("tf32", Engine),
        I("half_precision_backend", Engine),
        I("ddp_timeout", OneProcess),
        I("ddp_backend", OneProcess),
        I("ddp_find_unused_parameters", OneProcess),
        I("local_rank", OneProcess),
        I("dataloader_num_workers", Loader),
        I("dataloader_pin_memory", Loader),
        I("dataloader_persistent_workers", Loader),
        I("dataloader_prefetch_factor", Loader),
        I("remove_unused_columns", Loader),
        I("group_by_length", Loader),
        I("save_only_model", "checkpoints in .finetune/work hold what resume needs; the stage output holds the model"),
        I("save_strategy", "checkpoints are saved every save_steps"),
        I("save_safetensors", "FineTune always writes safetensors"),
        I("logging_strategy", "the trainer logs every logging_steps"),
        I("logging_first_step", "the trainer logs every logging_steps"),
        I("log_level", "FineTune's console output has one level"),
        I("disable_tqdm", "progress is a bar on a terminal and plain lines when redirected"),
        I("include_num_input_tokens_seen", "the train stage always counts tokens"),
        I("include_tokens_per_second", "the train stage always logs tokens per second"),
        I("torch_compile", Kernels),
        I("eval_accumulation_steps", "evaluation keeps only the scores"),
        I("eval_delay", "evaluation runs every eval_steps"),
        I("prediction_loss_only", "the eval stage always reports the loss"),
        I("push_to_hub", Hub), I("hub_model_id", Hub), I("hub_strategy", Hub), I("hub_token", Hub), I("hub_private_repo", Hub),
        C("deepspeed", "stages.train.zero_stage", "the DeepSpeed config's zero_optimization.stage, read from the file or LLaMA-Factory's example name ds_z{0,2,3}[_offload]_config.json; offload is unsupported; run with finetune run --nproc-per-node N"),
        U("fsdp", "FSDP (FineTune shards with zero_stage: 3 instead)"),
        U("fsdp_config", "FSDP (FineTune shards with zero_stage: 3 instead)"),
        U("load_best_model_at_end", "keeping the best checkpoint (the stage output is the last step)"),
        U("metric_for_best_model", "keeping the best checkpoint (the stage output is the last step)"),
        U("greater_is_better", "keeping the best checkpoint (the stage output is the last step)"),
        U("label_smoothing_factor", "label smoothing in the SFT loss"),
        U("lr_scheduler_kwargs", "scheduler arguments"),
        U("optim_args", "optimizer arguments"),
        U("gradient_checkpointing_kwargs", "checkpointing arguments"),
        U("auto_find_batch_size", "searching a batch size"),
        U("data_seed", "a data seed apart from seed"),
        U("generation_max_length", "max_new_tokens bounds generation"),
        U("generation_num_beams", "beam search"),
        U("ray_num_workers", "Ray"), U("ray_init_kwargs", "Ray"), U("ray_run_name", "Ray"), U("ray_storage_path", "Ray"),
        U("enable_torch_profiler", "the torch profiler (FineTune profiles with FINETUNE_PROFILE)"),
    ];

    private static readonly Dictionary<string, LlamaFactoryKey> ByName = Table.ToDictionary(k => k.Name, StringComparer.Ordinal);

    /// <summary>Every key the table knows, in its order.</summary>
    public static IReadOnlyList<LlamaFactoryKey> All => Table;

    /// <summary>The key of this name, or null for a name LLaMA-Factory does not document.</summary>
    public static LlamaFactoryKey? Find(string name) => ByName.GetValueOrDefault(name);

    /// <summary>Optimizers that are FineTune's AdamW (decoupled weight decay, fp32 state).</summary>
    public static readonly IReadOnlySet<string> AdamW = new HashSet<string>(StringComparer.Ordinal)
        { "adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_apex_fused" };

    private static LlamaFactoryKey C(string name, string target, string? remark = null) => new(name, KeyFate.Carried, target, null, remark);
    private static LlamaFactoryKey I(string name, string why) => new(name, KeyFate.Ignored, null, why);
    private static LlamaFactoryKey U(string name, string feature) => new(name, KeyFate.Unsupported, null, feature);
}
