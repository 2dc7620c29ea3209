using System.Diagnostics;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Pipeline.Tests;

/// <summary>Eval gates and the experiment commands (metrics show/diff, params diff) over the stage engine, on real files and a real git repository.</summary>
public sealed class ExperimentTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string _counter;

    public ExperimentTests() => _counter = Path.Combine(_dir.Path, "runs.txt");

    public void Dispose() => _dir.Dispose();

    private static string WithGate(string gate) =>
        TestPipelines.Full.Replace("    max_new_tokens: 16\n", $"    max_new_tokens: 16\n    require: {{{gate}}}\n");

    private RunReport Run(string file) =>
        new PipelineRunner(FakeStage.All(_counter)).Run(PipelineLoader.Load(file), new RunOptions(), new NullStageProgress(), CancellationToken.None);

    [Fact]
    public void A_failing_gate_stops_the_run_after_eval_and_a_changed_bound_rechecks_without_re_running_eval()
    {
        var file = TestPipelines.Write(_dir, WithGate("bytes: \"< 10\""));
        var e = Assert.Throws<GateFailedException>(() => Run(file));
        var locked = LockFile.Read(LockFile.PathBeside(file));
        double bytes = locked.Stages["eval"].Metrics["bytes"];
        Assert.Equal($"gate failed: bytes = {bytes}, required < 10 (stages.eval.require.bytes)\n" +
            "the stages after it did not run; the metrics are in pipeline.lock (`finetune metrics show`).", e.Message.ReplaceLineEndings("\n"));
        Assert.Equal(["download", "register", "split", "train", "eval"], FakeStage.Runs(_counter));
        Assert.Equal(["download", "register", "split", "train", "eval"], e.Report.Stages.Select(s => s.Name));
        Assert.False(Assert.Single(e.Report.Gates).Passed);

        TestPipelines.Write(_dir, WithGate($"bytes: \">= {bytes}\""));
        var report = Run(file);
        Assert.Equal(StageState.UpToDate, report.Stages.Single(s => s.Name == "eval").State);
        Assert.Equal(["download", "register", "split", "train", "eval", "merge", "export"], FakeStage.Runs(_counter));
        var gate = Assert.Single(report.Gates);
        Assert.Equal(("eval", "bytes", bytes, ">= " + bytes, true), (gate.Stage, gate.Gate.Metric, gate.Value, gate.Gate.Condition, gate.Passed));
    }

    [Fact]
    public void A_gate_on_a_metric_the_stage_does_not_report_fails_naming_what_it_reports()
    {
        var file = TestPipelines.Write(_dir, WithGate("eval_loss: \"<= 0.2\""));
        var e = Assert.Throws<GateFailedException>(() => Run(file));
        Assert.StartsWith("gate failed: eval_loss: stage eval reports no such metric, required <= 0.2 (stages.eval.require.eval_loss); it reports bytes\n", e.Message.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void A_malformed_gate_is_a_located_validation_error()
    {
        var file = TestPipelines.Write(_dir, WithGate("eval_loss: \"<= 0.2\", predict_bleu-4: \"at least 40\""));
        var e = Assert.Throws<PipelineValidationException>(() => PipelineLoader.Load(file));
        var error = Assert.Single(e.Errors);
        Assert.Equal((file, 21, 52, "$.stages.eval.require.predict_bleu-4"), (error.File, error.Line, error.Column, error.JsonPath));
        Assert.Equal("'at least 40' is not a gate: expected an operator (<, <=, >, >=, ==) and a number, such as \"<= 0.2\" or \">= 40\"", error.Message);
    }

    [Fact]
    public void Gates_stay_out_of_the_eval_fingerprint()
    {
        var plain = PipelineLoader.Load(TestPipelines.Write(_dir));
        var gated = PipelineLoader.Load(TestPipelines.Write(_dir, WithGate("eval_loss: \"<= 0.2\"")));
        Assert.Equal(CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Eval, plain.Definition)),
            CanonicalJson.Serialize(StageFingerprint.ParametersOf(StageKind.Eval, gated.Definition)));
    }

    private void Git(params string[] args)
    {
        var psi = new ProcessStartInfo("git") { WorkingDirectory = _dir.Path, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-c", "user.email=ci@example.com", "-c", "user.name=ci" }.Concat(args)) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"git {string.Join(' ', args)}: {err.Result}");
    }

    /// <summary>A committed run at learning_rate 0.005, then a second run at 0.0001 in the working tree.</summary>
    private (string File, LockFile Committed, LockFile Now) TwoExperiments()
    {
        var file = TestPipelines.Write(_dir);
        Run(file);
        Git("init", "-q");
        Git("add", "-A");
        Git("commit", "-q", "-m", "first");
        var committed = LockFile.Read(LockFile.PathBeside(file));
        File.WriteAllText(file, TestPipelines.Full.Replace("learning_rate: 0.005", "learning_rate: 0.0001"));
        Run(file);
        return (file, committed, LockFile.Read(LockFile.PathBeside(file)));
    }

    [Fact]
    public void Metrics_diff_compares_head_with_the_working_tree_lock()
    {
        var (file, committed, now) = TwoExperiments();
        var rows = ExperimentDiff.Metrics(ExperimentDiff.LockAt(file, "HEAD"), ExperimentDiff.LockAt(file, null), all: false);
        // The fake stages' "bytes" grow with their parameters' text: train and everything it feeds changed, download…split did not.
        Assert.Equal(["train", "eval", "merge", "export"], rows.Select(r => r.Stage));
        var train = rows[0];
        Assert.Equal(("bytes", committed.Stages["train"].Metrics["bytes"], now.Stages["train"].Metrics["bytes"]), (train.Metric, train.Old!.Value, train.New!.Value));
        Assert.Equal(1, train.Change);
        Assert.Equal(7, ExperimentDiff.Metrics(ExperimentDiff.LockAt(file, "HEAD"), ExperimentDiff.LockAt(file, null), all: true).Count);
    }

    [Fact]
    public void Params_diff_names_the_resolved_key_that_changed()
    {
        var (file, _, _) = TwoExperiments();
        var rows = ExperimentDiff.Params(ExperimentDiff.ParamsAt(file, "HEAD"), ExperimentDiff.ParamsAt(file, null), all: false);
        Assert.Equal([new ParamChange("stages.train.learning_rate", "0.005", "0.0001")], rows);
        Assert.Contains(ExperimentDiff.Params(ExperimentDiff.ParamsAt(file, "HEAD"), ExperimentDiff.ParamsAt(file, null), all: true),
            r => r == new ParamChange("stages.train.lora_rank", "8", "8"));
    }

    [Fact]
    public void An_unknown_revision_is_a_user_error_naming_it()
    {
        var (file, _, _) = TwoExperiments();
        var e = Assert.Throws<PipelineUserException>(() => ExperimentDiff.LockAt(file, "v9.9"));
        Assert.Equal($"v9.9: git knows no such revision in {Path.GetFullPath(_dir.Path)}; name a commit, branch or tag (`git log --oneline`).", e.Message);
    }
}
