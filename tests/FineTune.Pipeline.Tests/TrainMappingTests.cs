using System.Reflection;
using System.Text.Json;
using FineTune.Models;
using FineTune.Pipeline.Config;
using FineTune.Training;

namespace FineTune.Pipeline.Tests;

/// <summary>stages.train maps onto the engine (TrainingSetup, TrainingArguments, PreferenceSettings) through TrainStage.Setup/Arguments/Preference only.</summary>
public sealed class TrainMappingTests
{
    /// <summary>Keys that are no engine setting: they choose the backend, the data loader's batch, the objective, or where the stage reports its log.</summary>
    private static readonly string[] NotEngineSettings =
        [nameof(TrainConfig.Device), nameof(TrainConfig.Devices), nameof(TrainConfig.ZeroStage), nameof(TrainConfig.PerDeviceTrainBatchSize), nameof(TrainConfig.Stage), nameof(TrainConfig.ReportTo),
         // QLoRA's keys reach the engine together, as TrainingSetup.Quantization (QuantizationKeyTests checks that mapping).
         nameof(TrainConfig.QuantizationBit), nameof(TrainConfig.QuantizationType), nameof(TrainConfig.DoubleQuantization),
         nameof(TrainConfig.QuantizationMethod),
         // gradient_checkpointing (false/true/auto) and max_memory reach the engine as TrainingSetup.Checkpointing and
         // MaxMemoryBytes (CheckpointingKeyTests checks that mapping).
         nameof(TrainConfig.GradientCheckpointing), nameof(TrainConfig.MaxMemory),
         // attention chooses the CUDA backend's kernels (AttentionKeyTests checks that mapping).
         nameof(TrainConfig.Attention)];

    /// <summary>A value of the property's type that differs from its default (and from other keys' values).</summary>
    private static object Changed(PropertyInfo p, object? current, int salt)
    {
        var t = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
        if (t == typeof(int)) return (current is int i ? i : 0) + 3 + salt;
        if (t == typeof(double)) return (current is double d ? d : 0) + 0.125 + salt / 1024.0;
        if (t == typeof(bool)) return !(current is true);
        if (t == typeof(string)) return $"value{salt}";
        if (t.IsEnum) return Enum.GetValues(t).Cast<object>().Last(v => !v.Equals(current));
        if (t == typeof(IReadOnlyList<string>)) return new[] { $"module{salt}" };
        throw new InvalidOperationException($"no changed value for {p.Name} ({t})");
    }

    [Fact]
    public void EveryTrainKeyReachesTheEngineSettingOfItsName()
    {
        var cfg = new TrainConfig();
        var keys = typeof(TrainConfig).GetProperties().Where(p => p.CanWrite && !NotEngineSettings.Contains(p.Name)).ToArray();
        var salt = 0;
        foreach (var p in keys)
            p.SetValue(cfg, Changed(p, p.GetValue(cfg), salt++));

        var setup = TrainStage.Setup(cfg);
        var args = TrainStage.Arguments(cfg, "out");
        var preference = TrainStage.Preference(cfg);
        foreach (var p in keys)
        {
            object? value;
            if (typeof(TrainingSetup).GetProperty(p.Name) is { } s) value = s.GetValue(setup);
            else if (typeof(TrainingArguments).GetProperty(p.Name) is { } a) value = a.GetValue(args);
            else if (typeof(FineTune.Training.Objectives.PreferenceSettings).GetProperty(p.Name) is { } o) value = o.GetValue(preference);
            else { Assert.Fail($"stages.train key {p.Name} reaches no engine setting of that name"); return; }
            Assert.True(JsonSerializer.Serialize(p.GetValue(cfg)) == JsonSerializer.Serialize(value), $"{p.Name}: {JsonSerializer.Serialize(p.GetValue(cfg))} in stages.train, {JsonSerializer.Serialize(value)} in the engine");
        }
        Assert.Equal(["module" + Array.FindIndex(keys, k => k.Name == nameof(TrainConfig.FreezeExtraModules))], setup.FreezeExtraModules);
    }

    [Fact]
    public void UnsetPreferenceKeysTakeLlamaFactorysDefaults()
    {
        var d = TrainStage.Preference(new TrainConfig());
        Assert.Equal((0.1, FineTune.Training.Objectives.PreferenceLoss.Sigmoid, 0.0, 0.0, 0.5, 1.0, 1.0),
            (d.PrefBeta, d.PrefLoss, d.PrefFtx, d.DpoLabelSmoothing, d.SimpoGamma, d.KtoChosenWeight, d.KtoRejectedWeight));
    }

    [Fact]
    public void FinetuningTypeAndSchedulerAreTheEnginesOwnValues()
    {
        Assert.Equal(typeof(FinetuningType), typeof(TrainConfig).GetProperty(nameof(TrainConfig.FinetuningType))!.PropertyType);
        Assert.Equal(typeof(LrSchedulerType), typeof(TrainConfig).GetProperty(nameof(TrainConfig.LrSchedulerType))!.PropertyType);
    }
}
