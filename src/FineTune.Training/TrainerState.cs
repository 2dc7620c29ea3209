using System.Text.Json;
using System.Text.Json.Serialization;

namespace FineTune.Training;

/// <summary>
/// Where a run stands, saved as <c>trainer_state.json</c> in every checkpoint: the step, the data
/// position (epoch and the next micro-batch within it), the RNG state and counters, and what the run trains from
/// (<see cref="TrainingArguments.TrainedFrom"/>). Restoring it with the saved weights, optimizer moments and trainer log
/// continues the run exactly.
/// </summary>
public sealed record TrainerState(
    [property: JsonPropertyName("global_step")] int GlobalStep,
    [property: JsonPropertyName("max_steps")] int MaxSteps,
    [property: JsonPropertyName("epoch")] double Epoch,
    [property: JsonPropertyName("data_epoch")] int DataEpoch,
    [property: JsonPropertyName("data_micro_batch")] int DataMicroBatch,
    [property: JsonPropertyName("total_tokens")] long TotalTokens,
    [property: JsonPropertyName("train_loss_sum")] double TrainLossSum,
    [property: JsonPropertyName("random_counter")] long RandomCounter,
    [property: JsonPropertyName("seed")] ulong Seed,
    [property: JsonPropertyName("elapsed_seconds")] double ElapsedSeconds,
    [property: JsonPropertyName("learning_rate")] double LearningRate,
    [property: JsonPropertyName("lr_scheduler")] string LrScheduler,
    [property: JsonPropertyName("warmup_steps")] int WarmupSteps,
    [property: JsonPropertyName("trained_from")] IReadOnlyDictionary<string, string>? TrainedFrom = null)
{
    public const string FileName = "trainer_state.json";

    static readonly JsonSerializerOptions Options = new() { WriteIndented = true };

    public void Save(string directory) =>
        File.WriteAllText(Path.Combine(directory, FileName), JsonSerializer.Serialize(this, Options));

    public static TrainerState Load(string directory)
    {
        string path = Path.Combine(directory, FileName);
        try
        {
            return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), Options)
                ?? throw new TrainingException($"{path} is empty; the checkpoint is damaged — resume from an earlier one.");
        }
        catch (JsonException e)
        {
            throw new TrainingException($"{path} is not valid trainer state JSON ({e.Message}); resume from an earlier checkpoint.", e);
        }
    }
}
