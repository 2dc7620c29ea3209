using System.Text.Json;
using System.Text.Json.Serialization;

namespace FineTune.Training;

/// <summary>
/// One line of <c>trainer_log.jsonl</c>, with LLaMA-Factory's field names (its LlamaBoard reads
/// them): current_steps, total_steps, loss, eval_loss, lr, epoch, percentage, elapsed_time,
/// remaining_time, plus grad_norm, throughput (trained tokens per second), total_tokens and an objective's metrics
/// under TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, …; eval_… on
/// evaluation lines).
/// Absent values are left out of the line.
/// </summary>
public sealed record TrainerLogEntry(
    [property: JsonPropertyName("current_steps")] int CurrentSteps,
    [property: JsonPropertyName("total_steps")] int TotalSteps,
    [property: JsonPropertyName("loss")] double? Loss,
    [property: JsonPropertyName("eval_loss")] double? EvalLoss,
    [property: JsonPropertyName("lr")] double? LearningRate,
    [property: JsonPropertyName("epoch")] double? Epoch,
    [property: JsonPropertyName("percentage")] double Percentage,
    [property: JsonPropertyName("elapsed_time")] string ElapsedTime,
    [property: JsonPropertyName("remaining_time")] string RemainingTime,
    [property: JsonPropertyName("grad_norm")] double? GradNorm = null,
    [property: JsonPropertyName("throughput")] double? Throughput = null,
    [property: JsonPropertyName("total_tokens")] long? TotalTokens = null)
{
    /// <summary>The objective's metrics, written as top-level keys of the line (TRL's names); null when there are none.</summary>
    [JsonExtensionData] public Dictionary<string, object>? Metrics { get; init; }

    /// <summary>An objective's metrics (rewards/chosen, …) as the log writes them: rounded to 4 places as the loss is; null when there are none.</summary>
    public static Dictionary<string, object>? Rounded(IReadOnlyDictionary<string, double>? metrics) =>
        metrics is null || metrics.Count == 0 ? null : metrics.ToDictionary(kv => kv.Key, kv => (object)Math.Round(kv.Value, 4));

    /// <summary>A metric of the line (written by this run or read back from the file), or null.</summary>
    public double? Metric(string name) => Metrics?.GetValueOrDefault(name) switch
    {
        double d => d,
        JsonElement { ValueKind: JsonValueKind.Number } e => e.GetDouble(),
        _ => null,
    };

    static readonly JsonSerializerOptions Options = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public string ToJson() => JsonSerializer.Serialize(this, Options);

    public static TrainerLogEntry FromJson(string line) =>
        JsonSerializer.Deserialize<TrainerLogEntry>(line, Options)
        ?? throw new FormatException($"trainer_log.jsonl line is not an object: {line}");

    /// <summary>percentage = round(current / total · 100, 2), 100 when total is 0 (LLaMA-Factory's rule).</summary>
    public static double PercentageOf(int current, int total) =>
        total == 0 ? 100 : Math.Round((double)current / total * 100, 2);

    /// <summary>Python's <c>str(timedelta(seconds=int(s)))</c>: "H:MM:SS", or "N day(s), H:MM:SS".</summary>
    public static string FormatDuration(double seconds)
    {
        long s = (long)Math.Max(0, Math.Floor(seconds));
        long days = s / 86400, rest = s % 86400;
        string hms = $"{rest / 3600}:{rest % 3600 / 60:00}:{rest % 60:00}";
        return days == 0 ? hms : $"{days} day{(days == 1 ? "" : "s")}, {hms}";
    }
}

/// <summary>Appends entries to <c>trainer_log.jsonl</c>, one JSON object per line, flushed per line.</summary>
public sealed class TrainerLog
{
    public const string FileName = "trainer_log.jsonl";

    public string Path { get; }

    public TrainerLog(string directory)
    {
        Directory.CreateDirectory(directory);
        Path = System.IO.Path.Combine(directory, FileName);
    }

    public void Append(TrainerLogEntry entry) => File.AppendAllText(Path, entry.ToJson() + "\n");

    public IReadOnlyList<TrainerLogEntry> ReadAll() => Read(Path);

    public static IReadOnlyList<TrainerLogEntry> Read(string path) =>
        File.Exists(path)
            ? File.ReadLines(path).Where(l => l.Length > 0).Select(TrainerLogEntry.FromJson).ToList()
            : [];

    /// <summary>Replaces the log with the given entries (used when resuming: lines past the checkpoint are dropped).</summary>
    public void Reset(IEnumerable<TrainerLogEntry> entries)
    {
        string tmp = Path + ".tmp";
        File.WriteAllLines(tmp, entries.Select(e => e.ToJson()));
        File.Move(tmp, Path, overwrite: true);
    }
}
