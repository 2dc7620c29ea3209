using System.Globalization;

namespace FineTune.Training.Tracking;

/// <summary>One of the HF Trainer's <c>log()</c> calls: the step, seconds since training started, and the logged values
/// under the Trainer's names (loss, learning_rate, grad_norm, epoch, eval_loss, train_loss, …).</summary>
public sealed record LoggedValues(int Step, double ElapsedSeconds, IReadOnlyDictionary<string, double> Values);

/// <summary>
/// trainer_log.jsonl (LLaMA-Factory's names) turned back into the HF Trainer's log history, which is what its
/// TensorBoard and MLflow callbacks report: lr → learning_rate, total_tokens → num_input_tokens_seen, an objective's
/// metrics as they are (rewards/chosen; eval_rewards/chosen on evaluation lines); the run's train_loss and
/// train_runtime at the last step, as the Trainer logs them when training ends.
/// </summary>
public static class TrainerLogHistory
{
    public static IReadOnlyList<LoggedValues> From(IReadOnlyList<TrainerLogEntry> log, double trainLoss, double runtimeSeconds)
    {
        var history = new List<LoggedValues>();
        foreach (var e in log)
        {
            var v = new SortedDictionary<string, double>(StringComparer.Ordinal);
            if (e.Loss is double loss) v["loss"] = loss;
            if (e.EvalLoss is double evalLoss) v["eval_loss"] = evalLoss;
            if (e.LearningRate is double lr) v["learning_rate"] = lr;
            if (e.GradNorm is double g) v["grad_norm"] = g;
            if (e.Epoch is double epoch) v["epoch"] = epoch;
            if (e.Throughput is double t) v["throughput"] = t;
            if (e.TotalTokens is long n) v["num_input_tokens_seen"] = n;
            foreach (var key in e.Metrics?.Keys ?? Enumerable.Empty<string>())
                if (e.Metric(key) is double m) v[key] = m;
            history.Add(new LoggedValues(e.CurrentSteps, Seconds(e.ElapsedTime), v));
        }
        int last = log.Count > 0 ? log.Max(e => e.CurrentSteps) : 0;
        history.Add(new LoggedValues(last, runtimeSeconds, new SortedDictionary<string, double>(StringComparer.Ordinal)
        {
            ["train_loss"] = trainLoss,
            ["train_runtime"] = Math.Round(runtimeSeconds, 4),
        }));
        return history;
    }

    /// <summary>
    /// The tag TensorBoard shows for a logged key, as the HF Trainer's <c>rewrite_logs</c> makes it: eval_x → eval/x,
    /// test_x → test/x, anything else → train/x.
    /// </summary>
    public static string TensorBoardTag(string key) =>
        key.StartsWith("eval_", StringComparison.Ordinal) ? "eval/" + key[5..]
        : key.StartsWith("test_", StringComparison.Ordinal) ? "test/" + key[5..]
        : "train/" + key;

    /// <summary>"H:MM:SS" or "N day(s), H:MM:SS" (<see cref="TrainerLogEntry.FormatDuration"/>) back to seconds; 0 if unreadable.</summary>
    public static double Seconds(string elapsed)
    {
        double days = 0;
        var hms = elapsed;
        var comma = elapsed.IndexOf(", ", StringComparison.Ordinal);
        if (comma > 0)
        {
            days = double.TryParse(elapsed[..comma].Split(' ')[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var d) ? d : 0;
            hms = elapsed[(comma + 2)..];
        }
        var parts = hms.Split(':');
        if (parts.Length != 3) return 0;
        double total = days * 86400;
        foreach (var (p, scale) in parts.Zip(new[] { 3600.0, 60.0, 1.0 }))
            total += (double.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var x) ? x : 0) * scale;
        return total;
    }

    /// <summary>Writes the history as a TensorBoard event file, the HF Trainer's tags, wall times counted from <paramref name="startedAt"/>.</summary>
    public static void WriteTensorBoard(string path, IReadOnlyList<LoggedValues> history, DateTimeOffset startedAt)
    {
        double start = startedAt.ToUnixTimeMilliseconds() / 1000.0;
        using var events = new TensorBoardEventFile(path, start);
        foreach (var h in history)
            events.Scalars(h.Step, start + h.ElapsedSeconds, h.Values.Select(kv => KeyValuePair.Create(TensorBoardTag(kv.Key), kv.Value)));
    }
}
