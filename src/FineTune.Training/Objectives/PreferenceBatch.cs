namespace FineTune.Training.Objectives;

/// <summary>
/// What the model yields for the examples of one optimizer step, one array element per example. Log-probs are
/// sums of the response tokens' log-probabilities (label positions only); token counts are those positions' number.
/// Policy arrays carry gradients; reference arrays are constants (precomputed once with the model as training
/// starts). Each objective reads its own section: pairs (dpo/orpo/simpo), targets with KTO tags (kto), or value-head
/// scores (rm). Make one with <see cref="Pairs"/>, <see cref="Kto"/> or <see cref="Rewards"/>.
/// </summary>
public sealed record PreferenceBatch
{
    public double[]? PolicyChosenLogps { get; init; }
    public double[]? PolicyRejectedLogps { get; init; }
    public double[]? ChosenTokens { get; init; }
    public double[]? RejectedTokens { get; init; }
    public double[]? ReferenceChosenLogps { get; init; }
    public double[]? ReferenceRejectedLogps { get; init; }

    /// <summary>KTO: each example's completion, desirable where <see cref="KtoTags"/> is true.</summary>
    public double[]? PolicyTargetLogps { get; init; }
    public double[]? TargetTokens { get; init; }
    public double[]? ReferenceTargetLogps { get; init; }
    public bool[]? KtoTags { get; init; }
    /// <summary>KTO: each example's prompt with another example's completion, for the KL estimate z₀.</summary>
    public double[]? PolicyKlLogps { get; init; }
    public double[]? ReferenceKlLogps { get; init; }

    /// <summary>RM: the value head's score at the last token of the chosen and of the rejected sequence.</summary>
    public double[]? ChosenScores { get; init; }
    public double[]? RejectedScores { get; init; }

    /// <summary>Preference pairs; the reference arrays may be null for reference-free losses (orpo, simpo).</summary>
    public static PreferenceBatch Pairs(double[] policyChosenLogps, double[] policyRejectedLogps, double[] chosenTokens,
        double[] rejectedTokens, double[]? referenceChosenLogps = null, double[]? referenceRejectedLogps = null) => new()
    {
        PolicyChosenLogps = policyChosenLogps, PolicyRejectedLogps = policyRejectedLogps, ChosenTokens = chosenTokens,
        RejectedTokens = rejectedTokens, ReferenceChosenLogps = referenceChosenLogps, ReferenceRejectedLogps = referenceRejectedLogps,
    };

    public static PreferenceBatch Kto(double[] policyTargetLogps, double[] targetTokens, double[] referenceTargetLogps, bool[] ktoTags,
        double[] policyKlLogps, double[] referenceKlLogps) => new()
    {
        PolicyTargetLogps = policyTargetLogps, TargetTokens = targetTokens, ReferenceTargetLogps = referenceTargetLogps,
        KtoTags = ktoTags, PolicyKlLogps = policyKlLogps, ReferenceKlLogps = referenceKlLogps,
    };

    public static PreferenceBatch Rewards(double[] chosenScores, double[] rejectedScores) => new()
    {
        ChosenScores = chosenScores, RejectedScores = rejectedScores,
    };
}

/// <summary>
/// The gradient of <see cref="ObjectiveResult.Loss"/> with respect to each policy input the objective read (null for
/// those it did not read). A log-prob sum's gradient reaches each of its tokens unchanged: ∂L/∂log p(t) = ∂L/∂Σ.
/// </summary>
public sealed record PolicyGradients
{
    public double[]? PolicyChosenLogps { get; init; }
    public double[]? PolicyRejectedLogps { get; init; }
    public double[]? PolicyTargetLogps { get; init; }
    /// <summary>KTO's KL sequences: all zeros, because the KL estimate is detached (LLaMA-Factory runs them under no_grad).</summary>
    public double[]? PolicyKlLogps { get; init; }
    public double[]? ChosenScores { get; init; }
    public double[]? RejectedScores { get; init; }
}

/// <summary>
/// The loss (the mean over the examples given), its gradients, and the metrics TRL and LLaMA-Factory log, under their
/// names (<c>rewards/chosen</c>, <c>rewards/rejected</c>, <c>rewards/accuracies</c>, <c>rewards/margins</c>,
/// <c>logps/chosen</c>, <c>logps/rejected</c>, …), each a mean over the examples, in a fixed order.
/// </summary>
public sealed record ObjectiveResult(double Loss, PolicyGradients Gradients, IReadOnlyDictionary<string, double> Metrics);

/// <summary>
/// A training objective over per-example log-probs (or scores): pure arithmetic on arrays, so that every objective
/// is one file and the model only has to yield log-prob sums and accept their gradients. The loss is the mean over the
/// examples given; <see cref="PreferenceTraining"/> passes one micro-batch at a time, weighted by its share of the step.
/// </summary>
public interface IPreferenceObjective
{
    /// <summary>LLaMA-Factory's words for it: <c>dpo/sigmoid</c>, <c>dpo/orpo</c>, <c>kto</c>, <c>rm</c>, ….</summary>
    string Name { get; }
    /// <summary>Whether <see cref="Compute"/> reads reference log-probs (the seam precomputes them only then).</summary>
    bool UsesReference { get; }
    ObjectiveResult Compute(PreferenceBatch batch);
}
