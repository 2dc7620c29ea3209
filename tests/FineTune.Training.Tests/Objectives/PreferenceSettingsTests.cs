using FineTune.Training.Objectives;

namespace FineTune.Training.Tests.Objectives;

public sealed class PreferenceSettingsTests
{
    [Fact]
    public void Defaults_are_llamafactorys()
    {
        var s = new PreferenceSettings();
        Assert.Equal((0.1, PreferenceLoss.Sigmoid, 0.0, 0.0, 0.5, 1.0, 1.0),
            (s.PrefBeta, s.PrefLoss, s.PrefFtx, s.DpoLabelSmoothing, s.SimpoGamma, s.KtoChosenWeight, s.KtoRejectedWeight));
    }

    [Fact]
    public void A_non_positive_beta_names_pref_beta()
    {
        var e = Assert.Throws<TrainingException>(() => PreferenceObjectives.Dpo(new PreferenceSettings { PrefBeta = 0 }));
        Assert.Equal("pref_beta: must be a number greater than 0, got 0; LLaMA-Factory's default is 0.1.", e.Message);
    }

    public static TheoryData<PreferenceSettings, string> BadSettings => new()
    {
        { new PreferenceSettings { PrefBeta = double.NaN }, "pref_beta: must be a number greater than 0, got NaN" },
        { new PreferenceSettings { PrefFtx = -0.1 }, "pref_ftx: must be a number ≥ 0, got -0.1" },
        { new PreferenceSettings { DpoLabelSmoothing = 0.6 }, "dpo_label_smoothing: must be in [0, 0.5], got 0.6" },
        { new PreferenceSettings { DpoLabelSmoothing = -0.01 }, "dpo_label_smoothing: must be in [0, 0.5], got -0.01" },
        { new PreferenceSettings { DpoLabelSmoothing = 0.1, PrefLoss = PreferenceLoss.Ipo }, "dpo_label_smoothing: only applies to pref_loss: sigmoid, not ipo, got 0.1" },
        { new PreferenceSettings { SimpoGamma = -1 }, "simpo_gamma: must be a number ≥ 0, got -1" },
        { new PreferenceSettings { KtoChosenWeight = 0 }, "kto_chosen_weight: must be a number greater than 0, got 0" },
        { new PreferenceSettings { KtoRejectedWeight = double.PositiveInfinity }, "kto_rejected_weight: must be a number greater than 0, got Infinity" },
    };

    [Theory]
    [MemberData(nameof(BadSettings))]
    public void Out_of_range_settings_throw_naming_the_key(PreferenceSettings settings, string message)
    {
        var e = Assert.Throws<TrainingException>(() => settings.Validated());
        Assert.StartsWith(message + ";", e.Message);
    }

    [Fact]
    public void Label_smoothing_at_its_bound_is_accepted()
    {
        var settings = new PreferenceSettings { DpoLabelSmoothing = 0.5 };
        Assert.Same(settings, settings.Validated());
    }

    [Theory]
    [InlineData(PreferenceLoss.Sigmoid, "dpo/sigmoid", true)]
    [InlineData(PreferenceLoss.Hinge, "dpo/hinge", true)]
    [InlineData(PreferenceLoss.Ipo, "dpo/ipo", true)]
    [InlineData(PreferenceLoss.Orpo, "dpo/orpo", false)]
    [InlineData(PreferenceLoss.Simpo, "dpo/simpo", false)]
    public void Pref_loss_picks_the_objective_and_whether_it_reads_a_reference(PreferenceLoss loss, string name, bool usesReference)
    {
        var objective = PreferenceObjectives.Dpo(new PreferenceSettings { PrefLoss = loss });
        Assert.Equal((name, usesReference), (objective.Name, objective.UsesReference));
    }

    [Fact]
    public void A_response_without_tokens_is_refused_with_its_index()
    {
        var e = Assert.Throws<ArgumentException>(() => PreferenceObjectives.Dpo(new PreferenceSettings())
            .Compute(PreferenceBatch.Pairs([-1, -2], [-1, -2], [1, 0], [1, 1], [-1, -2], [-1, -2])));
        Assert.StartsWith("dpo/sigmoid: example 1 has 0 ChosenTokens", e.Message);
    }
}
