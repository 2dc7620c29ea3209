using System.Text.Json.Nodes;
using FineTune.Data.Preprocessing;
using FineTune.Models;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Validation;
using FineTune.Training;
using FineTune.Training.Objectives;

namespace FineTune.Pipeline;

/// <summary>
/// The train stage: fine-tunes the downloaded model on the split stage's <c>train.ftds</c> (evaluating on
/// <c>val.ftds</c> every eval_steps) with <see cref="FineTuneRecipe"/>. Output: the PEFT adapter (lora) or an HF
/// model directory (full/freeze); reports trainer_log.jsonl, training_loss.svg (plot_loss) and train_results.json.
/// Checkpoints live in the stage's work directory, one folder per run keyed by the stage's fingerprint (the content
/// hashes of the model and the split data, and the train parameters that change what is trained), so a killed run can
/// continue with <c>resume_from_checkpoint: true</c> and a run of another model or data never picks its checkpoints up.
/// </summary>
/// <param name="environment">Reads the tracking variables (MLFLOW_TRACKING_URI, …); the process environment by default.</param>
public sealed class TrainStage(Func<string, string?>? environment = null) : IStageExecutor
{
    private readonly Func<string, string?> _environment = environment ?? Environment.GetEnvironmentVariable;

    /// <summary>
    /// Reads the model and the tokenized split; a train stage whose from: names an earlier train stage also reads that
    /// one's output (<see cref="TrainOutput.BuiltOn"/>), the model it builds on.
    /// </summary>
    public static StageDescription Description { get; } = new(StageKind.Train, [StageKind.Download, StageKind.Split], typeof(TrainConfig),
        ObjectiveSetting, () => new TrainStage()) { ReadsWhenNamed = [StageKind.Train] };

    /// <summary>
    /// A preference objective enters the fingerprint as <c>{"objective": "dpo"}</c>: dpo and rm read the same pairs, so the
    /// data alone does not tell them apart. pt and sft add nothing (they enter through what split tokenized), so their
    /// fingerprints and lock files stay as they were.
    /// </summary>
    static JsonObject ObjectiveSetting(PipelineDefinition p, StageInstance stage) =>
        stage.Block is TrainConfig { IsPreference: true } t ? new JsonObject { ["objective"] = t.Objective.ToString().ToLowerInvariant() } : [];

    public StageKind Kind => Description.Kind;

    /// <summary>What ZeRO-3 does not cover (the rest of the sentence after "zero_stage: 3 …"), or null when the block can use it.</summary>
    static string? ZeroThreeRefusal(TrainConfig cfg) =>
        cfg.FinetuningType == FinetuningType.Lora ? "shards the weights of finetuning_type full and freeze; LoRA's adapters are small and its base stays whole on every rank: use zero_stage: 2 with lora."
        : cfg.QuantizationBit is not null || cfg.Fp8 == true ? "does not shard a quantized or fp8 base: remove quantization_bit/fp8 or use zero_stage: 2."
        : cfg.Optim is OptimizerName.Adamw8bit or OptimizerName.PagedAdamw8bit ? "with an 8-bit optimizer is not supported (its moments are quantized in blocks of 256, which the flat partition would cut): use optim: adamw_torch or zero_stage: 0."
        : cfg.IsPreference ? $"trains pt and sft only; {cfg.Objective.ToString().ToLowerInvariant()} is not supported with it yet: use zero_stage: 2."
        : cfg.MoeAuxLossCoef is { } coef && coef != 0 ? "with a mixture of experts' load-balancing loss (moe_aux_loss_coef) is not supported: use zero_stage: 2."
        : null;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => [];

