using System.Diagnostics;
using System.Text.Json;
using FineTune.Engine;
using FineTune.Models;

namespace FineTune.Training;

/// <summary>
/// The training loop, top to bottom (torchtune's recipe style): set up the schedule and the checkpoint
/// directory, restore a checkpoint when asked, then for every optimizer step run forward+backward over
/// the step's micro-batches, clip and apply AdamW, log, evaluate and checkpoint; finally save the
/// adapter (LoRA) or model (full/freeze), the trainer log, the loss curve and train_results.json.
/// </summary>
public static class FineTuneRecipe
{
    public const string OptimizerFile = "optimizer.safetensors";
    public const string SchedulerFile = "scheduler.json";
    public const string RngFile = "rng_state.json";
    public const string TrainResultsFile = "train_results.json";

    /// <param name="checkpointWriteHook">Test hook called inside a checkpoint write, after the files are
    /// written and before the directory is renamed into place (throw from it to simulate a crash).</param>
    /// <param name="objective">What the steps optimise: <see cref="TokenObjective"/> (pt, sft; the default) or <see cref="PreferenceTraining"/> (dpo, kto, rm).</param>
    /// <param name="parallel">Several processes (data parallel, ZeRO-1/2): <see cref="TrainingArguments.GradientAccumulationSteps"/>
    /// then counts the micro-batches of a step over all ranks (a multiple of the world size), each rank runs its share, and
    /// only rank 0 writes (outputs, log, checkpoints). Null: one process.</param>
    public static TrainResult Train(CausalLM model, TrainingArguments args, DataLoader train, DataLoader? eval,
        ITrainingMonitor monitor, CancellationToken cancellation = default, Action<string>? checkpointWriteHook = null,
        ITrainingObjective? objective = null, DataParallel? parallel = null)
    {
        objective ??= TokenObjective.Instance;
        // ---- setup: steps, schedule, directories ----
        int accumulation = args.GradientAccumulationSteps;
        if (accumulation < 1) throw new TrainingException($"gradient_accumulation_steps must be at least 1, got {accumulation}.");
        int world = parallel?.WorldSize ?? 1;
        bool writer = parallel?.IsWriter ?? true;
        if (accumulation % world != 0)
            throw new TrainingException($"{accumulation} micro-batches per step do not split evenly over {world} ranks; the step's micro-batches (gradient_accumulation_steps over all ranks) must be a multiple of the world size.");
        int perRank = accumulation / world;
        parallel?.Attach(model);
        RefuseShortSharesUnderAmaxReduction(model, train, accumulation, objective, parallel);
        int stepsPerEpoch = train.StepsPerEpoch(accumulation);
        int maxSteps = args.MaxSteps > 0 ? args.MaxSteps : (int)Math.Ceiling(args.NumTrainEpochs * stepsPerEpoch);
        if (maxSteps <= 0)
            throw new TrainingException($"Nothing to train: max_steps {args.MaxSteps} and num_train_epochs {args.NumTrainEpochs} give 0 steps. Set one of them above 0.");
        int warmup = LearningRateSchedule.ResolveWarmupSteps(args.WarmupSteps, args.WarmupRatio, maxSteps);
        var schedule = new LearningRateSchedule(args.LrSchedulerType, args.LearningRate, warmup, maxSteps);
        bool isLora = model.Setup.FinetuningType == FinetuningType.Lora;

        // Checkpoints kept apart from the output (a pipeline's work directory) only serve to resume this run; they are
        // marked finished at the end so that `finetune clean` may free them, and unmarked while a run is in progress.
        bool checkpointsApart = !string.Equals(Path.GetFullPath(args.ResolvedCheckpointDirectory), Path.GetFullPath(args.OutputDirectory), StringComparison.Ordinal);
        CheckpointStore? store = null;
        TrainerLog? log = null;
        if (writer)
        {
            Directory.CreateDirectory(args.OutputDirectory);
            store = new CheckpointStore(args.ResolvedCheckpointDirectory);
            store.RemoveIncomplete();
            if (checkpointsApart) store.MarkUnfinished();
            log = new TrainerLog(args.OutputDirectory);
        }
        // The other ranks read the checkpoints rank 0 has tidied (they write nothing, so all resolve the same one).
        parallel?.Collective.Barrier("the start of training");
        if (!writer && Directory.Exists(args.ResolvedCheckpointDirectory)) store = new CheckpointStore(args.ResolvedCheckpointDirectory);

        int step = 0;
        long totalTokens = 0;
        double lossSum = 0, elapsedBefore = 0;
        train.Position = new DataPosition(0, 0);
        string? resumedFrom = store is null ? null : ResolveResume(store, args, monitor);
        if (resumedFrom is not null)
        {
            var state = LoadCheckpoint(model, resumedFrom, args.Seed, maxSteps, parallel);
            step = state.GlobalStep;
            totalTokens = state.TotalTokens;
            lossSum = state.TrainLossSum;
            elapsedBefore = state.ElapsedSeconds;
            train.Position = new DataPosition(state.DataEpoch, state.DataMicroBatch);
            model.RandomCounter = state.RandomCounter;
            log?.Reset(TrainerLog.Read(Path.Combine(resumedFrom, TrainerLog.FileName)));
            objective.LoadState(resumedFrom, model, train, eval, monitor);
            monitor.Info($"Resumed from {resumedFrom} at step {step}.");
        }
        else
        {
            log?.Reset([]);
            objective.Prepare(model, train, eval, monitor);
        }

        monitor.Started(step, maxSteps);
        monitor.Info($"{train.SampleCount} samples, {stepsPerEpoch} steps per epoch, {maxSteps} steps, warmup {warmup}, " +
                     $"{model.TrainableParameters.Sum(p => p.Length):N0} trainable parameters, optimizer states {model.OptimizerStateBytes / 1048576.0:F1} MiB " +
                     $"({(model.TrainableParameters.Any(p => p.EightBit is not null) ? "8-bit block-wise, bitsandbytes' AdamW8bit" : "f32")}).");
        if (parallel is { ZeroStage: > 0 })
            monitor.Info($"optimizer states: {parallel.OptimizerStateBytes / 1048576.0:F3} MiB on this rank (of {parallel.FullOptimizerStateBytes / 1048576.0:F3} MiB; ZeRO-{parallel.ZeroStage}, rank {parallel.Rank} of {parallel.WorldSize}).");
        if (parallel is { ReducesEveryBackward: true })
        {
            // The chunks and one layer's window (the embeddings' and head's apart): of the parameters under ZeRO-3, of the gradients under both.
            var (held, whole) = (parallel.HeldBytes, parallel.UnshardedBytes);
            monitor.Info($"trainable parameters {held.Parameters / 1048576.0:F3} MiB, gradients {held.Gradients / 1048576.0:F3} MiB, optimizer states {held.OptimizerStates / 1048576.0:F3} MiB on this rank " +
                $"(unsharded {whole.Parameters / 1048576.0:F3}, {whole.Gradients / 1048576.0:F3}, {whole.OptimizerStates / 1048576.0:F3} MiB; ZeRO-{parallel.ZeroStage}, rank {parallel.Rank} of {parallel.WorldSize}).");
        }
        var clock = Stopwatch.StartNew();
        double lossSinceLog = 0, lastLogTime = 0;
        int stepsSinceLog = 0;
        long tokensSinceLog = 0;
        double? lastLoggedLoss = null, lastEvalLoss = null;
        var metricsSinceLog = new MetricWindow();
        IReadOnlyDictionary<string, double>? lastMetrics = null, lastEvalMetrics = null;
        var gradNormHost = new float[1];

        // ---- the loop: one iteration per optimizer step ----
        while (step < maxSteps)
        {
            // Several ranks learn of a stop only through the step's host all-reduce, so that all stop after the same step.
            if (parallel is null) cancellation.ThrowIfCancellationRequested();

            // Forward and backward over the step's micro-batches; gradients add up in the trainable parameters. The
            // objective scales each backward so that accumulating k micro-batches equals one batch k times as large.
            var microBatches = train.NextStepBatches(accumulation, out long stepTokens);
            model.ZeroGrad();
            ObjectiveOutcome outcome;
            bool stopAsked;
            Tensor gradNormSquared;
            if (parallel is null)
            {
                outcome = objective.Step(model, microBatches);
                gradNormSquared = model.GradNormSquared();
                stopAsked = false; // one process reads its token after the step (below)
            }
            else (outcome, gradNormSquared, stopAsked) = ParallelStep(model, objective, parallel, microBatches, perRank, step + 1, cancellation);
            double loss = outcome.Loss;
            metricsSinceLog.Add(outcome.Metrics);
            model.Backend.Download(gradNormSquared, gradNormHost);
            double gradNorm = Math.Sqrt(gradNormHost[0]);
            if (!double.IsFinite(loss) || !double.IsFinite(gradNorm))
                throw new TrainingException(
                    $"Training diverged at step {step + 1}: loss {loss}, gradient norm {gradNorm}. " +
                    $"The last good checkpoint is {store?.Latest() ?? "none (no checkpoint was saved yet)"}. " +
                    $"Lower learning_rate (now {args.LearningRate}), keep max_grad_norm > 0, or check the data for empty or broken samples.");

            // AdamW with clipping folded in (the backend scales by min(1, max_grad_norm / ‖g‖)); LoRA+ gives B a larger rate.
            double lr = schedule.LearningRate(step);
            AdamWStep AdamW(TrainableParameter p)
            {
                double paramLr = args.LoraplusLrRatio is { } ratio && p.Role == ParameterRole.LoraB ? lr * ratio : lr;
                return new AdamWStep((float)paramLr, (float)args.AdamBeta1, (float)args.AdamBeta2, (float)args.AdamEpsilon,
                    p.WeightDecay ? (float)args.WeightDecay : 0f, step + 1, 1f, (float)args.MaxGradNorm);
            }
            if (parallel is null) model.OptimizerStep(AdamW, gradNormSquared);
            else parallel.OptimizerStep(AdamW, gradNormSquared, step + 1);
            step++;
            totalTokens += stepTokens;
            lossSum += loss;
            lossSinceLog += loss;
            stepsSinceLog++;
            tokensSinceLog += stepTokens;
            monitor.Stepped(step);

            double elapsed = elapsedBefore + clock.Elapsed.TotalSeconds;
            double epoch = (double)step / stepsPerEpoch;
            // LLaMA-Factory's timing: remaining = (total − current) · elapsed / current.
            string elapsedText = TrainerLogEntry.FormatDuration(elapsed);
            string remainingText = TrainerLogEntry.FormatDuration((maxSteps - step) * elapsed / step);

            if (step % args.LoggingSteps == 0 || step == maxSteps)
            {
                double now = clock.Elapsed.TotalSeconds;
                double tokensPerSecond = now > lastLogTime ? tokensSinceLog / (now - lastLogTime) : 0;
                double meanLoss = lossSinceLog / stepsSinceLog;
                // lr is logged as HF does: the rate of the next update (the scheduler has already stepped).
                double nextLr = schedule.LearningRate(step);
                var metrics = metricsSinceLog.TakeMeans();
                log?.Append(new TrainerLogEntry(step, maxSteps, Math.Round(meanLoss, 4), null, nextLr, Math.Round(epoch, 4),
                    TrainerLogEntry.PercentageOf(step, maxSteps), elapsedText, remainingText,
                    GradNorm: gradNorm, Throughput: Math.Round(tokensPerSecond, 2), TotalTokens: totalTokens) { Metrics = TrainerLogEntry.Rounded(metrics) });
                monitor.Logged(new StepReport(step, maxSteps, meanLoss, nextLr, gradNorm, tokensPerSecond, epoch, elapsedText, remainingText, metrics));
                if (metrics.Count > 0) lastMetrics = metrics;
                lastLoggedLoss = meanLoss;
                lossSinceLog = 0; stepsSinceLog = 0; tokensSinceLog = 0; lastLogTime = now;
            }

            // Evaluation is rank 0's alone (it needs no collective): the others go on to the next step and wait there. Under
            // ZeRO-3 every forward gathers each layer from all ranks, and with fp8_scaling: delayed every pass reduces the
            // FP8 amaxes over all ranks (the same eval passes give every rank the same histories), so all of them evaluate
            // and rank 0 logs.
            bool evaluates = writer || parallel is { ZeroStage: 3 } || parallel is { ReducesFp8Amaxes: true };
            if (evaluates && eval is not null && args.EvalSteps is int evalSteps && step % evalSteps == 0)
            {
                // Not cancellable half-way: a Ctrl-C during evaluation stops right after it, with the step saved.
                var evaluated = objective.Evaluate(model, eval, CancellationToken.None);
                lastEvalLoss = evaluated.Loss;
                lastEvalMetrics = evaluated.Metrics.Count > 0 ? evaluated.Metrics.ToDictionary(kv => "eval_" + kv.Key, kv => kv.Value) : null;
                log?.Append(new TrainerLogEntry(step, maxSteps, null, Math.Round(lastEvalLoss.Value, 4), null, Math.Round(epoch, 4),
                    TrainerLogEntry.PercentageOf(step, maxSteps), elapsedText, remainingText) { Metrics = TrainerLogEntry.Rounded(lastEvalMetrics) });
                if (writer) monitor.Info($"step {step}: eval_loss {lastEvalLoss.Value:F4}");
            }

            string SaveHere()
            {
                // ZeRO: every rank gathers the moments (ZeRO-3: and weights) it does not own, so rank 0 saves the single-process format.
                var gathered = parallel?.GatherOptimizerStates(step);
                using var weights = parallel?.GatherParameters(step);
                if (!writer) return "by rank 0";
                var state = new TrainerState(step, maxSteps, epoch, train.Position.Epoch, train.Position.MicroBatch, totalTokens,
                    lossSum, model.RandomCounter, args.Seed, elapsed, args.LearningRate, args.LrSchedulerType.ToString(), warmup, args.TrainedFrom);
                string path = store!.Save(step, dir =>
                {
                    SaveCheckpoint(model, dir, state, schedule, log!.Path, args.BaseModelNameOrPath, gathered);
                    objective.SaveState(dir);
                    checkpointWriteHook?.Invoke(dir);
                }, args.SaveTotalLimit ?? 0);
                monitor.Info($"Saved {path}");
                return path;
            }

            bool saved = step % args.SaveSteps == 0;
            string? savedPath = saved ? SaveHere() : null;

            // Ctrl-C (or a cancelled token) stops after the step in flight: its update is kept in a checkpoint,
            // so `resume_from_checkpoint: true` continues exactly where it stopped.
            // Several ranks stop together: a rank's Ctrl-C reaches the others through the step's host all-reduce.
            if ((parallel is null ? cancellation.IsCancellationRequested : stopAsked) && step < maxSteps)
                throw new TrainingCancelledException(step, maxSteps, savedPath ?? SaveHere());

            if (args.StopAfterStep == step)
                return new TrainResult(step, maxSteps, epoch, lossSum / step, lastLoggedLoss, lastEvalLoss,
                    elapsedBefore + clock.Elapsed.TotalSeconds, totalTokens, train.SampleCount, Stopped: true, resumedFrom, lastMetrics, lastEvalMetrics);
        }

        // ---- final output: adapter or model, results, loss curve ----
        using var finalWeights = parallel?.GatherParameters(step);
        if (!writer)
            return new TrainResult(step, maxSteps, (double)step / stepsPerEpoch, step == 0 ? 0 : lossSum / step, lastLoggedLoss,
                lastEvalLoss, elapsedBefore + clock.Elapsed.TotalSeconds, totalTokens, train.SampleCount, Stopped: false, resumedFrom, lastMetrics, lastEvalMetrics);
        if (isLora) model.SaveAdapter(args.OutputDirectory, args.BaseModelNameOrPath); else model.SaveModel(args.OutputDirectory);
        double runtime = elapsedBefore + clock.Elapsed.TotalSeconds;
        var result = new TrainResult(step, maxSteps, (double)step / stepsPerEpoch, step == 0 ? 0 : lossSum / step, lastLoggedLoss,
            lastEvalLoss, runtime, totalTokens, train.SampleCount, Stopped: false, resumedFrom, lastMetrics, lastEvalMetrics);
        WriteTrainResults(args.OutputDirectory, result);
        if (args.PlotLoss) LossPlot.Write(args.OutputDirectory, log!.ReadAll());
        if (checkpointsApart) store!.MarkFinished(step, maxSteps);
        return result;
    }

    /// <summary>
    /// One data-parallel step on this rank: its share of the step's micro-batches, forward and backward scaled by the
    /// whole step's normaliser, each micro-batch drawing the dropout/NEFTune counter one process would give it; then the
    /// gradient reduction, one host all-reduce of [summed loss, stop requested] (so the loss is the step's mean over all
    /// ranks and a Ctrl-C on any rank stops every rank after the same step), and the clipping norm.
    /// </summary>
    static (ObjectiveOutcome Outcome, Tensor GradNormSquared, bool Stop) ParallelStep(CausalLM model, ITrainingObjective objective,
        DataParallel parallel, IReadOnlyList<StepBatch> step, int perRank, int stepNumber, CancellationToken cancellation)
    {
        long counter = model.RandomCounter;
        var share = parallel.Share(step, perRank);
        // ZeRO-3 (and ZeRO-2's per-layer gradients): every backward reduce-scatters each layer across all ranks, and with
        // fp8_scaling: delayed every pass start all-reduces the FP8 amaxes, so every rank runs perRank passes; a share cut
        // short at an epoch's end is topped up with label-free micro-batches, whose loss and gradients are zero (their
        // forward's amaxes join the ranks' maximum).
        if ((parallel.ReducesEveryBackward || parallel.ReducesFp8Amaxes) && share.Count < perRank)
            share = [.. share, .. Enumerable.Repeat(LabelFree(step[0]), perRank - share.Count)];
        model.RandomCounter = counter + Math.Min(step.Count, parallel.Rank * perRank);
        parallel.BeginStep(stepNumber);
        var outcome = objective.StepShare(model, share, step, parallel);
        model.RandomCounter = counter + step.Count;
        parallel.ReduceGradients(stepNumber);
        double[] host = [outcome.SumLoss, cancellation.IsCancellationRequested ? 1 : 0, .. outcome.Reduce];
        parallel.Collective.AllReduceHost(host, $"the loss of step {stepNumber}");
        var gradNormSquared = parallel.GradNormSquared(stepNumber);
        var metrics = outcome.Metrics?.Invoke(host[2..]) ?? ObjectiveOutcome.NoMetrics;
        return (new ObjectiveOutcome(outcome.Labelled == 0 ? 0 : host[0] / outcome.Labelled, metrics), gradNormSquared, host[1] > 0);
    }

    /// <summary>
    /// fp8_scaling: delayed on several ranks needs every rank to run the same passes; where an epoch's last step leaves a
    /// rank's share short, the trainer tops it up with label-free micro-batches, which only the token objective without a
    /// load-balancing loss can take (a preference objective weighs micro-batches by their samples, and the aux loss of a
    /// label-free micro-batch has gradients). Refused before the first step, not at the epoch's end.
    /// </summary>
    static void RefuseShortSharesUnderAmaxReduction(CausalLM model, DataLoader train, int accumulation, ITrainingObjective objective, DataParallel? parallel)
    {
        int left = train.MicroBatchesPerEpoch % accumulation;
        if (parallel is not { ReducesFp8Amaxes: true } || left == 0) return;
        string? why = objective is PreferenceTraining p ? $"of the {p.Name} objective" : objective is not TokenObjective ? "of this objective"
            : model.RouterAuxLossCoef != 0 ? "with a mixture of experts' load-balancing loss (moe_aux_loss_coef)" : null;
        if (why is null) return;
        throw new TrainingException(
            $"fp8_scaling: delayed on {parallel.WorldSize} ranks reduces the FP8 amaxes over the ranks at every pass, so every rank runs the same passes; " +
            $"an epoch of {train.MicroBatchesPerEpoch} micro-batches ends with a step of {left} of {accumulation}, whose short shares {why} cannot be topped up with label-free micro-batches. " +
            $"Make the training samples a multiple of {(long)train.BatchSize * accumulation} (per_device_train_batch_size × gradient_accumulation_steps), or use fp8_scaling: current.");
    }

    static StepBatch LabelFree(StepBatch b) => new(b.Batch with { Labels = [.. b.Batch.Labels.Select(_ => -100)] }, []);

    /// <summary>
    /// resume_from_checkpoint: <c>true</c> resumes the latest checkpoint of this run if there is one, else starts fresh and
    /// says so in one line (a run killed before its first checkpoint needs no edit); a path resumes that checkpoint, which
    /// must exist. A checkpoint trained from another model, data or parameters (<see cref="TrainingArguments.TrainedFrom"/>)
    /// is never resumed: with <c>true</c> the run starts fresh and says why, an explicit path is an error.
    /// </summary>
    static string? ResolveResume(CheckpointStore store, TrainingArguments args, ITrainingMonitor monitor)
    {
        string? checkpoint = store.Resolve(args.ResumeFromCheckpoint);
        bool latest = CheckpointStore.IsLatest(args.ResumeFromCheckpoint);
        if (latest && checkpoint is null)
        {
            monitor.Info($"resume_from_checkpoint: true, but this run has no checkpoint yet ({store.OutputDirectory} holds no {CheckpointStore.Prefix}<step>); starting fresh.");
            return null;
        }
        if (checkpoint is null || TrainedFromDifference(TrainerState.Load(checkpoint).TrainedFrom, args.TrainedFrom) is not { } difference)
            return checkpoint;
        if (!latest)
            throw new TrainingException($"resume_from_checkpoint: {checkpoint} was trained from {difference}; " +
                "resume from a checkpoint of this run, or remove resume_from_checkpoint to start fresh.");
        monitor.Info($"resume_from_checkpoint: true, but {checkpoint} was trained from {difference}; starting fresh.");
        return null;
    }

    /// <summary>"another base model (model 1f2e…, this run 9a8b…)" for the entries that differ; null when none does (or one side has no record).</summary>
    static string? TrainedFromDifference(IReadOnlyDictionary<string, string>? saved, IReadOnlyDictionary<string, string>? now)
    {
        if (saved is null || now is null) return null;
        var differing = now.Keys.Union(saved.Keys).Order(StringComparer.Ordinal)
            .Where(k => saved.GetValueOrDefault(k) != now.GetValueOrDefault(k)).ToList();
        // model and data first: what a user changed most likely.
        differing = [.. differing.OrderBy(k => k switch { "model" => 0, "data" => 1, _ => 2 })];
        if (differing.Count == 0) return null;
        static string What(string key) => key switch
        {
            "model" => "another base model",
            "data" => "other data",
            "parameters" => "other train parameters",
            _ => $"another {key}",
        };
        static string Short(string? value) => value is null ? "none" : value.Length > 16 ? value[..12] + "…" : value;
        return string.Join(" and ", differing.Select(What)) + " ("
            + string.Join("; ", differing.Select(k => $"{k} {Short(saved.GetValueOrDefault(k))}, this run {Short(now.GetValueOrDefault(k))}")) + ")";
    }

    /// <summary>Summed loss and labelled-token count over one pass of <paramref name="data"/> (no gradients).</summary>
    public static LossResult EvaluateLoss(CausalLM model, DataLoader data, CancellationToken cancellation = default)
    {
        double sum = 0;
        int count = 0;
        foreach (var batch in data.Sequential())
        {
            cancellation.ThrowIfCancellationRequested();
            var r = model.Forward(batch);
            sum += r.SumLoss;
            count += r.TokenCount;
        }
        return new LossResult(sum, count);
    }

    /// <summary>train_results.json with the Hugging Face Trainer's keys.</summary>
    public static void WriteTrainResults(string directory, TrainResult r)
    {
        var results = new SortedDictionary<string, double>
        {
            ["epoch"] = r.Epoch,
            ["train_loss"] = r.TrainLoss,
            ["train_runtime"] = Math.Round(r.RuntimeSeconds, 4),
            ["train_samples_per_second"] = r.RuntimeSeconds > 0 ? Math.Round(r.TrainSamples * r.Epoch / r.RuntimeSeconds, 3) : 0,
            ["train_steps_per_second"] = r.RuntimeSeconds > 0 ? Math.Round(r.GlobalStep / r.RuntimeSeconds, 3) : 0,
            ["train_tokens_per_second"] = r.RuntimeSeconds > 0 ? Math.Round(r.TotalTokens / r.RuntimeSeconds, 2) : 0,
            ["global_step"] = r.GlobalStep,
        };
        string path = Path.Combine(directory, TrainResultsFile);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(results, new JsonSerializerOptions { WriteIndented = true }));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    // ---- checkpoints ----

    /// <summary>
    /// Everything a resumed run needs: the adapter (or model) a user can load as is; the F32 master weights and
    /// AdamW moments (<c>optimizer.safetensors</c>: name, name.exp_avg, name.exp_avg_sq); the schedule; the random
    /// counter; the data position and counters (<c>trainer_state.json</c>); the trainer log so far.
    /// </summary>
    /// <param name="gathered">ZeRO: the moments all-gathered from the ranks' shards (the model holds none of its own).</param>
    static void SaveCheckpoint(CausalLM model, string dir, TrainerState state, LearningRateSchedule schedule, string logPath, string? baseModel,
        IReadOnlyDictionary<TrainableParameter, DataParallel.HostMoments>? gathered)
    {
        if (model.Setup.FinetuningType == FinetuningType.Lora) model.SaveAdapter(dir, baseModel); else model.SaveModel(dir);
        var writer = new SafetensorsWriter(new Dictionary<string, string> { ["format"] = "finetune-optimizer", ["step"] = state.GlobalStep.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        foreach (var p in model.TrainableParameters)
        {
            var shape = p.Shape.Select(d => (long)d).ToArray();
            var host = model.ReadParameter(p.HfName); // the F32 master (ZeRO-3: gathered from the ranks)
            writer.Add(p.Name, host, shape);
            if (gathered is not null)
            {
                writer.Add(p.Name + ".exp_avg", gathered[p].M, shape);
                writer.Add(p.Name + ".exp_avg_sq", gathered[p].V, shape);
                continue;
            }
            if (p.EightBit is { } e)
            {
                // 8-bit moments are saved as they are held: the codes (U8) and each block's absmax.
                foreach (var (suffix, codes, absmax) in new[] { (".exp_avg", p.M, e.AbsmaxM), (".exp_avg_sq", p.V, e.AbsmaxV) })
                {
                    var words = new int[codes.Length];
                    model.Backend.Download(codes, words);
                    writer.AddRaw(p.Name + suffix, SafetensorsDType.U8, shape, System.Runtime.InteropServices.MemoryMarshal.AsBytes(words.AsSpan())[..(int)p.Length]);
                    var am = new float[absmax.Length];
                    model.Backend.Download(absmax, am);
                    writer.Add(p.Name + suffix + ".absmax", am, [am.Length]);
                }
                continue;
            }
            model.Backend.Download(p.M, host);
            writer.Add(p.Name + ".exp_avg", host, shape);
            model.Backend.Download(p.V, host);
            writer.Add(p.Name + ".exp_avg_sq", host, shape);
        }
        writer.Save(Path.Combine(dir, OptimizerFile));
        File.WriteAllText(Path.Combine(dir, SchedulerFile), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["lr_scheduler_type"] = schedule.Type.ToString(),
            ["base_lr"] = schedule.BaseLearningRate,
            ["warmup_steps"] = schedule.WarmupSteps,
            ["total_steps"] = schedule.TotalSteps,
            ["last_step"] = state.GlobalStep,
            ["next_lr"] = schedule.LearningRate(state.GlobalStep),
        }));
        File.WriteAllText(Path.Combine(dir, RngFile), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["seed"] = state.Seed,
            ["random_counter"] = state.RandomCounter,
        }));
        state.Save(dir);
        if (File.Exists(logPath)) File.Copy(logPath, Path.Combine(dir, TrainerLog.FileName));
    }

    /// <param name="parallel">ZeRO: the moments go to the ranks' shards (each keeps the chunks it owns), not to the model.</param>
    static TrainerState LoadCheckpoint(CausalLM model, string dir, ulong seed, int maxSteps, DataParallel? parallel)
    {
        var state = TrainerState.Load(dir);
        if (state.Seed != seed)
            throw new TrainingException($"{dir} was written by a run with seed {state.Seed}, this run has seed {seed}; resume with the same seed or start fresh.");
        if (state.MaxSteps != maxSteps)
            throw new TrainingException($"{dir} was written by a run of {state.MaxSteps} steps, this run has {maxSteps}; the schedule would differ. Keep max_steps/num_train_epochs/batch sizes unchanged to resume.");
        string optimizerPath = Path.Combine(dir, OptimizerFile);
        if (!File.Exists(optimizerPath))
            throw new TrainingException($"{optimizerPath} is missing; the checkpoint is incomplete — resume from an earlier one.");
        using var reader = SafetensorsReader.Open(optimizerPath);
        bool sharded = parallel is { ZeroStage: > 0 };
        var shards = new Dictionary<TrainableParameter, DataParallel.HostMoments>();
        foreach (var p in model.TrainableParameters)
        {
            float[]? m = null;
            foreach (var suffix in new[] { "", ".exp_avg", ".exp_avg_sq" })
            {
                if (suffix.Length > 0 && sharded && p.EightBit is not null)
                    throw new TrainingException($"{optimizerPath}: 8-bit moments cannot be resumed with zero_stage {parallel!.ZeroStage}; resume with zero_stage: 0.");
                if (suffix.Length > 0 && p.EightBit is { } e)
                {
                    LoadEightBitMoment(model, reader, optimizerPath, p.Name + suffix, suffix == ".exp_avg" ? p.M : p.V, suffix == ".exp_avg" ? e.AbsmaxM : e.AbsmaxV, p.Length);
                    continue;
                }
                string name = p.Name + suffix;
                if (!reader.Contains(name))
                    throw new TrainingException($"{optimizerPath} has no tensor '{name}'; the checkpoint belongs to a different model or finetuning setup.");
                var host = reader.ReadAsFloat32(name);
                if (host.Length != p.Length)
                    throw new TrainingException($"{optimizerPath}: tensor '{name}' has {host.Length} values, the model expects {p.Length}; the checkpoint belongs to a different model or LoRA rank.");
                if (suffix.Length == 0) model.LoadMaster(p, host);
                else if (!sharded) model.Backend.Upload(suffix == ".exp_avg" ? p.M : p.V, host);
                else if (m is null) m = host;
                else shards[p] = new DataParallel.HostMoments(m, host);
            }
        }
        if (sharded) parallel!.LoadOptimizerStates(shards);
        return state;
    }

    static void LoadEightBitMoment(CausalLM model, SafetensorsReader reader, string optimizerPath, string name, Tensor codes, Tensor absmax, long length)
    {
        if (!reader.Contains(name) || reader.Get(name).DType != SafetensorsDType.U8 || !reader.Contains(name + ".absmax"))
            throw new TrainingException($"{optimizerPath} has no 8-bit moment '{name}' (U8 codes and '{name}.absmax'); the checkpoint was written with another optim — resume with the same optim.");
        var bytes = reader.GetBytes(name);
        var am = reader.ReadAsFloat32(name + ".absmax");
        if (bytes.Length != length || am.Length != absmax.Length)
            throw new TrainingException($"{optimizerPath}: 8-bit moment '{name}' has {bytes.Length} codes and {am.Length} absmax, the model expects {length} and {absmax.Length}; the checkpoint belongs to a different model.");
        var words = new int[codes.Length];
        bytes.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(words.AsSpan()));
        model.Backend.Upload(codes, words);
        model.Backend.Upload(absmax, am);
    }

    /// <summary>Sums of the objective's metrics since the last log line, for their means over the logged steps.</summary>
    sealed class MetricWindow
    {
        readonly Dictionary<string, (double Sum, int Count)> _sums = [];
        readonly List<string> _order = [];

        public void Add(IReadOnlyDictionary<string, double> metrics)
        {
            foreach (var (k, v) in metrics)
            {
                if (!_sums.TryGetValue(k, out var acc)) { acc = (0, 0); _order.Add(k); }
                _sums[k] = (acc.Sum + v, acc.Count + 1);
            }
        }

        public IReadOnlyDictionary<string, double> TakeMeans()
        {
            var means = _order.ToDictionary(k => k, k => _sums[k].Sum / _sums[k].Count);
            _sums.Clear();
            _order.Clear();
            return means;
        }
    }
}
