using FineTune.Models.Tests;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;
using FineTune.Training;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// resume_from_checkpoint through the real runner and stage executors: a tiny scratch model trained on four records,
/// interrupted after step 3 (what Ctrl-C or SIGTERM does to the run's token), then run again.
/// </summary>
public sealed class ResumeTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _file;

    public const string Yaml = """
        name: resume
        model:
          source: scratch
          scratch: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 16, seed: 0}
        data:
          dataset_dir: data
          dataset: [qa]
          template: qwen3
        stages:
          download: {}
          register: {}
          split: {val_size: 0, cutoff_len: 64}
          train: {device: cpu, lora_rank: 4, learning_rate: 0.01, max_steps: 6, per_device_train_batch_size: 2, save_steps: 2, logging_steps: 1, seed: 3}
        """;

    public const string Records = """
        [{"instruction": "hi", "input": "", "output": "Hello."},
         {"instruction": "who are you?", "input": "", "output": "A tiny model."},
         {"instruction": "name?", "input": "", "output": "Tiny."},
         {"instruction": "bye", "input": "", "output": "Bye."}]
        """;

    /// <summary>Writes the pipeline and its four-record dataset into <paramref name="dir"/>; returns the pipeline file.</summary>
    public static string WritePipeline(TempDir dir, string yaml = Yaml)
    {
        dir.Write("data/dataset_info.json", """{"qa": {"file_name": "qa.json"}}""");
        dir.Write("data/qa.json", Records);
        return dir.Write("pipeline.yaml", yaml);
    }

    public ResumeTests() => _file = WritePipeline(_dir);

    public void Dispose() => _dir.Dispose();

    /// <summary>Records info lines; cancels <paramref name="cts"/> once the train bar has advanced <paramref name="cancelAfter"/> steps.</summary>
    private sealed class Progress(CancellationTokenSource? cts = null, int cancelAfter = 0) : IStageProgress
    {
        public List<string> Lines { get; } = [];
        public void Info(string line) { lock (Lines) Lines.Add(line); }
        public IProgressTask Start(string description, double total) => new Task(description == "train" ? cts : null, cancelAfter);

        private sealed class Task(CancellationTokenSource? cts, int cancelAfter) : IProgressTask
        {
            private double _done;
            public void Increment(double by)
            {
                _done += by;
                if (cts is not null && _done >= cancelAfter) cts.Cancel();
            }
            public void SetDescription(string description) { }
            public void Dispose() { }
        }
    }

    private RunReport Run(Progress progress, CancellationToken ct = default) =>
        PipelineRunner.CreateDefault().Run(PipelineLoader.Load(_file), new RunOptions(), progress, ct);

    /// <summary>The first run stops after step 3 and keeps checkpoint-2 (save_steps) and checkpoint-3 (the cancelled step).</summary>
    private string Interrupt()
    {
        using var cts = new CancellationTokenSource();
        var e = Assert.Throws<TrainingCancelledException>(() => Run(new Progress(cts, cancelAfter: 3), cts.Token));
        Assert.Equal(3, e.Step);
        return e.Checkpoint;
    }

    private void Edit(string from, string to)
    {
        var text = File.ReadAllText(_file);
        Assert.Contains(from, text);
        File.WriteAllText(_file, text.Replace(from, to));
    }

    private static string TrainNotes(RunReport r) => string.Join("\n", r.Stages.Single(s => s.Kind == StageKind.Train).Notes ?? []);

    [Fact]
    public void A_checkpoint_of_another_base_model_or_dataset_is_never_resumed()
    {
        string checkpoint = Interrupt();
        Edit("train: {device: cpu,", "train: {resume_from_checkpoint: true, device: cpu,");

        // Another base model (model.scratch.seed 0 → 1): the run starts fresh and says so in one line.
        Edit("seed: 0}", "seed: 1}");
        var progress = new Progress();
        var other = Run(progress);
        Assert.DoesNotContain("resumed from", TrainNotes(other));
        Assert.DoesNotContain(progress.Lines, l => l.StartsWith("Resumed from", StringComparison.Ordinal));
        Assert.Single(progress.Lines, l => l.StartsWith("resume_from_checkpoint: true, but this run has no checkpoint yet (", StringComparison.Ordinal)
            && l.EndsWith(" holds no checkpoint-<step>); starting fresh.", StringComparison.Ordinal));

        // The same model, one dataset record changed: fresh again.
        Edit("seed: 1}", "seed: 0}");
        File.WriteAllText(Path.Combine(_dir.Path, "data", "qa.json"), Records.Replace("Tiny.", "Small."));
        progress = new Progress();
        Assert.DoesNotContain("resumed from", TrainNotes(Run(progress)));
        Assert.DoesNotContain(progress.Lines, l => l.StartsWith("Resumed from", StringComparison.Ordinal));

        // Model and data as they were: the interrupted run continues from its checkpoint.
        File.WriteAllText(Path.Combine(_dir.Path, "data", "qa.json"), Records);
        progress = new Progress();
        var resumed = Run(progress);
        Assert.Contains($"resumed from {checkpoint}", TrainNotes(resumed));
        Assert.Contains($"Resumed from {checkpoint} at step 3.", progress.Lines);
    }

    [Fact]
    public void Resume_true_before_the_first_checkpoint_starts_fresh_with_a_notice()
    {
        Edit("train: {device: cpu,", "train: {resume_from_checkpoint: true, device: cpu,");
        var progress = new Progress();
        var report = Run(progress);
        Assert.Equal(StageState.Ran, report.Stages.Single(s => s.Kind == StageKind.Train).State);
        Assert.Single(progress.Lines, l => l.StartsWith("resume_from_checkpoint: true, but this run", StringComparison.Ordinal));
    }

    [Fact]
    public void An_explicit_checkpoint_path_that_does_not_exist_stays_an_error()
    {
        Edit("train: {device: cpu,", "train: {resume_from_checkpoint: old/checkpoint-9, device: cpu,");
        var e = Assert.ThrowsAny<PipelineUserException>(() => Run(new Progress()));
        Assert.Contains($"resume_from_checkpoint: '{Path.Combine(_dir.Path, "old", "checkpoint-9")}' is not a checkpoint directory", e.Message);
    }

    [Fact]
    public void Status_names_the_resumable_checkpoint_of_an_interrupted_train_stage()
    {
        string checkpoint = Interrupt();
        var status = PipelineRunner.CreateDefault().Status(PipelineLoader.Load(_file));
        var train = status.Stages.Single(s => s.Kind == StageKind.Train);
        Assert.Equal(StageState.Stale, train.State);
        Assert.Equal($"never ran (not in pipeline.lock); checkpoint-3 (step 3 of 6) can be resumed: set resume_from_checkpoint: true ({checkpoint})",
            train.Reason);

        Edit("train: {device: cpu,", "train: {resume_from_checkpoint: true, device: cpu,");
        train = PipelineRunner.CreateDefault().Status(PipelineLoader.Load(_file)).Stages.Single(s => s.Kind == StageKind.Train);
        Assert.Equal($"never ran (not in pipeline.lock); will resume from checkpoint-3 (step 3 of 6) ({checkpoint})", train.Reason);

        // save_steps and logging_steps change neither the fingerprint nor the checkpoint folder: still resumable.
        Edit("save_steps: 2, logging_steps: 1", "save_steps: 3, logging_steps: 2");
        train = PipelineRunner.CreateDefault().Status(PipelineLoader.Load(_file)).Stages.Single(s => s.Kind == StageKind.Train);
        Assert.EndsWith($"will resume from checkpoint-3 (step 3 of 6) ({checkpoint})", train.Reason);
    }
}
