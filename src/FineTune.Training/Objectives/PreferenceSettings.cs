namespace FineTune.Training.Objectives;

/// <summary>LLaMA-Factory's <c>pref_loss</c>: which pairwise loss <c>stage: dpo</c> trains with.</summary>
public enum PreferenceLoss
{
    /// <summary>DPO (Rafailov et al. 2023), with cDPO label smoothing.</summary>
    Sigmoid,
    /// <summary>SLiC's hinge on the DPO log-ratio margin.</summary>
    Hinge,
    /// <summary>IPO (Azar et al. 2023): squared distance of the margin from 1/(2β), on length-averaged log-probs.</summary>
    Ipo,
    /// <summary>ORPO (Hong et al. 2024): SFT plus an odds-ratio term; no reference model.</summary>
    Orpo,
    /// <summary>SimPO (Meng et al. 2024): length-averaged margin minus a target γ; no reference model.</summary>
    Simpo,
}

/// <summary>
/// The preference objectives' settings, with LLaMA-Factory's names (snake_case of the property) and defaults.
/// <c>stage: dpo</c> reads all but the KTO weights; <c>stage: kto</c> reads pref_beta, pref_ftx and the KTO weights;
/// <c>stage: rm</c> reads none.
/// </summary>
public sealed record PreferenceSettings
{
    /// <summary>β: the temperature of the implicit reward β·log(π/π_ref) (DPO, KTO), ORPO's weight λ, SimPO's β.</summary>
    public double PrefBeta { get; init; } = 0.1;
    public PreferenceLoss PrefLoss { get; init; } = PreferenceLoss.Sigmoid;
    /// <summary>Weight of an SFT term on the chosen answers: −(Σ log p)/tokens, averaged per token as LLaMA-Factory does.</summary>
    public double PrefFtx { get; init; }
    /// <summary>cDPO's ε: the probability that a pair's label is flipped; sigmoid loss only, in [0, 0.5].</summary>
    public double DpoLabelSmoothing { get; init; }
    /// <summary>SimPO's target reward margin γ.</summary>
    public double SimpoGamma { get; init; } = 0.5;
    /// <summary>KTO's λ_D, the weight of desirable answers' losses.</summary>
    public double KtoChosenWeight { get; init; } = 1.0;
    /// <summary>KTO's λ_U, the weight of undesirable answers' losses.</summary>
    public double KtoRejectedWeight { get; init; } = 1.0;

    /// <summary>Whether the loss compares with reference log-probs (sigmoid, hinge, ipo) or is reference-free (orpo, simpo).</summary>
    public bool UsesReference => PrefLoss is PreferenceLoss.Sigmoid or PreferenceLoss.Hinge or PreferenceLoss.Ipo;

    /// <summary>Throws a <see cref="TrainingException"/> naming the first key out of range; returns this otherwise.</summary>
    public PreferenceSettings Validated()
    {
        if (!double.IsFinite(PrefBeta) || PrefBeta <= 0)
            throw Bad("pref_beta", PrefBeta, "must be a number greater than 0", "LLaMA-Factory's default is 0.1");
        if (!double.IsFinite(PrefFtx) || PrefFtx < 0)
            throw Bad("pref_ftx", PrefFtx, "must be a number ≥ 0", "0 turns the SFT term off");
        if (!double.IsFinite(DpoLabelSmoothing) || DpoLabelSmoothing < 0 || DpoLabelSmoothing > 0.5)
            throw Bad("dpo_label_smoothing", DpoLabelSmoothing, "must be in [0, 0.5]", "it is the probability that a pair's label is wrong; 0 is plain DPO");
        // LLaMA-Factory refuses the combination too: only the sigmoid loss has a label-smoothed form.
        if (DpoLabelSmoothing > 0 && PrefLoss != PreferenceLoss.Sigmoid)
            throw Bad("dpo_label_smoothing", DpoLabelSmoothing, $"only applies to pref_loss: sigmoid, not {Name(PrefLoss)}",
                "set it to 0 or use pref_loss: sigmoid");
        if (!double.IsFinite(SimpoGamma) || SimpoGamma < 0)
            throw Bad("simpo_gamma", SimpoGamma, "must be a number ≥ 0", "it is SimPO's target reward margin; LLaMA-Factory's default is 0.5");
        if (!double.IsFinite(KtoChosenWeight) || KtoChosenWeight <= 0)
            throw Bad("kto_chosen_weight", KtoChosenWeight, "must be a number greater than 0", "LLaMA-Factory's default is 1.0");
        if (!double.IsFinite(KtoRejectedWeight) || KtoRejectedWeight <= 0)
            throw Bad("kto_rejected_weight", KtoRejectedWeight, "must be a number greater than 0", "LLaMA-Factory's default is 1.0");
        return this;
    }

    /// <summary>The pref_loss value as the YAML writes it.</summary>
    public static string Name(PreferenceLoss loss) => loss.ToString().ToLowerInvariant();

    private static TrainingException Bad(string key, double value, string what, string hint) =>
        new($"{key}: {what}, got {value.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}; {hint}.");
}
