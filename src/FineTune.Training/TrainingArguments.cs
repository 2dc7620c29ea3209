namespace FineTune.Training;

/// <summary>
/// The training arguments the loop reads, with Hugging Face / LLaMA-Factory names (snake_case of the
/// property). The pipeline's <c>stages.train</c> block maps one to one onto this record.
/// </summary>
public sealed record TrainingArguments
{
    /// <summary>Where the final adapter/model, trainer_log.jsonl, training_loss.svg and train_results.json go.</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>Where checkpoint-&lt;step&gt; directories go; default: <see cref="OutputDirectory"/>.</summary>
    public string? CheckpointDirectory { get; init; }

    /// <summary>
    /// What adapter_config.json names as base_model_name_or_path (LLaMA-Factory writes the model as the user gave it:
    /// a hub id or a path); default: the directory the model was loaded from.
    /// </summary>
    public string? BaseModelNameOrPath { get; init; }

    public double LearningRate { get; init; } = 5e-5;
    public double NumTrainEpochs { get; init; } = 3.0;
    /// <summary>Total optimizer steps; ≤ 0: ⌈num_train_epochs · steps per epoch⌉.</summary>
    public int MaxSteps { get; init; } = -1;
    public int GradientAccumulationSteps { get; init; } = 1;
    public LrSchedulerType LrSchedulerType { get; init; } = LrSchedulerType.Linear;
    public int WarmupSteps { get; init; }
    public double WarmupRatio { get; init; }
    public double WeightDecay { get; init; }
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    /// <summary>Global gradient-norm clip; 0 disables it.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    /// <summary>
    /// transformers' optim: adamw_torch, or adamw_8bit / paged_adamw_8bit (bitsandbytes' 8-bit block-wise moments; the
    /// model allocates them, TrainingSetup.EightBitOptimizerStates). Paging to host memory is not implemented.
    /// </summary>
    public OptimizerKind Optim { get; init; }
    /// <summary>LoRA+: the B matrices learn at learning_rate × this ratio.</summary>
    public double? LoraplusLrRatio { get; init; }
    public int LoggingSteps { get; init; } = 10;
    public int SaveSteps { get; init; } = 500;
    public int? SaveTotalLimit { get; init; }
    public int? EvalSteps { get; init; }
    public bool PlotLoss { get; init; }
    /// <summary>
    /// A checkpoint directory, "true" for the latest one in the checkpoint directory if there is one (else a fresh start,
    /// said in one line), or null.
    /// </summary>
    public string? ResumeFromCheckpoint { get; init; }
    /// <summary>
    /// What this run trains from (e.g. model, data and parameters → their content hashes), saved in every checkpoint's
    /// trainer_state.json; a checkpoint whose record differs is never resumed. Null: not recorded, not checked.
    /// </summary>
    public IReadOnlyDictionary<string, string>? TrainedFrom { get; init; }
    public ulong Seed { get; init; } = 42;
    /// <summary>Test hook: stop (as if killed) right after this step and its checkpoint, without the final save.</summary>
    public int? StopAfterStep { get; init; }

    public string ResolvedCheckpointDirectory => CheckpointDirectory ?? OutputDirectory;
}

/// <summary>What a finished run reports (HF's train_results.json fields, plus the last logged loss).</summary>
public sealed record TrainResult(int GlobalStep, int MaxSteps, double Epoch, double TrainLoss, double? LastLoss,
    double? EvalLoss, double RuntimeSeconds, long TotalTokens, int TrainSamples, bool Stopped, string? ResumedFrom,
    IReadOnlyDictionary<string, double>? LastMetrics = null, IReadOnlyDictionary<string, double>? EvalMetrics = null);

/// <summary>A logged step as the progress display sees it.</summary>
public sealed record StepReport(int Step, int MaxSteps, double Loss, double LearningRate, double GradNorm, double TokensPerSecond,
    double Epoch, string ElapsedTime, string RemainingTime, IReadOnlyDictionary<string, double>? Metrics = null);

/// <summary>Receives progress from the loop (the pipeline draws a progress bar; tests pass <see cref="Silent"/>).</summary>
/// <summary>transformers' optim names FineTune implements (the pipeline's OptimizerName, member for member).</summary>
public enum OptimizerKind { AdamwTorch, Adamw8bit, PagedAdamw8bit }

public interface ITrainingMonitor
{
    void Started(int startStep, int maxSteps);
    void Stepped(int step);
    void Logged(StepReport report);
    void Info(string line);

    static ITrainingMonitor Silent { get; } = new SilentMonitor();

    private sealed class SilentMonitor : ITrainingMonitor
    {
        public void Started(int startStep, int maxSteps) { }
        public void Stepped(int step) { }
        public void Logged(StepReport report) { }
        public void Info(string line) { }
    }
}
