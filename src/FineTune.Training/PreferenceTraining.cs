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
        foreach (var mb in microBatches)
        {
            // The loss is the mean over the step's examples: each micro-batch's mean enters with its share of them.
            double share = (double)mb.Samples.Length / total;
            var (result, segments) = Score(model, mb.Batch, mb.Samples, _trainReference, _trainTag, forBackward: true);
            mean.Add(result, share);
            var g = result.Gradients;
            var d = new double[mb.Samples.Length * segments];
            for (int r = 0; r < mb.Samples.Length; r++)
            {
                d[r * segments] = share * ((_layout switch
                {
                    PreferenceLayout.Rewards => g.ChosenScores,
                    PreferenceLayout.Kto => g.PolicyTargetLogps,
                    _ => g.PolicyChosenLogps,
                })?[r] ?? 0);
                d[r * segments + 1] = share * ((_layout switch
                {
                    PreferenceLayout.Rewards => g.RejectedScores,
                    PreferenceLayout.Kto => g.PolicyKlLogps,
                    _ => g.PolicyRejectedLogps,
                })?[r] ?? 0);
            }
            if (_layout == PreferenceLayout.Rewards) model.BackwardValues(d); else model.BackwardSequences(d);
        }
        return mean.Outcome();
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