    public StageResult Execute(StageContext ctx)
    {
        var cfg = ctx.Block<TrainConfig>();
        string name = ctx.StageName<TrainConfig>();
        // Several processes: rank 0 (which runs the pipeline) sends the others this stage's context, and all go through
        // the same steps below; only rank 0 writes (the output, the checkpoints, tracking).
        var ranks = ctx.Ranks;
        bool writer = ranks is null || ranks.Rank == 0;
        if (cfg.ZeroStage == 3 && ZeroThreeRefusal(cfg) is { } refusal)
            throw new PipelineUserException($"stages.{name}.zero_stage: 3 (parameters sharded, gathered per layer) {refusal}");
        if (ranks is { Rank: 0 }) ranks.Send(new TrainJob(name, ctx.UpstreamOutputs, ctx.UpstreamHashes, ctx.WorkDirectory));
        // A stage that builds on an earlier train stage starts from its result: its adapter, trained on (over the same
        // base), or its full/freeze model directory, loaded instead of the download.
        var builtOn = TrainOutput.BuiltOn(ctx);
        string modelDir = builtOn is { IsModel: true } ? builtOn.Directory : ModelOutput.Of(ctx).Directory;
        string? startAdapter = builtOn is { IsAdapter: true } ? builtOn.Directory : null;
        if (builtOn is not null && !builtOn.IsModel && !builtOn.IsAdapter)
            throw new PipelineUserException($"stages.{name}.from: {ctx.Stage!.Reads[StageKind.Train]}'s output {builtOn.Directory} holds neither an adapter nor a model; re-run it.");
        var split = SplitOutput.Of(ctx);
        string splitDir = split.Directory, trainPath = split.Train, valPath = split.Val;
        if (!File.Exists(trainPath))
            throw new PipelineUserException($"The split stage's output {splitDir} has no train.ftds; re-run the split stage.");

        // Module names are checked against the downloaded model before anything is loaded or trained.
        if (SpecOf(modelDir) is { } spec && ModuleNameChecks.Check(cfg, spec, name) is { Count: > 0 } wrong)
            throw new PipelineKeyException(wrong);

        // ZeRO over several ranks: the model allocates no AdamW moments; DataParallel holds this rank's chunks of them.
        // ZeRO-3: nor whole trainable weights; the model holds this rank's chunk of each and gathers a layer at a time.
        var setup = Setup(cfg) with
        {
            ValueHead = cfg.Objective == TrainingObjective.Rm,
            ShardedOptimizerStates = ranks is not null && cfg.ZeroStage > 0,
            ShardedParameters = ranks is not null && cfg.ZeroStage == 3 ? new ParameterSharding(ranks.Rank, ranks.WorldSize) : null,
            // ZeRO-2 keeps one layer's gradients at a time wherever ZeRO-3 could shard (full/freeze pt/sft); elsewhere (LoRA,
            // preference objectives, …) the model keeps whole gradients, which ZeRO-2 reduce-scatters after the backward.
            ShardedGradients = ranks is not null && cfg.ZeroStage == 2 && ZeroThreeRefusal(cfg) is null ? new ParameterSharding(ranks.Rank, ranks.WorldSize) : null,
        };
        var upstream = UpstreamHashes(ctx);
        var trainedFrom = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = upstream[StageKind.Download],
            ["data"] = upstream[StageKind.Split],
            ["parameters"] = Engine.ContentHasher.Sha256Hex(Engine.CanonicalJson.Serialize(Parameters(ctx))),
        };
        if (upstream.TryGetValue(StageKind.Train, out var builtOnHash)) trainedFrom["built_on"] = builtOnHash;
        var args = Arguments(cfg, writer ? ctx.OutputDirectory : CheckpointDirectory(ctx)) with
        {
            CheckpointDirectory = CheckpointDirectory(ctx),
            TrainedFrom = trainedFrom,
            ResumeFromCheckpoint = ResolveResume(ctx, cfg.ResumeFromCheckpoint),
            // The model as the pipeline names it, not the cache path it was loaded from: the adapter's bytes (and so the
            // stage's output hash and pipeline.lock) must not depend on where the checkout lives.
            BaseModelNameOrPath = BaseModelName(ctx.Pipeline.Model),
        };

        using var backend = ranks is null ? StageBackends.Create(cfg.Device, name, ctx.Progress.Info) : ranks.CreateBackend(cfg, name, ctx.Progress.Info);
        if (setup.Fp8 && backend.Fp8Refusal is { } fp8Refusal)
            throw new PipelineUserException($"stages.{name}.fp8: {fp8Refusal}.");
        var cuda = (backend is FineTune.Engine.ProfilingBackend pb ? pb.Inner : backend) as FineTune.Engine.Cuda.CudaBackend;
        if (cuda is not null && cfg.Attention is { } attention) cuda.AttentionKernels = AttentionKernelsOf(attention);
        using var model = Guard(() => CausalLM.Load(modelDir, backend, setup, startAdapter), startAdapter ?? modelDir);
        model.CheckpointingNotice = text => ctx.Progress.Info($"{name}: {text}");
        if (startAdapter is not null)
            ctx.Progress.Info($"{name}: continues the adapter of {ctx.Stage!.Reads[StageKind.Train]} (its rank, alpha, targets and modules_to_save; this block's LoRA keys are not read).");
        int pad = SplitTemplateInfo.Read(splitDir).PadOrDefault;
        using var trainSet = Guard(() => TokenizedDataset.Open(trainPath), trainPath);
        using var valSet = cfg.EvalSteps is not null && File.Exists(valPath) ? Guard(() => TokenizedDataset.Open(valPath), valPath) : null;
        if (cfg.EvalSteps is not null && (valSet is null || valSet.Count == 0))
            throw new PipelineUserException($"stages.{name}.eval_steps is set but {valPath} holds no validation samples; set val_size above 0 in the split stage it reads or remove eval_steps.");

