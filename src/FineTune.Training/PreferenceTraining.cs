using System.Text.Json;
using FineTune.Models;
using FineTune.Training.Objectives;

namespace FineTune.Training;

/// <summary>
/// dpo, kto and rm in the training loop: each sample of a paired (or KTO) dataset is one row of two packed sequences —
/// chosen then rejected (KTO: the completion then its KL sequence) — so both go through the model in one batch. Per
/// micro-batch the model scores every sequence (<see cref="CausalLM.ScoreSequences"/>, or the value head's score for
/// rm), the objective (<see cref="IPreferenceObjective"/>, one file each) turns the scores into its loss and the loss's
/// gradient per sequence, and the model continues the backward from those (<see cref="CausalLM.BackwardSequences"/>).
/// <para>
/// The reference model is the model as training starts, scored once before the first step over the train and eval
/// samples (TRL's precompute_ref_log_probs): for a fresh LoRA adapter that is the base with the adapter disabled (as
/// LLaMA-Factory and TRL use it, no second model in memory); for a stage that continues an adapter or a full/freeze
/// run it is the starting model itself, which no second copy has to hold. Reference scores never change, so one pass
/// costs what TRL's per-step reference forward costs in the first epoch and nothing after; they are saved in every
/// checkpoint, so a resumed run uses the same ones.
/// </para>
/// </summary>
public sealed class PreferenceTraining : ITrainingObjective
{
    public const string ReferenceFile = "reference_logps.json";

    private readonly IPreferenceObjective _objective;
    private readonly PreferenceLayout _layout;
    private readonly bool _referenceWithoutAdapters;
    private readonly Func<int, bool>? _trainTag, _evalTag;
    private double[][]? _trainReference, _evalReference;

    /// <param name="referenceWithoutAdapters">Score the reference with every LoRA adapter disabled (a fresh adapter); false: the model as it starts.</param>
    /// <param name="trainTag">KTO: whether train sample i's completion is desirable.</param>
    public PreferenceTraining(IPreferenceObjective objective, PreferenceLayout layout, bool referenceWithoutAdapters,
        Func<int, bool>? trainTag = null, Func<int, bool>? evalTag = null)
    {
        _objective = objective;
        _layout = layout;
        _referenceWithoutAdapters = referenceWithoutAdapters;
        _trainTag = trainTag;
        _evalTag = evalTag;
        if (layout == PreferenceLayout.Kto && trainTag is null) throw new ArgumentException("KTO needs each sample's tag", nameof(trainTag));
    }

    public string Name => _objective.Name;

    public void Prepare(CausalLM model, DataLoader train, DataLoader? eval, ITrainingMonitor monitor)
    {
        if (!_objective.UsesReference) return;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        _trainReference = Reference(model, train);
        _evalReference = eval is null ? null : Reference(model, eval);
        monitor.Info($"Reference log-probs of {train.SampleCount + (eval?.SampleCount ?? 0)} samples " +
            $"({(_referenceWithoutAdapters ? "the base model, adapter disabled" : "the model as training starts")}) in {clock.Elapsed.TotalSeconds:F1} s.");
    }

    public void SaveState(string checkpointDirectory)
    {
        if (_trainReference is null) return;
        var state = new Dictionary<string, double[][]?> { ["train"] = _trainReference, ["eval"] = _evalReference };
        File.WriteAllText(Path.Combine(checkpointDirectory, ReferenceFile), JsonSerializer.Serialize(state));
    }

    public void LoadState(string checkpointDirectory, CausalLM model, DataLoader train, DataLoader? eval, ITrainingMonitor monitor)
    {
        if (!_objective.UsesReference) return;
        string path = Path.Combine(checkpointDirectory, ReferenceFile);
        if (!File.Exists(path))
        {
            // A disabled adapter is the reference whatever the adapter has learnt since; anything else needs the start model.
            if (_referenceWithoutAdapters) { Prepare(model, train, eval, monitor); return; }
            throw new TrainingException($"{path} is missing: the checkpoint lacks the reference log-probs of this {Name} run; resume from another checkpoint or start fresh.");
        }
        Dictionary<string, double[][]?>? state;
        try { state = JsonSerializer.Deserialize<Dictionary<string, double[][]?>>(File.ReadAllText(path)); }
        catch (JsonException e) { throw new TrainingException($"{path} is damaged ({e.Message}); resume from another checkpoint or start fresh.", e); }
        _trainReference = state?.GetValueOrDefault("train");
        _evalReference = state?.GetValueOrDefault("eval");
        if (_trainReference is not { Length: 2 } t || t[0].Length != train.SampleCount
            || (eval is not null && (_evalReference is not { Length: 2 } e2 || e2[0].Length != eval.SampleCount)))
            throw new TrainingException($"{path} holds reference log-probs of other data; resume from a checkpoint of this run or start fresh.");
    }

