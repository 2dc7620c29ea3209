using System.Globalization;
using System.Text.RegularExpressions;

namespace FineTune.Pipeline.Engine;

/// <summary>One entry of <c>stages.eval.require</c>: a metric, a comparison and a bound (<c>eval_loss: "&lt;= 0.2"</c>).</summary>
public sealed partial record EvalGate(string Metric, string Operator, double Bound)
{
    public static IReadOnlyList<string> Operators { get; } = ["<", "<=", ">", ">=", "=="];

    [GeneratedRegex(@"^\s*(<=|>=|==|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")]
    private static partial Regex Syntax();

    /// <summary>Parses "&lt;= 0.2"; false and what is wrong (for a located validation error) otherwise.</summary>
    public static bool TryParse(string metric, string text, out EvalGate? gate, out string? problem)
    {
        gate = null;
        problem = null;
        var m = Syntax().Match(text);
        if (!m.Success || !double.TryParse(m.Groups[2].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var bound) || !double.IsFinite(bound))
        {
            problem = $"'{text}' is not a gate: expected an operator ({string.Join(", ", Operators)}) and a number, such as \"<= 0.2\" or \">= 40\"";
            return false;
        }
        gate = new EvalGate(metric, m.Groups[1].Value, bound);
        return true;
    }

    public static EvalGate Parse(string metric, string text) =>
        TryParse(metric, text, out var gate, out var problem) ? gate! : throw new PipelineUserException($"require.{metric}: {problem}");

    public bool Holds(double value) => Operator switch
    {
        "<" => value < Bound,
        "<=" => value <= Bound,
        ">" => value > Bound,
        ">=" => value >= Bound,
        _ => value == Bound,
    };

    public string Condition => $"{Operator} {Bound.ToString("R", CultureInfo.InvariantCulture)}";
}

/// <summary>A gate checked against the metrics of the stage it belongs to; <see cref="Value"/> is null when the stage reported no such metric.</summary>
public sealed record GateResult(string Stage, EvalGate Gate, double? Value)
{
    public bool Passed => Value is double v && Gate.Holds(v);

    /// <summary>"eval_loss = 0.3412, required <= 0.2 (stages.eval.require.eval_loss)".</summary>
    public string Describe(IEnumerable<string>? reported = null) => Value is double v
        ? $"{Gate.Metric} = {v.ToString("R", CultureInfo.InvariantCulture)}, required {Gate.Condition} (stages.{Stage}.require.{Gate.Metric})"
        : $"{Gate.Metric}: stage {Stage} reports no such metric, required {Gate.Condition} (stages.{Stage}.require.{Gate.Metric})"
            + (reported is null ? "" : $"; it reports {string.Join(", ", reported)}");

    /// <summary>Every gate of an eval stage against its metrics, in the order of the metric names.</summary>
    public static IReadOnlyList<GateResult> Check(string stage, IReadOnlyDictionary<string, string> require, IReadOnlyDictionary<string, double> metrics) =>
        require.OrderBy(r => r.Key, StringComparer.Ordinal)
            .Select(r => new GateResult(stage, EvalGate.Parse(r.Key, r.Value), metrics.TryGetValue(r.Key, out var v) ? v : null))
            .ToArray();
}

/// <summary>
/// An eval gate failed: the metrics are recorded (the stage's output and pipeline.lock stand), the stages after it did
/// not run. Front ends report it as a failed check, not as a user error: exit code 3.
/// </summary>
public sealed class GateFailedException(IReadOnlyList<GateResult> failed, RunReport report)
    : Exception(string.Join(Environment.NewLine, failed.Select(f => $"gate failed: {f.Describe(report.Stages.FirstOrDefault(s => s.Name == f.Stage)?.Metrics?.Keys.Order(StringComparer.Ordinal))}"))
        + Environment.NewLine + "the stages after it did not run; the metrics are in pipeline.lock (`finetune metrics show`).")
{
    public IReadOnlyList<GateResult> Failed { get; } = failed;
    /// <summary>What the run did up to the gate, with every gate's result (<see cref="RunReport.Gates"/>).</summary>
    public RunReport Report { get; } = report;
}