        var objective = Guard(() => Objective(cfg, name, trainSet, valSet, freshAdapter: startAdapter is null && setup.FinetuningType == FinetuningType.Lora), trainPath);
        using var collective = ranks?.CollectiveFor(backend);
        using var parallel = collective is null ? null : Guard(() => new DataParallel(collective, cfg.ZeroStage), name);
        if (ranks is { Rank: 0 })
            ctx.Progress.Info($"{name}: {ranks.WorldSize} rank(s) over {collective!.Name}, global batch {cfg.PerDeviceTrainBatchSize} × {cfg.GradientAccumulationSteps / ranks.WorldSize} × {ranks.WorldSize}{(cfg.ZeroStage > 0 ? $", ZeRO-{cfg.ZeroStage}" : "")}");
        var tracking = writer ? TrainTracking.Start(ctx, cfg, name, new Engine.StageFingerprint(StageKind.Train, Parameters(ctx), upstream, []).Hash, _environment) : null;
        TrainResult result;
        using (var progress = new ProgressMonitor(ctx.Progress, cfg.Objective))
        {
            ITrainingMonitor monitor = ranks?.FaultStep() is int faultStep ? new KillAfterStep(progress, faultStep) : progress;
            try
            {
                result = Guard(() => FineTuneRecipe.Train(model, args,
                    TokenizedDatasetLoader.Create(trainSet, cfg.PerDeviceTrainBatchSize, (ulong)cfg.Seed, shuffle: true, pad),
                    valSet is null ? null : TokenizedDatasetLoader.Create(valSet, cfg.PerDeviceTrainBatchSize, (ulong)cfg.Seed, shuffle: false, pad),
                    monitor, ctx.Cancellation, objective: objective, parallel: parallel), ctx.OutputDirectory);
            }
            catch (Exception e)
            {
                tracking?.Failed(e);
                throw;
            }
        }
        if (!writer) return StageResult.Empty;
        var trackingReports = tracking!.Finish(result, ctx.OutputDirectory);