    public ObjectiveOutcome Step(CausalLM model, IReadOnlyList<StepBatch> microBatches)
    {
        int total = microBatches.Sum(b => b.Samples.Length);
        var mean = new WeightedMean();
        // The loss is the mean over the step's examples: each micro-batch's mean enters with its share of them.
        foreach (var mb in microBatches)
        {
            double share = (double)mb.Samples.Length / total;
            var (result, backward) = MicroBatch(model, mb, share);
            mean.Add(result, share);
            backward();
        }
        return mean.Outcome();
    }

    /// <summary>
    /// Data parallel: this rank's micro-batches of the step, each weighted by its share of the whole step's examples as
    /// one process weights it, so the ranks' gradients sum to one process's. Each micro-batch is its own batch for the
    /// objective, as in one process: KTO's KL estimate z₀ is the mean over that micro-batch, so it needs no cross-rank
    /// reduction and does not depend on the world size (TRL's DDP gathers z₀ over the ranks' concurrent micro-batches,
    /// which would make a 2-rank run differ from one process with the same global batch). The loss and the metrics'
    /// weighted sums travel in <see cref="ShareOutcome.Reduce"/> through the step's one host all-reduce (after the
    /// gradient reduction, which may still use the collective from a worker thread while this runs).
    /// </summary>
    public ShareOutcome StepShare(CausalLM model, IReadOnlyList<StepBatch> share, IReadOnlyList<StepBatch> wholeStep, DataParallel? parallel = null)
    {
        int total = wholeStep.Sum(b => b.Samples.Length);
        int world = parallel?.WorldSize ?? 1, rank = parallel?.Rank ?? 0;
        // Layout: per metric name [Σ weight·value, Σ weight], then per metric name and rank [1 + index in the step of the
        // first micro-batch holding it] (that rank's slot only; 0 = none), to restore one process's order.
        int names = MetricNames.Length;
        var reduce = new double[2 * names + names * world];
        double loss = 0;
        for (int i = 0; i < share.Count; i++)
        {
            var mb = share[i];
            double weight = (double)mb.Samples.Length / total;
            var (result, backward) = MicroBatch(model, mb, weight);
            loss += weight * result.Loss;
            int index = IndexIn(wholeStep, mb);
            foreach (var (k, v) in result.Metrics)
            {
                int m = Array.IndexOf(MetricNames, k);
                if (m < 0) throw new InvalidOperationException($"{Name}: metric '{k}' is not in PreferenceTraining.MetricNames; add it there to train it data-parallel.");
                reduce[2 * m] += weight * v;
                reduce[1 + 2 * m] += weight;
                ref double first = ref reduce[2 * names + m * world + rank];
                if (first == 0) first = 1 + index;
            }
            if (i == share.Count - 1 && parallel is not null) parallel.LastBackward(() => { backward(); return 0; });
            else backward();
        }
        // The loss is already the step's mean's share of this rank (divisor 1).
        return new ShareOutcome(loss, 1) { Reduce = reduce, Metrics = MetricsOf };

        IReadOnlyDictionary<string, double> MetricsOf(double[] summed)
        {
            var present = new List<(double First, int Name)>();
            for (int m = 0; m < names; m++)
            {
                if (summed[1 + 2 * m] == 0) continue;
                double first = double.MaxValue;
                for (int r = 0; r < world; r++)
                    if (summed[2 * names + m * world + r] is > 0 and var f) first = Math.Min(first, f);
                present.Add((first, m));
            }
            // One process's order: first seen in step order; within one micro-batch, the objectives' order (MetricNames').
            return present.OrderBy(x => x.First).ThenBy(x => x.Name)
                .ToDictionary(x => MetricNames[x.Name], x => summed[2 * x.Name] / summed[1 + 2 * x.Name]);
        }
    }

    /// <summary>
    /// Every metric any preference objective reports, in the order the objectives emit them (data parallel sums them
    /// under these slots and restores one process's order from it).
    /// </summary>
    public static readonly string[] MetricNames =
    [
        "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
        "kl", "sft_loss", "odds_ratio_loss", "accuracy",
    ];

    static int IndexIn(IReadOnlyList<StepBatch> step, StepBatch mb)
    {
        for (int i = 0; i < step.Count; i++) if (ReferenceEquals(step[i], mb)) return i;
        throw new ArgumentException("the micro-batch is not one of the step's");
    }

    /// <summary>
    /// One micro-batch: its scores and the objective's result, and the backward of <paramref name="weight"/> × the
    /// objective's loss (to run once the result is read; the scores' activations are kept until then).
    /// </summary>
    private (ObjectiveResult Result, Action Backward) MicroBatch(CausalLM model, StepBatch mb, double weight)
    {
        var (result, segments) = Score(model, mb.Batch, mb.Samples, _trainReference, _trainTag, forBackward: true);
        var g = result.Gradients;
        var d = new double[mb.Samples.Length * segments];
        for (int r = 0; r < mb.Samples.Length; r++)
        {
            d[r * segments] = weight * ((_layout switch
            {
                PreferenceLayout.Rewards => g.ChosenScores,
                PreferenceLayout.Kto => g.PolicyTargetLogps,
                _ => g.PolicyChosenLogps,
            })?[r] ?? 0);
            d[r * segments + 1] = weight * ((_layout switch
            {
                PreferenceLayout.Rewards => g.RejectedScores,
                PreferenceLayout.Kto => g.PolicyKlLogps,
                _ => g.PolicyRejectedLogps,
            })?[r] ?? 0);
        }
        return (result, () => { if (_layout == PreferenceLayout.Rewards) model.BackwardValues(d); else model.BackwardSequences(d); });
    }

