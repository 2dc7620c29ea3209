using FineTune.Training;

namespace FineTune.Training.Tests;

public sealed class LearningRateScheduleTests
{
    // Values follow transformers' lr lambdas with num_warmup_steps = 2, num_training_steps = 10.
    [Theory]
    [InlineData(0, 0.0)]
    [InlineData(1, 0.5)]
    [InlineData(2, 1.0)]
    [InlineData(6, 0.5)]
    [InlineData(9, 0.125)]
    [InlineData(10, 0.0)]
    [InlineData(12, 0.0)]
    public void Linear_warms_up_then_decays_to_zero(int step, double expected) =>
        Assert.Equal(expected, new LearningRateSchedule(LrSchedulerType.Linear, 1.0, 2, 10).Multiplier(step), 15);

    [Theory]
    [InlineData(1, 0.5)]
    [InlineData(2, 1.0)]
    [InlineData(4, 0.8535533905932737)] // ½(1 + cos(π/4)), progress 2/8
    [InlineData(6, 0.5)]
    [InlineData(10, 0.0)]
    public void Cosine_follows_half_a_cosine_after_warmup(int step, double expected) =>
        Assert.Equal(expected, new LearningRateSchedule(LrSchedulerType.Cosine, 1.0, 2, 10).Multiplier(step), 15);

    [Theory]
    [InlineData(0, 0.0)]
    [InlineData(1, 0.5)]
    [InlineData(5, 1.0)]
    public void Constant_with_warmup_ramps_then_holds(int step, double expected) =>
        Assert.Equal(expected, new LearningRateSchedule(LrSchedulerType.ConstantWithWarmup, 1.0, 2, 10).Multiplier(step), 15);

    [Fact]
    public void Constant_ignores_warmup() =>
        Assert.Equal(3e-4, new LearningRateSchedule(LrSchedulerType.Constant, 3e-4, 5, 10).LearningRate(0));

    [Fact]
    public void Learning_rate_scales_the_multiplier() =>
        Assert.Equal(5e-5, new LearningRateSchedule(LrSchedulerType.Linear, 1e-4, 2, 10).LearningRate(6), 15);

    [Fact]
    public void Warmup_ratio_rounds_up() => Assert.Equal(2, LearningRateSchedule.ResolveWarmupSteps(0, 0.1, 15));

    [Fact]
    public void Warmup_steps_win_over_ratio() => Assert.Equal(3, LearningRateSchedule.ResolveWarmupSteps(3, 0.5, 100));

    [Fact]
    public void Zero_warmup_starts_at_full_rate() =>
        Assert.Equal(1.0, new LearningRateSchedule(LrSchedulerType.Cosine, 1.0, 0, 10).Multiplier(0));

    [Fact]
    public void Scheduler_names_parse_with_llama_factory_spelling() =>
        Assert.Equal(LrSchedulerType.ConstantWithWarmup, LearningRateSchedule.ParseType("constant_with_warmup"));

    [Fact]
    public void Unknown_scheduler_name_is_rejected_with_the_choices()
    {
        var e = Assert.Throws<ArgumentException>(() => LearningRateSchedule.ParseType("polynomial"));
        Assert.Contains("constant_with_warmup", e.Message);
    }
}