        var metrics = new Dictionary<string, double>
        {
            ["train_loss"] = result.TrainLoss,
            ["global_step"] = result.GlobalStep,
            ["epoch"] = result.Epoch,
            ["train_runtime"] = Math.Round(result.RuntimeSeconds, 3),
            ["train_tokens_per_second"] = result.RuntimeSeconds > 0 ? Math.Round(result.TotalTokens / result.RuntimeSeconds, 1) : 0,
            ["trainable_parameters"] = model.TrainableParameters.Sum(p => p.Length),
        };
        if (result.LastLoss is double last) metrics["loss"] = Math.Round(last, 4);
        if (result.EvalLoss is double ev) metrics["eval_loss"] = Math.Round(ev, 4);
        foreach (var (k, v) in (result.LastMetrics ?? ObjectiveOutcome.NoMetrics).Concat(result.EvalMetrics ?? ObjectiveOutcome.NoMetrics))
            metrics[k] = Math.Round(v, 4);
        var notes = new List<string>
        {
            $"{result.GlobalStep} steps in {result.RuntimeSeconds:F1} s, final logged loss {result.LastLoss:F4}, train_loss {result.TrainLoss:F4}",
            $"checkpoints: {args.CheckpointDirectory}",
        };
        if (result.ResumedFrom is not null) notes.Add($"resumed from {result.ResumedFrom}");
        if (model.Quantization is { } quantization)
        {
            // The merge stage folds the adapter into the base the adapter was trained against: the dequantized weights.
            Models.Quantization.QuantizedBaseFile.Write(ctx.OutputDirectory, quantization);
            notes.Add($"QLoRA: frozen decoder linears held as {quantization.Describe()}, {model.QuantizedWeightBytes / 1048576.0:F1} MiB");
        }
        if (setup.Fp8)
            notes.Add($"fp8: {model.Fp8Linears} frozen decoder linears held as FP8 E4M3 (W and Wᵀ), {model.Fp8WeightBytes / 1048576.0:F1} MiB" +
                (setup.Fp8Scaling == FineTune.Engine.Fp8Scaling.Delayed ? $"; delayed scaling over {setup.Fp8AmaxHistory} passes of amax history" : "; current scaling") +
                (cuda is { Fp8FastAccumulation: var fast } ? $"; forward products with {(fast ? "fast" : "f32-promoted")} accumulation (FINETUNE_FP8_FAST_ACCUM)" : ""));
        if (cuda is not null)
            notes.Add($"attention: {FineTune.Engine.Cuda.AttentionKernelsSetting.Name(cuda.AttentionKernels)}, cuDNN ran {cuda.CudnnCalls.Forward} forward and {cuda.CudnnCalls.Backward} backward calls" +
                (cuda.CudnnNotes.Count > 0 ? $" ({string.Join("; ", cuda.CudnnNotes)})" : ""));
        // The log and train_results.json carry wall times and throughput, the loss plots draw the log (logging_steps,
        // plot_loss): reports, not part of the result's hash, so the keys that shape them need not be fingerprinted.
        // report_to's event file is a report too.
        return new StageResult(metrics, notes, [TrainerLog.FileName, FineTuneRecipe.TrainResultsFile, LossPlot.TrainFile, LossPlot.EvalFile, .. trackingReports]);
    }

    /// <summary>stages.train.attention as the CUDA backend's setting.</summary>
    public static FineTune.Engine.Cuda.AttentionKernels AttentionKernelsOf(AttentionChoice choice) => choice switch
    {
        AttentionChoice.Flash => FineTune.Engine.Cuda.AttentionKernels.Flash,
        AttentionChoice.CudnnFast => FineTune.Engine.Cuda.AttentionKernels.CudnnFast,
        _ => FineTune.Engine.Cuda.AttentionKernels.Cudnn,
    };

    /// <summary>
    /// The training loop's arguments for a train block: with <see cref="Setup"/>, the one mapping from config keys to the
    /// engine (keys of the same name carry over; TrainMappingTests checks that every key of the block reaches one of them).
    /// What depends on where the stage runs (checkpoint folder, resume path, provenance) the stage adds.
    /// </summary>
    public static TrainingArguments Arguments(TrainConfig cfg, string outputDirectory) => new()
    {
        OutputDirectory = outputDirectory,
        LearningRate = cfg.LearningRate,
        NumTrainEpochs = cfg.NumTrainEpochs,
        MaxSteps = cfg.MaxSteps,
        GradientAccumulationSteps = cfg.GradientAccumulationSteps,
        LrSchedulerType = cfg.LrSchedulerType,
        WarmupSteps = cfg.WarmupSteps,
        WarmupRatio = cfg.WarmupRatio,
        WeightDecay = cfg.WeightDecay,
        AdamBeta1 = cfg.AdamBeta1,
        AdamBeta2 = cfg.AdamBeta2,
        AdamEpsilon = cfg.AdamEpsilon,
        MaxGradNorm = cfg.MaxGradNorm,
        LoraplusLrRatio = cfg.LoraplusLrRatio,
        Optim = (OptimizerKind)(int)(cfg.Optim ?? OptimizerName.AdamwTorch),
        LoggingSteps = cfg.LoggingSteps,
        SaveSteps = cfg.SaveSteps,
        SaveTotalLimit = cfg.SaveTotalLimit,
        EvalSteps = cfg.EvalSteps,
        PlotLoss = cfg.PlotLoss,
        ResumeFromCheckpoint = cfg.ResumeFromCheckpoint,
        Seed = (ulong)cfg.Seed,
    };

    /// <summary>The preference objectives' settings for a train block (LLaMA-Factory's defaults for unset keys).</summary>
    public static PreferenceSettings Preference(TrainConfig cfg)
    {
        var d = new PreferenceSettings();
        return new PreferenceSettings
        {
            PrefBeta = cfg.PrefBeta ?? d.PrefBeta,
            PrefLoss = cfg.PrefLoss ?? d.PrefLoss,
            PrefFtx = cfg.PrefFtx ?? d.PrefFtx,
            DpoLabelSmoothing = cfg.DpoLabelSmoothing ?? d.DpoLabelSmoothing,
            SimpoGamma = cfg.SimpoGamma ?? d.SimpoGamma,
            KtoChosenWeight = cfg.KtoChosenWeight ?? d.KtoChosenWeight,
            KtoRejectedWeight = cfg.KtoRejectedWeight ?? d.KtoRejectedWeight,
        };
    }

    /// <summary>
    /// What the loop optimises for the block's stage: next-token loss (pt, sft), or a preference objective over the split's
    /// paired (dpo, rm) or KTO samples. A fresh LoRA adapter's reference is the base with the adapter disabled; otherwise
    /// the model as the stage starts (an earlier stage's adapter or model).
    /// </summary>
    static ITrainingObjective Objective(TrainConfig cfg, string name, TokenizedDataset train, TokenizedDataset? val, bool freshAdapter)
    {
        if (!cfg.IsPreference)
        {
            if (train.IsPaired || train.IsKto)
                throw new PipelineUserException($"stages.{name}.stage is {cfg.Objective.ToString().ToLowerInvariant()}, but {train.Path} holds {(train.IsKto ? "KTO samples" : "preference pairs")}; set stage: {(train.IsKto ? "kto" : "dpo or rm")} or train on a split of SFT data.");
            return TokenObjective.Instance;
        }
        string stage = cfg.Objective.ToString().ToLowerInvariant();
        bool kto = cfg.Objective == TrainingObjective.Kto;
        if (kto ? !train.IsKto : !train.IsPaired)
            throw new PipelineUserException($"stages.{name}.stage is {stage}, which trains on {(kto ? "KTO samples (a kto_tag column)" : "preference pairs (ranking: true)")}, but {train.Path} holds {(train.IsPaired ? "pairs" : train.IsKto ? "KTO samples" : "SFT samples")}; point the stage's from: at a split of such data.");
        var settings = Preference(cfg);
        var objective = cfg.Objective switch
        {
            TrainingObjective.Dpo => PreferenceObjectives.Dpo(settings),
            TrainingObjective.Kto => PreferenceObjectives.Kto(settings),
            _ => PreferenceObjectives.RewardModel(),
        };
        var layout = cfg.Objective switch
        {
            TrainingObjective.Kto => PreferenceLayout.Kto,
            TrainingObjective.Rm => PreferenceLayout.Rewards,
            _ => PreferenceLayout.Pairs,
        };
        return new PreferenceTraining(objective, layout, freshAdapter,
            kto ? i => train.Tag(i) != 0 : null, kto && val is not null ? i => val.Tag(i) != 0 : null);
    }

    /// <summary>The engine's training setup for a train block: the one mapping from config keys to the model's settings.</summary>
    public static TrainingSetup Setup(TrainConfig cfg) => new()
    {
        FinetuningType = cfg.FinetuningType,
        LoraRank = cfg.LoraRank,
        LoraAlpha = cfg.ResolvedLoraAlpha,
        LoraDropout = cfg.LoraDropout,
        LoraTarget = cfg.LoraTarget,
        UseRslora = cfg.UseRslora,
        AdditionalTarget = cfg.AdditionalTarget ?? [],
        FreezeTrainableLayers = cfg.FreezeTrainableLayers,
        FreezeTrainableModules = cfg.FreezeTrainableModules,
        FreezeExtraModules = cfg.FreezeExtraModules ?? [],
        Checkpointing = cfg.GradientCheckpointing switch
        {
            GradientCheckpointingSetting.False => CheckpointingMode.Off,
            GradientCheckpointingSetting.True => CheckpointingMode.On,
            _ => CheckpointingMode.Auto,
        },
        // The loader checked the pattern, which ParseBytes reads.
        MaxMemoryBytes = cfg.MaxMemory is { } memory ? CheckpointingPlanner.ParseBytes(memory) : null,
        NeftuneNoiseAlpha = cfg.NeftuneNoiseAlpha,
        MoeAuxLossCoef = cfg.MoeAuxLossCoef,
        Seed = cfg.Seed,
        Quantization = Quantization(cfg),
        Fp8 = cfg.Fp8 == true,
        Fp8Scaling = cfg.Fp8Scaling == Fp8ScalingChoice.Delayed ? FineTune.Engine.Fp8Scaling.Delayed : FineTune.Engine.Fp8Scaling.Current,
        Fp8AmaxHistory = cfg.Fp8AmaxHistory ?? FineTune.Engine.Fp8DelayedScale.DefaultHistory,
        EightBitOptimizerStates = cfg.Optim is OptimizerName.Adamw8bit or OptimizerName.PagedAdamw8bit,
    };

    /// <summary>QLoRA's base for a train block (LLaMA-Factory's defaults: nf4, double quantization on); null without quantization_bit.</summary>
    public static Models.Quantization.QuantizationSetup? Quantization(TrainConfig cfg) => cfg.QuantizationBit is { } bits
        ? new(bits, cfg.QuantizationType == Config.QuantizationType.Fp4 ? FineTune.Engine.QuantFormat.Fp4 : FineTune.Engine.QuantFormat.Nf4, cfg.DoubleQuantization ?? true)
        : null;

    /// <summary>"checkpoint-3 (step 3 of 8) can be resumed: …" when this run (its fingerprint's folder) was interrupted.</summary>
    public string? Resumable(StageContext ctx)
    {
        string dir = CheckpointDirectory(ctx);
        if (!Directory.Exists(dir)) return null;
        var store = new CheckpointStore(dir);
        if (store.IsFinished || store.Latest() is not { } latest) return null;
        TrainerState state;
        try { state = TrainerState.Load(latest); }
        catch (TrainingException) { return null; }
        string what = $"{Path.GetFileName(latest)} (step {state.GlobalStep} of {state.MaxSteps})";
        return CheckpointStore.IsLatest(ctx.Block<TrainConfig>().ResumeFromCheckpoint)
            ? $"will resume from {what} ({latest})"
            : $"{what} can be resumed: set resume_from_checkpoint: true ({latest})";
    }

    /// <summary>The model's shape from its config.json; null where the engine cannot read it (CausalLM.Load then says why).</summary>
    static TransformerSpec? SpecOf(string modelDir)
    {
        try { return TransformerSpec.FromConfig(ModelConfig.Load(modelDir)); }
        catch (Exception e) when (e is ModelFormatException or NotSupportedException) { return null; }
    }

    /// <summary>hf://org/name@rev → org/name (as PEFT and LLaMA-Factory write it); a local source as written; scratch → "scratch".</summary>
    public static string BaseModelName(Config.ModelSection model) =>
        model.IsHub ? Models.Hub.HubModelReference.Parse(model.Source).RepoId : model.Source;

    /// <summary>
    /// <c>checkpoints/&lt;first 16 hex digits of the stage's fingerprint&gt;</c>: one folder per run, keyed by what the
    /// fingerprint covers — the content hashes of the downloaded model and the split data and the fingerprinted train
    /// parameters. The keys kept out of it (device, resume_from_checkpoint, logging_steps, save_steps, save_total_limit,
    /// plot_loss) do not change what is trained, so an interrupted run resumes across a change of them.
    /// </summary>
    static string CheckpointDirectory(StageContext ctx)
    {
        string work = string.IsNullOrEmpty(ctx.WorkDirectory) ? Path.Combine(ctx.PipelineDirectory, ".finetune", "work", "train") : ctx.WorkDirectory;
        var fingerprint = new Engine.StageFingerprint(StageKind.Train, Parameters(ctx), UpstreamHashes(ctx), []);
        return Path.Combine(work, "checkpoints", fingerprint.Hash[..16]);
    }

    /// <summary>This stage's fingerprint parameters.</summary>
    static System.Text.Json.Nodes.JsonObject Parameters(StageContext ctx) =>
        ctx.Stage is { } stage ? Engine.StageFingerprint.ParametersOf(stage, ctx.Pipeline) : Engine.StageFingerprint.ParametersOf(StageKind.Train, ctx.Pipeline);

    /// <summary>The upstream output hashes the engine passed, or (a stage run on its own) the content hash of each upstream directory.</summary>
    static IReadOnlyDictionary<StageKind, string> UpstreamHashes(StageContext ctx) =>
        ctx.UpstreamHashes ?? ctx.UpstreamOutputs.ToDictionary(u => u.Key, u => Engine.ContentHasher.TreeHash(new Engine.ContentHasher(null).HashTree(u.Value)));

    /// <summary>"true"/"false" pass through; a path is resolved against the pipeline file.</summary>
    static string? ResolveResume(StageContext ctx, string? value) =>
        value is null || value.Equals("true", StringComparison.OrdinalIgnoreCase) || value.Equals("false", StringComparison.OrdinalIgnoreCase)
            ? value
            : ctx.ResolvePath(value);

    /// <summary>Turns the training layer's and the model files' user errors into pipeline errors (printed without a stack trace).</summary>
    internal static T Guard<T>(Func<T> action, string where)
    {
        try { return action(); }
        catch (TrainingException e) { throw new PipelineUserException(e.Message, e); }
        catch (ModelFormatException e) { throw new PipelineUserException($"{where}: {e.Message}", e); }
        catch (InvalidDataException e) { throw new PipelineUserException($"{where}: {e.Message}", e); }
    }

    /// <summary>
    /// The test hook <see cref="TrainingRanks.FaultVariable"/>: SIGKILL to this process right after a step, as a node failure
    /// or the OOM killer ends a rank (no handler runs, the sockets close only because the kernel closes them).
    /// </summary>
    sealed class KillAfterStep(ITrainingMonitor inner, int step) : ITrainingMonitor
    {
        public void Started(int startStep, int maxSteps) => inner.Started(startStep, maxSteps);
        public void Stepped(int s)
        {
            inner.Stepped(s);
            if (s == step) _ = kill(Environment.ProcessId, 9);
        }
        public void Logged(StepReport report) => inner.Logged(report);
        public void Info(string line) => inner.Info(line);

        [System.Runtime.InteropServices.DllImport("libc")]
        static extern int kill(int pid, int signal);
    }

    /// <summary>Shows training on the pipeline's progress display: one bar over the steps, described by the last log line.</summary>
    internal sealed class ProgressMonitor(IStageProgress progress, TrainingObjective objective = TrainingObjective.Sft) : ITrainingMonitor, IDisposable
    {
        IProgressTask? _task;

        public void Started(int startStep, int maxSteps)
        {
            _task = progress.Start("train", maxSteps);
            if (startStep > 0) _task.Increment(startStep);
        }

        public void Stepped(int step) => _task?.Increment(1);

        public void Logged(StepReport r) => _task?.SetDescription(
            $"{Name} loss {r.Loss:F4}{Rewards(r)} lr {Engine.NumberText.Format(r.LearningRate)} grad {r.GradNorm:F2} {r.TokensPerSecond:F0} tok/s ETA {r.RemainingTime}");

        string Name => objective is TrainingObjective.Pt or TrainingObjective.Sft ? "train" : objective.ToString().ToLowerInvariant();

        /// <summary>" acc 0.88 margin 1.23" (dpo), " acc 0.88" (rm): the preference metrics worth watching, as TRL's progress shows them.</summary>
        static string Rewards(StepReport r) => r.Metrics switch
        {
            { } m when m.TryGetValue("rewards/accuracies", out var acc) => $" acc {acc:F2} margin {m.GetValueOrDefault("rewards/margins"):F2}",
            { } m when m.TryGetValue("accuracy", out var acc) => $" acc {acc:F2}",
            { } m when m.TryGetValue("kl", out var kl) => $" kl {kl:F3}",
            _ => "",
        };

        public void Info(string line) => progress.Info(line);

        public void Dispose() => _task?.Dispose();
    }
}

/// <summary>What the train stage writes: a PEFT adapter (lora) or an HF model directory (full, freeze).</summary>
public sealed record TrainOutput(string Directory)
{
    /// <summary>A LoRA run's output: adapter_config.json beside the adapter weights, to be loaded over the base model.</summary>
    public bool IsAdapter => File.Exists(Path.Combine(Directory, AdapterConfig.FileName));
    /// <summary>A full or freeze run's output: a complete HF model directory.</summary>
    public bool IsModel => File.Exists(Path.Combine(Directory, "config.json"));

    public static TrainOutput Of(StageContext ctx) => new(ctx.UpstreamOutputs[StageKind.Train]);

    public static TrainOutput? Find(StageContext ctx) =>
        ctx.UpstreamOutputs.TryGetValue(StageKind.Train, out var dir) ? new(dir) : null;

    /// <summary>
    /// For a train stage: the earlier train stage it builds on (its from: names one), whose adapter or model is its starting
    /// point; null when it starts from the downloaded model.
    /// </summary>
    public static TrainOutput? BuiltOn(StageContext ctx) => ctx.Stage?.Kind == StageKind.Train ? Find(ctx) : null;
}
