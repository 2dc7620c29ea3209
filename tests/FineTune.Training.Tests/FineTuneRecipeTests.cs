using FineTune.Models;
using FineTune.Training;

namespace FineTune.Training.Tests;

/// <summary>The training loop on a tiny qwen3-style model with random weights on the CPU backend.</summary>
public sealed class FineTuneRecipeTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("ft-recipe-").FullName;
    readonly TinyTrainingModels _models = new();

    public void Dispose()
    {
        _models.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    CausalLM Model(TrainingSetup? setup = null) => _models.Create(setup);

    // 10 samples: a 2-token prompt (labels −100) and a response that repeats a per-sample pattern.
    static LoaderSample Sample(int i)
    {
        int len = 6 + i % 4;
        var ids = new int[len];
        for (int t = 0; t < len; t++) ids[t] = t < 2 ? 1 + i : 10 + (i * 3 + t) % 30;
        var labels = ids.Select((x, t) => t < 2 ? -100 : x).ToArray();
        return new LoaderSample(ids, labels, [len]);
    }

    static DataLoader Loader(int batch = 2) => new(10, Sample, batch, seed: 9, shuffle: true, padTokenId: 0);

    TrainingArguments Args(string name, int maxSteps = 8) => new()
    {
        OutputDirectory = Path.Combine(_root, name),
        LearningRate = 1e-2, MaxSteps = maxSteps, LoggingSteps = 1, SaveSteps = 1000, Seed = 9,
        LrSchedulerType = LrSchedulerType.Cosine, WarmupSteps = 1,
    };

    static byte[] Optimizer(string checkpointDir) => File.ReadAllBytes(Path.Combine(checkpointDir, FineTuneRecipe.OptimizerFile));

    static float[] AllTrainable(CausalLM m)
    {
        var all = new List<float>();
        foreach (var p in m.TrainableParameters)
        {
            var host = new float[p.Length];
            m.Backend.Download(p.Master, host);
            all.AddRange(host);
        }
        return [.. all];
    }

    [Fact]
    public void Loss_falls_on_a_learnable_pattern()
    {
        FineTuneRecipe.Train(Model(), Args("fall", 30) with { LearningRate = 5e-2 }, Loader(), null, ITrainingMonitor.Silent);
        var log = TrainerLog.Read(Path.Combine(_root, "fall", TrainerLog.FileName));
        Assert.Equal(30, log.Count);
        Assert.True(log[^1].Loss < log[0].Loss * 0.7, string.Join(" ", log.Select(e => $"{e.Loss}/{e.GradNorm:G3}/{e.LearningRate:G3}")));
    }

    [Fact]
    public void Same_seed_gives_bit_identical_weights()
    {
        var a = Model();
        FineTuneRecipe.Train(a, Args("a"), Loader(), null, ITrainingMonitor.Silent);
        var b = Model();
        FineTuneRecipe.Train(b, Args("b"), Loader(), null, ITrainingMonitor.Silent);
        Assert.Equal(AllTrainable(a), AllTrainable(b));
    }

    [Fact]
    public void Resumed_run_equals_uninterrupted_run_bit_for_bit()
    {
        var setup = new TrainingSetup { LoraRank = 4, LoraAlpha = 8, Seed = 5, LoraDropout = 0.1, NeftuneNoiseAlpha = 5 };
        var whole = Model(setup);
        FineTuneRecipe.Train(whole, Args("whole") with { SaveSteps = 3 }, Loader(), null, ITrainingMonitor.Silent);

        var args = Args("parts") with { SaveSteps = 3 };
        var first = FineTuneRecipe.Train(Model(setup), args with { StopAfterStep = 4 }, Loader(), null, ITrainingMonitor.Silent);
        Assert.True(first.Stopped);
        var resumedModel = Model(setup);
        var second = FineTuneRecipe.Train(resumedModel, args with { ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);

        Assert.EndsWith("checkpoint-3", second.ResumedFrom);
        Assert.Equal(AllTrainable(whole), AllTrainable(resumedModel));
        Assert.Equal(Optimizer(Path.Combine(_root, "whole", "checkpoint-6")), Optimizer(Path.Combine(_root, "parts", "checkpoint-6")));
        Assert.Equal(
            TrainerLog.Read(Path.Combine(_root, "whole", TrainerLog.FileName)).Select(e => e.Loss),
            TrainerLog.Read(Path.Combine(_root, "parts", TrainerLog.FileName)).Select(e => e.Loss));
    }

    /// <summary>Cancels the token once step <paramref name="at"/> has completed (what Ctrl-C does to the CLI's token).</summary>
    sealed class CancelAt(int at, CancellationTokenSource cts) : ITrainingMonitor
    {
        public void Started(int startStep, int maxSteps) { }
        public void Stepped(int step) { if (step == at) cts.Cancel(); }
        public void Logged(StepReport report) { }
        public void Info(string line) { }
    }

    [Fact]
    public void Cancelling_stops_after_the_step_saves_it_and_resume_equals_the_uninterrupted_run()
    {
        var whole = Model();
        FineTuneRecipe.Train(whole, Args("whole"), Loader(), null, ITrainingMonitor.Silent);

        var args = Args("cancel"); // SaveSteps 1000: the only checkpoint is the one cancellation writes
        using var cts = new CancellationTokenSource();
        var e = Assert.Throws<TrainingCancelledException>(() =>
            FineTuneRecipe.Train(Model(), args, Loader(), null, new CancelAt(3, cts), cts.Token));
        Assert.Equal(3, e.Step);
        Assert.EndsWith("checkpoint-3", e.Checkpoint);
        Assert.Contains("resume_from_checkpoint: true", e.Message);
        Assert.Equal([3], new CheckpointStore(args.OutputDirectory).List().Select(c => c.Step));

        var resumed = Model();
        var r = FineTuneRecipe.Train(resumed, args with { ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);
        Assert.EndsWith("checkpoint-3", r.ResumedFrom);
        Assert.Equal(AllTrainable(whole), AllTrainable(resumed));
    }

    /// <summary>Keeps the info lines the loop reports.</summary>
    sealed class InfoLines : ITrainingMonitor
    {
        public List<string> Lines { get; } = [];
        public void Started(int startStep, int maxSteps) { }
        public void Stepped(int step) { }
        public void Logged(StepReport report) { }
        public void Info(string line) => Lines.Add(line);
    }

    [Fact]
    public void Resume_true_without_a_checkpoint_starts_fresh_with_a_one_line_notice()
    {
        var whole = Model();
        FineTuneRecipe.Train(whole, Args("reference"), Loader(), null, ITrainingMonitor.Silent);

        var args = Args("fresh") with { ResumeFromCheckpoint = "true" };
        var info = new InfoLines();
        var fresh = Model();
        var r = FineTuneRecipe.Train(fresh, args, Loader(), null, info);
        Assert.Null(r.ResumedFrom);
        Assert.Equal(8, r.GlobalStep);
        Assert.Equal(AllTrainable(whole), AllTrainable(fresh));
        Assert.Equal($"resume_from_checkpoint: true, but this run has no checkpoint yet ({args.OutputDirectory} holds no checkpoint-<step>); starting fresh.",
            info.Lines[0]);
    }

    [Fact]
    public void A_checkpoint_records_what_it_was_trained_from_and_is_not_resumed_by_another_model_or_data()
    {
        var checkpoints = Path.Combine(_root, "work", "shared");
        var from = new Dictionary<string, string> { ["model"] = "m1", ["data"] = "d1", ["parameters"] = "p1" };
        var args = Args("from") with { CheckpointDirectory = checkpoints, TrainedFrom = from };
        using var cts = new CancellationTokenSource();
        var stopped = Assert.Throws<TrainingCancelledException>(() => FineTuneRecipe.Train(Model(), args, Loader(), null, new CancelAt(3, cts), cts.Token));
        Assert.Equal(from, TrainerState.Load(stopped.Checkpoint).TrainedFrom);

        // The latest checkpoint was trained on other data: never resumed, said in one line, the run starts fresh.
        var info = new InfoLines();
        var other = FineTuneRecipe.Train(Model(), args with
        {
            ResumeFromCheckpoint = "true", TrainedFrom = new Dictionary<string, string>(from) { ["data"] = "d2" },
        }, Loader(), null, info);
        Assert.Null(other.ResumedFrom);
        Assert.Equal($"resume_from_checkpoint: true, but {stopped.Checkpoint} was trained from other data (data d1, this run d2); starting fresh.", info.Lines[0]);

        // An explicit path to another model's checkpoint is refused.
        var e = Assert.Throws<TrainingException>(() => FineTuneRecipe.Train(Model(), args with
        {
            ResumeFromCheckpoint = stopped.Checkpoint, TrainedFrom = new Dictionary<string, string>(from) { ["model"] = "m2" },
        }, Loader(), null, ITrainingMonitor.Silent));
        Assert.Equal($"resume_from_checkpoint: {stopped.Checkpoint} was trained from another base model (model m1, this run m2); " +
            "resume from a checkpoint of this run, or remove resume_from_checkpoint to start fresh.", e.Message);
    }

    [Fact]
    public void Checkpoints_kept_apart_from_the_output_are_marked_finished_only_when_the_run_ends()
    {
        var checkpoints = Path.Combine(_root, "work", "run1");
        var args = Args("apart") with { SaveSteps = 2, CheckpointDirectory = checkpoints };
        using var cts = new CancellationTokenSource();
        Assert.Throws<TrainingCancelledException>(() => FineTuneRecipe.Train(Model(), args, Loader(), null, new CancelAt(3, cts), cts.Token));
        var store = new CheckpointStore(checkpoints);
        Assert.Equal([2, 3], store.List().Select(c => c.Step));
        Assert.False(store.IsFinished);

        FineTuneRecipe.Train(Model(), args with { ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);
        Assert.True(store.IsFinished);
        Assert.Equal("{\"global_step\": 8, \"max_steps\": 8}\n", File.ReadAllText(Path.Combine(checkpoints, CheckpointStore.FinishedMarker)));
        // The same run started again (a forced re-run) and interrupted: its checkpoints are needed again.
        using var again = new CancellationTokenSource();
        Assert.Throws<TrainingCancelledException>(() => FineTuneRecipe.Train(Model(), args, Loader(), null, new CancelAt(2, again), again.Token));
        Assert.False(store.IsFinished);
        // Where checkpoints and output share a directory (standalone use) nothing extra is written into the output.
        FineTuneRecipe.Train(Model(), Args("together"), Loader(), null, ITrainingMonitor.Silent);
        Assert.False(File.Exists(Path.Combine(_root, "together", CheckpointStore.FinishedMarker)));
    }

    [Fact]
    public void Crash_during_checkpoint_write_keeps_the_previous_checkpoint_usable()
    {
        var whole = Model();
        FineTuneRecipe.Train(whole, Args("whole"), Loader(), null, ITrainingMonitor.Silent);

        var args = Args("crash") with { SaveSteps = 2 };
        Assert.Throws<IOException>(() => FineTuneRecipe.Train(Model(), args, Loader(), null, ITrainingMonitor.Silent,
            checkpointWriteHook: dir => { if (dir.Contains("-4-")) throw new IOException("killed while writing checkpoint-4"); }));
        var store = new CheckpointStore(args.OutputDirectory);
        Assert.Equal([2], store.List().Select(c => c.Step));

        var resumed = Model();
        FineTuneRecipe.Train(resumed, args with { ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);
        Assert.Equal(AllTrainable(whole), AllTrainable(resumed));
    }

    [Fact]
    public void Accumulating_two_micro_batches_matches_one_batch_twice_as_large()
    {
        var big = FineTuneRecipe.Train(Model(), Args("big", 1) with { GradientAccumulationSteps = 1 }, Loader(batch: 4), null, ITrainingMonitor.Silent);
        var acc = FineTuneRecipe.Train(Model(), Args("acc", 1) with { GradientAccumulationSteps = 2 }, Loader(batch: 2), null, ITrainingMonitor.Silent);
        Assert.Equal(big.TrainLoss, acc.TrainLoss, tolerance: 1e-5);
    }

    [Fact]
    public void Loraplus_ratio_scales_the_first_update_of_B()
    {
        static float MaxAbsB(CausalLM m) => m.TrainableParameters.Where(p => p.Role == ParameterRole.LoraB)
            .Max(p => { var h = new float[p.Length]; m.Backend.Download(p.Master, h); return h.Max(MathF.Abs); });
        var plain = Model();
        FineTuneRecipe.Train(plain, Args("plain", 1) with { WarmupSteps = 0, LearningRate = 1e-3 }, Loader(), null, ITrainingMonitor.Silent);
        var plus = Model();
        FineTuneRecipe.Train(plus, Args("plus", 1) with { WarmupSteps = 0, LearningRate = 1e-3, LoraplusLrRatio = 16 }, Loader(), null, ITrainingMonitor.Silent);
        // Adam's first update moves every weight by ≈ lr (B starts at zero), so the ratio shows directly.
        Assert.Equal(16.0, MaxAbsB(plus) / MaxAbsB(plain), 2);
    }

    [Fact]
    public void Nan_loss_stops_with_the_step_and_a_hint()
    {
        var model = Model();
        string frozen = model.ParameterNames.First(n => n.EndsWith("mlp.down_proj.weight", StringComparison.Ordinal));
        model.WriteParameter(frozen, Enumerable.Repeat(float.NaN, model.ReadParameter(frozen).Length).ToArray());
        var e = Assert.Throws<TrainingException>(() => FineTuneRecipe.Train(model, Args("nan"), Loader(), null, ITrainingMonitor.Silent));
        Assert.Contains("step 1", e.Message);
        Assert.Contains("learning_rate", e.Message);
    }

    [Fact]
    public void Outputs_include_log_plot_results_checkpoints_within_the_limit_and_eval_lines()
    {
        var args = Args("out") with { SaveSteps = 2, SaveTotalLimit = 2, EvalSteps = 4, PlotLoss = true };
        var result = FineTuneRecipe.Train(Model(), args, Loader(), Loader(batch: 4), ITrainingMonitor.Silent);
        string dir = args.OutputDirectory;
        Assert.Equal([6, 8], new CheckpointStore(dir).List().Select(c => c.Step));
        var log = TrainerLog.Read(Path.Combine(dir, TrainerLog.FileName));
        Assert.Equal([4, 8], log.Where(e => e.EvalLoss is not null).Select(e => e.CurrentSteps));
        Assert.True(File.Exists(Path.Combine(dir, "training_loss.svg")));
        Assert.True(File.Exists(Path.Combine(dir, "training_eval_loss.svg")));
        Assert.True(File.Exists(Path.Combine(dir, FineTuneRecipe.TrainResultsFile)));
        Assert.True(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));
        Assert.Equal(8, result.GlobalStep);
    }
}

/// <summary>optim: adamw_8bit in full fine-tuning: bitsandbytes' 8-bit states in the loop, its checkpoints and its resume.</summary>
public sealed class EightBitOptimizerTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("ft-adam8-").FullName;
    readonly List<IDisposable> _owned = [];

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    // Hidden 64, intermediate 128: the MLP weights (8192 values) are above bnb's min_8bit_size, the norms below it.
    string ModelDir()
    {
        string dir = Path.Combine(_root, "model");
        if (!File.Exists(Path.Combine(dir, "config.json")))
            ScratchModel.Generate(new ScratchModelSpec { HiddenSize = 64, IntermediateSize = 128, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, Seed = 5 }, dir);
        return dir;
    }

    CausalLM Model()
    {
        var backend = new FineTune.Engine.Cpu.CpuBackend(threads: 1);
        var model = CausalLM.Load(ModelDir(), backend, new TrainingSetup { FinetuningType = FinetuningType.Full, EightBitOptimizerStates = true });
        _owned.Add(model);
        _owned.Add(backend);
        return model;
    }

    static LoaderSample Sample(int i)
    {
        int len = 6 + i % 4;
        var ids = new int[len];
        for (int t = 0; t < len; t++) ids[t] = t < 2 ? 1 + i : 10 + (i * 3 + t) % 30;
        return new LoaderSample(ids, ids.Select((x, t) => t < 2 ? -100 : x).ToArray(), [len]);
    }

    static DataLoader Loader() => new(10, Sample, 2, seed: 9, shuffle: true, padTokenId: 0);

    TrainingArguments Args(string name, int maxSteps) => new()
    {
        OutputDirectory = Path.Combine(_root, name), LearningRate = 1e-3, MaxSteps = maxSteps, LoggingSteps = 1, SaveSteps = 1000,
        Seed = 9, Optim = OptimizerKind.Adamw8bit,
    };

    static float[] AllTrainable(CausalLM m) => m.TrainableParameters.SelectMany(p =>
    {
        var host = new float[p.Length];
        m.Backend.Download(p.Master, host);
        return host;
    }).ToArray();

    [Fact]
    public void Large_tensors_hold_8_bit_states_and_the_loss_falls()
    {
        var model = Model();
        var big = model.TrainableParameters.Single(p => p.HfName == "model.layers.0.mlp.down_proj.weight");
        var norm = model.TrainableParameters.Single(p => p.HfName == "model.norm.weight");
        Assert.NotNull(big.EightBit);
        Assert.Null(norm.EightBit);
        // 8192 values: two 1-byte moments and 2·32 absmax instead of 2·4 bytes each.
        Assert.Equal(2 * 8192 + 4 * 64, big.StateBytes);
        FineTuneRecipe.Train(model, Args("fall", 20), Loader(), null, ITrainingMonitor.Silent);
        var log = TrainerLog.Read(Path.Combine(_root, "fall", TrainerLog.FileName));
        Assert.True(log[^1].Loss < log[0].Loss * 0.9, string.Join(" ", log.Select(e => e.Loss)));
    }

    [Fact]
    public void Resuming_from_a_checkpoint_with_8_bit_states_equals_the_uninterrupted_run()
    {
        var whole = Model();
        FineTuneRecipe.Train(whole, Args("whole", 6), Loader(), null, ITrainingMonitor.Silent);
        var first = Model();
        var args = Args("half", 6) with { SaveSteps = 3 };
        using var cts = new CancellationTokenSource();
        Assert.Throws<TrainingCancelledException>(() => FineTuneRecipe.Train(first, args, Loader(), null, new CancelAfter(3, cts), cts.Token));
        var resumed = Model();
        FineTuneRecipe.Train(resumed, args with { ResumeFromCheckpoint = "true" }, Loader(), null, ITrainingMonitor.Silent);
        Assert.Equal(AllTrainable(whole), AllTrainable(resumed));
    }

    sealed class CancelAfter(int at, CancellationTokenSource cts) : ITrainingMonitor
    {
        public void Started(int startStep, int maxSteps) { }
        public void Stepped(int step) { if (step == at) cts.Cancel(); }
        public void Logged(StepReport report) { }
        public void Info(string line) { }
    }
}