    public ObjectiveOutcome Evaluate(CausalLM model, DataLoader eval, CancellationToken cancellation)
    {
        var mean = new WeightedMean();
        int start = 0;
        foreach (var batch in eval.Sequential())
        {
            cancellation.ThrowIfCancellationRequested();
            var samples = Enumerable.Range(start, batch.BatchSize).ToArray();
            start += batch.BatchSize;
            mean.Add(Score(model, batch, samples, _evalReference, _evalTag, forBackward: false).Result, (double)samples.Length / eval.SampleCount);
        }
        return mean.Outcome();
    }

    /// <summary>The objective on one micro-batch: the model's scores of each row's two sequences, with their reference scores.</summary>
    private (ObjectiveResult Result, int Segments) Score(CausalLM model, TokenBatch batch, int[] samples, double[][]? reference,
        Func<int, bool>? tag, bool forBackward)
    {
        int n = samples.Length;
        if (_layout == PreferenceLayout.Rewards)
        {
            var values = model.SequenceValues(batch, forBackward);
            int s = values.Length / n;
            RequireTwo(s);
            return (_objective.Compute(PreferenceBatch.Rewards(Column(values, s, 0, n), Column(values, s, 1, n))), s);
        }
        var scores = model.ScoreSequences(batch, forBackward);
        int segments = scores.SegmentsPerRow;
        RequireTwo(segments);
        var first = Column(scores.SumLogProb, segments, 0, n);
        var second = Column(scores.SumLogProb, segments, 1, n);
        var tokens = Array.ConvertAll(scores.Tokens, t => (double)t);
        var firstTokens = Column(tokens, segments, 0, n);
        var secondTokens = Column(tokens, segments, 1, n);
        double[]? ref0 = reference is null ? null : samples.Select(i => reference[0][i]).ToArray();
        double[]? ref1 = reference is null ? null : samples.Select(i => reference[1][i]).ToArray();
        var input = _layout == PreferenceLayout.Kto
            ? PreferenceBatch.Kto(first, firstTokens, ref0!, samples.Select(i => tag!(i)).ToArray(), second, ref1!)
            : PreferenceBatch.Pairs(first, second, firstTokens, secondTokens, ref0, ref1);
        return (_objective.Compute(input), segments);
    }

    /// <summary>Σ log p of each sample's two sequences, [sequence][sample], scored in file order without gradients.</summary>
    private double[][] Reference(CausalLM model, DataLoader data)
    {
        var result = new[] { new double[data.SampleCount], new double[data.SampleCount] };
        int start = 0;
        foreach (var batch in data.Sequential())
        {
            var scores = model.ScoreSequences(batch, forBackward: false, adapters: !_referenceWithoutAdapters);
            int s = scores.SegmentsPerRow;
            RequireTwo(s);
            for (int r = 0; r < batch.BatchSize; r++)
            {
                result[0][start + r] = scores.SumLogProb[r * s];
                result[1][start + r] = scores.SumLogProb[r * s + 1];
            }
            start += batch.BatchSize;
        }
        return result;
    }

    private static double[] Column(double[] values, int segments, int segment, int rows)
    {
        var c = new double[rows];
        for (int r = 0; r < rows; r++) c[r] = values[r * segments + segment];
        return c;
    }

    private void RequireTwo(int segments)
    {
        if (segments < 2)
            throw new TrainingException($"{Name} trains on samples of two sequences (chosen and rejected, or a KTO completion and its KL " +
                "sequence), but this batch holds one per row: the split stage's output is not a preference dataset — re-run split on ranking (or kto_tag) data.");
    }

    /// <summary>Means of the loss and of each metric weighted by the examples behind them (a metric a micro-batch lacks, e.g. a KTO tag it has no example of, is averaged over the others).</summary>
    private sealed class WeightedMean
    {
        private double _loss;
        private readonly Dictionary<string, (double Sum, double Weight)> _metrics = [];
        private readonly List<string> _order = [];

        public void Add(ObjectiveResult r, double weight)
        {
            _loss += weight * r.Loss;
            foreach (var (k, v) in r.Metrics)
            {
                if (!_metrics.TryGetValue(k, out var acc)) { acc = (0, 0); _order.Add(k); }
                _metrics[k] = (acc.Sum + weight * v, acc.Weight + weight);
            }
        }

        public ObjectiveOutcome Outcome()
        {
            var m = new Dictionary<string, double>();
            foreach (var k in _order) m[k] = _metrics[k].Sum / _metrics[k].Weight;
            return new ObjectiveOutcome(_loss, m);
        }
    }
}

/// <summary>What the two sequences of a sample are: a chosen/rejected pair (dpo), a completion and its KL sequence (kto), a pair scored by the value head (rm).</summary>
public enum PreferenceLayout { Pairs, Kto, Rewards }
