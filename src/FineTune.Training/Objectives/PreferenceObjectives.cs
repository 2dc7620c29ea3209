namespace FineTune.Training.Objectives;

/// <summary>
/// The one place that turns LLaMA-Factory's <c>stage</c> and <c>pref_loss</c> into an objective, so a new loss is a
/// new file plus one line here.
/// </summary>
public static class PreferenceObjectives
{
    /// <summary><c>stage: dpo</c>: the loss that <c>pref_loss</c> names.</summary>
    public static IPreferenceObjective Dpo(PreferenceSettings settings) => settings.Validated().PrefLoss switch
    {
        PreferenceLoss.Orpo => new OrpoObjective(settings),
        PreferenceLoss.Simpo => new SimpoObjective(settings),
        _ => new DpoObjective(settings),
    };

    /// <summary><c>stage: kto</c> (pref_loss is not read, as in LLaMA-Factory).</summary>
    public static IPreferenceObjective Kto(PreferenceSettings settings) => new KtoObjective(settings);

    /// <summary><c>stage: rm</c>.</summary>
    public static IPreferenceObjective RewardModel() => new PairwiseRewardObjective();
}
