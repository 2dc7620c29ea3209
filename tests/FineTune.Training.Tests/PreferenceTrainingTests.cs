using FineTune.Models;
using FineTune.Training;
using FineTune.Training.Objectives;

namespace FineTune.Training.Tests;

/// <summary>dpo, orpo, simpo, kto and rm through the training loop on a tiny model (CPU backend): a sample is one row of two packed sequences.</summary>
public sealed class PreferenceTrainingTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("ft-pref-").FullName;
    readonly TinyTrainingModels _models = new();

    public void Dispose()
    {
        _models.Dispose();
        Directory.Delete(_root, recursive: true);
    }

    CausalLM Model(TrainingSetup? setup = null) => _models.Create(setup);

    // Pair i: a 2-token prompt, then a chosen answer counting up from 10 + i and a rejected one counting down from 40 − i
    // (lengths differ, so the two segments are not mirror images).
    internal static LoaderSample Pair(int i)
    {
        int[] prompt = [1 + i % 5, 7];
        int[] chosen = [.. prompt, .. Enumerable.Range(0, 3 + i % 3).Select(t => 10 + (i + t) % 12)];
        int[] rejected = [.. prompt, .. Enumerable.Range(0, 2 + i % 4).Select(t => 40 - (i + t) % 12)];
        int[] Labels(int[] s) => s.Select((x, t) => t < prompt.Length ? -100 : x).ToArray();
        return new LoaderSample([.. chosen, .. rejected], [.. Labels(chosen), .. Labels(rejected)], [chosen.Length, rejected.Length]);
    }

    static DataLoader Pairs(int count = 8, int batch = 2, bool shuffle = true) => new(count, Pair, batch, seed: 9, shuffle, padTokenId: 0);

    TrainingArguments Args(string name, int maxSteps = 12) => new()
    {
        OutputDirectory = Path.Combine(_root, name),
        LearningRate = 2e-2, MaxSteps = maxSteps, LoggingSteps = 1, SaveSteps = 1000, Seed = 9,
        LrSchedulerType = LrSchedulerType.Constant, MaxGradNorm = 0,
    };

    static PreferenceTraining Dpo(PreferenceSettings? s = null, bool freshAdapter = true) =>
        new(PreferenceObjectives.Dpo(s ?? new PreferenceSettings()), PreferenceLayout.Pairs, referenceWithoutAdapters: freshAdapter);

    static float[] Values(CausalLM m, TrainableParameter p)
    {
        var host = new float[p.Length];
        m.Backend.Download(p.Master, host);
        return host;
    }

    static void Set(CausalLM m, TrainableParameter p, float[] values)
    {
        m.Backend.Upload(p.Master, values);
        if (!ReferenceEquals(p.Value, p.Master)) m.Backend.Copy(p.Value, p.Master);
    }

    [Theory]
    [InlineData(PreferenceLoss.Sigmoid)]
    [InlineData(PreferenceLoss.Ipo)]
    [InlineData(PreferenceLoss.Hinge)]
    [InlineData(PreferenceLoss.Orpo)]
    [InlineData(PreferenceLoss.Simpo)]
    public void Dpo_family_learns_to_prefer_the_chosen_answers(PreferenceLoss loss)
    {
        var model = Model();
        var r = FineTuneRecipe.Train(model, Args(loss.ToString()), Pairs(), null, ITrainingMonitor.Silent,
            objective: Dpo(new PreferenceSettings { PrefLoss = loss, PrefBeta = loss is PreferenceLoss.Orpo ? 0.5 : 0.5 }));
        var log = TrainerLog.Read(Path.Combine(_root, loss.ToString(), TrainerLog.FileName));
        Assert.Equal(12, log.Count);
        // Fresh LoRA (B = 0): at step 1 the policy is the reference, so DPO's rewards are 0 and its loss is log 2.
        if (loss == PreferenceLoss.Sigmoid)
        {
            Assert.Equal(Math.Round(Math.Log(2), 4), log[0].Loss);
            Assert.Equal(0.0, log[0].Metric("rewards/margins"));
        }
        Assert.True(log[^1].Loss < log[0].Loss, $"{log[0].Loss} → {log[^1].Loss}");
        Assert.True(log[^1].Metric("rewards/accuracies") >= 0.8, string.Join(" ", log.Select(e => e.Metric("rewards/accuracies"))));
        Assert.True(log[^1].Metric("rewards/margins") > 0);
        Assert.NotNull(log[^1].Metric("logps/chosen"));
        Assert.Equal(log[^1].Metric("rewards/accuracies")!.Value, r.LastMetrics!["rewards/accuracies"], 4);
    }

    /// <summary>The loss as a function of the weights: one eval forward of the batch, the fixed reference, the objective.</summary>
    static double Loss(CausalLM model, IPreferenceObjective objective, TokenBatch batch, double[] ref0, double[] ref1)
    {
        var s = model.ScoreSequences(batch, forBackward: false);
        int k = s.SegmentsPerRow, n = batch.BatchSize;
        double[] Col(double[] v, int seg) => Enumerable.Range(0, n).Select(r => v[r * k + seg]).ToArray();
        var tokens = s.Tokens.Select(t => (double)t).ToArray();
        return objective.Compute(PreferenceBatch.Pairs(Col(s.SumLogProb, 0), Col(s.SumLogProb, 1), Col(tokens, 0), Col(tokens, 1), ref0, ref1)).Loss;
    }

    [Theory]
    [InlineData(PreferenceLoss.Sigmoid, 0.0)]
    [InlineData(PreferenceLoss.Sigmoid, 0.5)]
    [InlineData(PreferenceLoss.Ipo, 0.0)]
    [InlineData(PreferenceLoss.Orpo, 0.0)]
    public void Lora_gradients_of_a_dpo_step_are_the_finite_differences_of_its_loss(PreferenceLoss loss, double ftx)
    {
        var model = Model();
        foreach (var p in model.TrainableParameters.Where(p => p.Role == ParameterRole.LoraB))
            Set(model, p, Values(model, p).Select((_, i) => 0.05f * MathF.Sin(i + 1)).ToArray());
        var settings = new PreferenceSettings { PrefLoss = loss, PrefBeta = 0.5, PrefFtx = ftx };
        var objective = PreferenceObjectives.Dpo(settings);
        var training = new PreferenceTraining(objective, PreferenceLayout.Pairs, referenceWithoutAdapters: true);
        var loader = Pairs(count: 3, batch: 3, shuffle: false);
        training.Prepare(model, loader, null, ITrainingMonitor.Silent);
        var step = loader.NextStepBatches(1, out _);
        var reference = step[0].Batch;
        var s0 = model.ScoreSequences(reference, forBackward: false, adapters: false);
        double[] ref0 = [.. Enumerable.Range(0, 3).Select(r => s0.SumLogProb[r * s0.SegmentsPerRow])];
        double[] ref1 = [.. Enumerable.Range(0, 3).Select(r => s0.SumLogProb[r * s0.SegmentsPerRow + 1])];

        model.ZeroGrad();
        var outcome = training.Step(model, step);
        Assert.Equal(Loss(model, objective, reference, ref0, ref1), outcome.Loss, 10);
        foreach (var p in model.TrainableParameters.Where(p => p.Role is ParameterRole.LoraA or ParameterRole.LoraB).Take(4))
        {
            var grad = new float[p.Length];
            model.Backend.Download(p.Grad!, grad);
            var w = Values(model, p);
            foreach (int i in new[] { 0, p.Length / 2, p.Length - 1 })
            {
                const float h = 1e-2f;
                float keep = w[i];
                w[i] = keep + h; Set(model, p, w);
                double plus = Loss(model, objective, reference, ref0, ref1);
                w[i] = keep - h; Set(model, p, w);
                double minus = Loss(model, objective, reference, ref0, ref1);
                w[i] = keep; Set(model, p, w);
                double fd = (plus - minus) / (2 * h);
                Assert.True(Math.Abs(fd - grad[i]) <= 2e-3 * Math.Max(1, Math.Abs(fd)), $"{p.Name}[{i}]: backward {grad[i]}, finite difference {fd}");
            }
        }
    }

    [Fact]
    public void Accumulating_micro_batches_equals_one_batch_of_all_pairs()
    {
        var one = Model();
        FineTuneRecipe.Train(one, Args("one", 3) with { GradientAccumulationSteps = 1 }, Pairs(batch: 4), null, ITrainingMonitor.Silent, objective: Dpo());
        var two = Model();
        FineTuneRecipe.Train(two, Args("two", 3) with { GradientAccumulationSteps = 2 }, Pairs(batch: 2), null, ITrainingMonitor.Silent, objective: Dpo());
        var a = TrainerLog.Read(Path.Combine(_root, "one", TrainerLog.FileName));
        var b = TrainerLog.Read(Path.Combine(_root, "two", TrainerLog.FileName));
        // Same pairs per step (the shuffle orders samples, the batch size only cuts them), so the same losses up to rounding.
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(a[i].Loss!.Value, b[i].Loss!.Value, 3);
            Assert.Equal(a[i].Metric("rewards/margins")!.Value, b[i].Metric("rewards/margins")!.Value, 3);
        }
    }

    [Fact]
    public void A_resumed_dpo_run_reads_its_reference_from_the_checkpoint_and_equals_the_uninterrupted_run()
    {
        // A run that continues an adapter (no disabled-adapter reference): the checkpoint's reference log-probs are all it has.
        var setup = new TrainingSetup { LoraRank = 4, LoraAlpha = 8, Seed = 5 };
        var whole = Model(setup);
        FineTuneRecipe.Train(whole, Args("whole", 8) with { SaveSteps = 3 }, Pairs(), null, ITrainingMonitor.Silent, objective: Dpo(freshAdapter: false));
        var args = Args("parts", 8) with { SaveSteps = 3 };
        FineTuneRecipe.Train(Model(setup), args with { StopAfterStep = 4 }, Pairs(), null, ITrainingMonitor.Silent, objective: Dpo(freshAdapter: false));
        string checkpoint = Path.Combine(_root, "parts", "checkpoint-3");
        Assert.True(File.Exists(Path.Combine(checkpoint, PreferenceTraining.ReferenceFile)));
        var resumed = Model(setup);
        FineTuneRecipe.Train(resumed, args with { ResumeFromCheckpoint = "true" }, Pairs(), null, ITrainingMonitor.Silent, objective: Dpo(freshAdapter: false));
        var p = whole.TrainableParameters.First(p => p.Role == ParameterRole.LoraB);
        Assert.Equal(Values(whole, p), Values(resumed, resumed.TrainableParameters.First(q => q.Name == p.Name)));

        File.Delete(Path.Combine(checkpoint, PreferenceTraining.ReferenceFile));
        Directory.Delete(Path.Combine(_root, "parts", "checkpoint-6"), recursive: true);
        var e = Assert.Throws<TrainingException>(() => FineTuneRecipe.Train(Model(setup), args with { ResumeFromCheckpoint = checkpoint },
            Pairs(), null, ITrainingMonitor.Silent, objective: Dpo(freshAdapter: false)));
        Assert.Equal($"{Path.Combine(checkpoint, PreferenceTraining.ReferenceFile)} is missing: the checkpoint lacks the reference log-probs of this dpo/sigmoid run; resume from another checkpoint or start fresh.", e.Message);
    }

    [Fact]
    public void Evaluation_logs_the_objectives_metrics_with_an_eval_prefix()
    {
        FineTuneRecipe.Train(Model(), Args("eval", 4) with { EvalSteps = 2 }, Pairs(), Pairs(count: 4, shuffle: false), ITrainingMonitor.Silent, objective: Dpo());
        var evals = TrainerLog.Read(Path.Combine(_root, "eval", TrainerLog.FileName)).Where(e => e.EvalLoss is not null).ToList();
        Assert.Equal(2, evals.Count);
        Assert.NotNull(evals[^1].Metric("eval_rewards/accuracies"));
        Assert.True(evals[^1].Metric("eval_rewards/margins") > evals[0].Metric("eval_rewards/margins"));
    }

    // Sample i: its completion (chosen answer when i is even, desirable; rejected when odd), then a KL sequence:
    // the same prompt with sample i−1's completion.
    internal static LoaderSample Kto(int i)
    {
        var pair = Pair(i);
        int c = pair.SequenceLengths[0], r = pair.SequenceLengths[1];
        bool desirable = i % 2 == 0;
        int[] target = desirable ? pair.InputIds[..c] : pair.InputIds[c..];
        int[] targetLabels = desirable ? pair.Labels[..c] : pair.Labels[c..];
        var other = Pair(i + 1);
        int[] kl = other.InputIds[..other.SequenceLengths[0]];
        int[] klLabels = other.Labels[..other.SequenceLengths[0]];
        return new LoaderSample([.. target, .. kl], [.. targetLabels, .. klLabels], [target.Length, kl.Length]);
    }

    [Fact]
    public void Kto_learns_desirable_from_undesirable_completions()
    {
        var training = new PreferenceTraining(PreferenceObjectives.Kto(new PreferenceSettings { PrefBeta = 0.5 }), PreferenceLayout.Kto,
            referenceWithoutAdapters: true, trainTag: i => i % 2 == 0);
        FineTuneRecipe.Train(Model(), Args("kto", 12), new DataLoader(8, Kto, 4, 9, true, 0), null, ITrainingMonitor.Silent, objective: training);
        var log = TrainerLog.Read(Path.Combine(_root, "kto", TrainerLog.FileName));
        Assert.True(log[^1].Loss < log[0].Loss, $"{log[0].Loss} → {log[^1].Loss}");
        Assert.True(log[^1].Metric("rewards/chosen") > log[^1].Metric("rewards/rejected"));
        Assert.NotNull(log[^1].Metric("kl"));
    }

    [Fact]
    public void A_reward_model_learns_to_score_chosen_above_rejected_and_saves_its_value_head()
    {
        var model = Model(new TrainingSetup { LoraRank = 4, LoraAlpha = 8, Seed = 5, ValueHead = true });
        var training = new PreferenceTraining(PreferenceObjectives.RewardModel(), PreferenceLayout.Rewards, referenceWithoutAdapters: true);
        FineTuneRecipe.Train(model, Args("rm", 16), Pairs(), null, ITrainingMonitor.Silent, objective: training);
        var log = TrainerLog.Read(Path.Combine(_root, "rm", TrainerLog.FileName));
        Assert.True(log[^1].Loss < log[0].Loss, $"{log[0].Loss} → {log[^1].Loss}");
        Assert.True(log[^1].Metric("accuracy") >= 0.8, string.Join(" ", log.Select(e => e.Metric("accuracy"))));
        Assert.True(File.Exists(Path.Combine(_root, "rm", CausalLM.ValueHeadFileName)));
    }

    [Fact]
    public void Sft_samples_are_refused_with_what_to_do()
    {
        var sft = new DataLoader(4, i => new LoaderSample([1, 2, 3], [-100, 2, 3], [3]), 2, 9, false, 0);
        var e = Assert.Throws<TrainingException>(() => FineTuneRecipe.Train(Model(), Args("sft", 2), sft, null, ITrainingMonitor.Silent, objective: Dpo()));
        Assert.StartsWith("dpo/sigmoid trains on samples of two sequences", e.Message);
    }
}
