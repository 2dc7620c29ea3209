using FineTune.Models;

namespace FineTune.Training;

/// <summary>One micro-batch of a step and the dataset indices of its rows (row r collates sample Samples[r]).</summary>
public sealed record StepBatch(TokenBatch Batch, int[] Samples);

/// <summary>A step's (or an evaluation's) mean loss and the objective's metrics under TRL's names (rewards/chosen, …).</summary>
public sealed record ObjectiveOutcome(double Loss, IReadOnlyDictionary<string, double> Metrics)
{
    public static IReadOnlyDictionary<string, double> NoMetrics { get; } = new Dictionary<string, double>();
}

/// <summary>
/// What the training loop optimises (LLaMA-Factory's <c>stage</c>): given the micro-batches of one optimizer step it runs
/// the forward and backward passes, leaving ∂(step loss)/∂θ in the trainable gradients, and reports the step's loss.
/// <see cref="TokenObjective"/> is pt/sft (next-token cross-entropy); <see cref="PreferenceTraining"/> runs dpo, kto and
/// rm over the model's per-sequence scores. The loop (optimizer, schedule, logging, checkpoints) is the same for all.
/// </summary>
public interface ITrainingObjective
{
    /// <summary>Before the first step of a fresh run, with the model as training starts (e.g. reference log-probs).</summary>
    void Prepare(CausalLM model, DataLoader train, DataLoader? eval, ITrainingMonitor monitor) { }

    /// <summary>Saves what <see cref="Prepare"/> computed into a checkpoint directory, so a resumed run needs the start model never again.</summary>
    void SaveState(string checkpointDirectory) { }

    /// <summary>Restores <see cref="SaveState"/>'s files of a checkpoint a run resumes from.</summary>
    void LoadState(string checkpointDirectory, CausalLM model, DataLoader train, DataLoader? eval, ITrainingMonitor monitor) =>
        Prepare(model, train, eval, monitor);

    /// <summary>Forward and backward over the step's micro-batches; gradients add up in the trainable parameters.</summary>
    ObjectiveOutcome Step(CausalLM model, IReadOnlyList<StepBatch> microBatches);

    /// <summary>The loss (and metrics) over one pass of <paramref name="eval"/>, no gradients.</summary>
    ObjectiveOutcome Evaluate(CausalLM model, DataLoader eval, CancellationToken cancellation);

    /// <summary>
    /// Data parallel: forward and backward over this rank's <paramref name="share"/> of a step, each backward scaled by
    /// the normaliser of the <paramref name="wholeStep"/> (all ranks' micro-batches), so that the sum of the ranks'
    /// gradients is the one-process gradient of that step. Returns the share's summed loss and the whole step's normaliser.
    /// </summary>
    /// <param name="parallel">Runs the share's last backward through <see cref="DataParallel.LastBackward{T}"/>, so the
    /// gradient buckets are reduced as that backward finishes them (optional: without it they are reduced after).</param>
    ShareOutcome StepShare(CausalLM model, IReadOnlyList<StepBatch> share, IReadOnlyList<StepBatch> wholeStep, DataParallel? parallel = null) =>
        throw new TrainingException($"{GetType().Name} trains in one process only; run this stage without --nproc-per-node.");
}

/// <summary>
/// A rank's part of a data-parallel step: its summed loss, and the whole step's divisor of it (pt/sft: its labelled
/// tokens). <see cref="Reduce"/>: further numbers summed over the ranks in the step's host all-reduce;
/// <see cref="Metrics"/> reads the step's metrics from their sums.
/// </summary>
public readonly record struct ShareOutcome(double SumLoss, long Labelled)
{
    public double[] Reduce { get; init; } = [];
    public Func<double[], IReadOnlyDictionary<string, double>>? Metrics { get; init; }
}

/// <summary>
/// pt and sft: the mean next-token cross-entropy over every labelled token of the step. Each backward is scaled by
/// 1 / (labelled tokens of the whole step), so accumulating k micro-batches equals one batch k times as large (not the
/// mean of micro-batch means).
/// </summary>
public sealed class TokenObjective : ITrainingObjective
{
    public static TokenObjective Instance { get; } = new();

    public ObjectiveOutcome Step(CausalLM model, IReadOnlyList<StepBatch> microBatches)
    {
        long labelled = microBatches.Sum(b => (long)b.Batch.LabelCount);
        float lossScale = labelled == 0 ? 0f : 1f / labelled;
        double sumLoss = 0, auxSum = 0;
        foreach (var b in microBatches)
        {
            var r = model.ForwardBackward(b.Batch, lossScale);
            sumLoss += r.SumLoss;
            auxSum += r.RouterAuxLoss ?? 0;
        }
        // Mixture of experts with the load-balancing loss on: its mean over the micro-batches, logged as aux_loss (the
        // gradient already holds router_aux_loss_coef × it per micro-batch, as transformers adds it to each forward's loss).
        var metrics = model.RouterAuxLossCoef != 0 && microBatches.Count > 0
            ? new Dictionary<string, double> { ["aux_loss"] = auxSum / microBatches.Count }
            : ObjectiveOutcome.NoMetrics;
        return new ObjectiveOutcome(labelled == 0 ? 0 : sumLoss / labelled, metrics);
    }

    public ObjectiveOutcome Evaluate(CausalLM model, DataLoader eval, CancellationToken cancellation) =>
        new(FineTuneRecipe.EvaluateLoss(model, eval, cancellation).MeanLoss, ObjectiveOutcome.NoMetrics);

    public ShareOutcome StepShare(CausalLM model, IReadOnlyList<StepBatch> share, IReadOnlyList<StepBatch> wholeStep, DataParallel? parallel = null)
    {
        long labelled = wholeStep.Sum(b => (long)b.Batch.LabelCount);
        float lossScale = labelled == 0 ? 0f : 1f / labelled;
        double sumLoss = 0, auxSum = 0;
        for (int i = 0; i < share.Count; i++)
        {
            var batch = share[i].Batch;
            var r = i == share.Count - 1 && parallel is not null
                ? parallel.LastBackward(() => model.ForwardBackward(batch, lossScale))
                : model.ForwardBackward(batch, lossScale);
            sumLoss += r.SumLoss;
            auxSum += r.RouterAuxLoss ?? 0;
        }
        if (model.RouterAuxLossCoef == 0 || wholeStep.Count == 0) return new ShareOutcome(sumLoss, labelled);
        // aux_loss as one process logs it: the mean over the whole step's micro-batches, from the ranks' summed shares.
        return new ShareOutcome(sumLoss, labelled)
        {
            Reduce = [auxSum],
            Metrics = summed => new Dictionary<string, double> { ["aux_loss"] = summed[0] / wholeStep.Count },
        };
    }
}
