using System.Text;
using FineTune.Pipeline.Engine;
using FineTune.Pipeline.Validation;

namespace FineTune.Cli.Commands;

/// <summary>
/// The markdown `finetune run` appends to <c>$GITHUB_STEP_SUMMARY</c> when a GitHub Actions job sets it: each stage, whether
/// it ran or was reused and why, all its metrics, and the eval gates' results.
/// </summary>
public static class StepSummary
{
    public const string Variable = "GITHUB_STEP_SUMMARY";

    public static string Markdown(LoadedPipeline p, RunReport report)
    {
        var sb = new StringBuilder();
        var failed = report.Gates.Any(g => !g.Passed);
        sb.Append($"### FineTune: {p.Definition.Name}{(failed ? " — gate failed" : "")}\n\n");
        sb.Append(ExperimentTable.Render(["stage", "state", "why", "metrics"], report.Stages.Select(s => (IReadOnlyList<string>)
        [
            s.Name,
            s.State switch
            {
                StageState.Ran => $"ran ({CliSupport.Seconds(s.Seconds)})",
                StageState.UpToDate => "up to date",
                StageState.Stale => "stale",
                StageState.NoExecutor => "no executor",
                _ => "blocked",
            },
            s.Reason,
            string.Join(", ", (s.Metrics ?? new Dictionary<string, double>()).OrderBy(m => m.Key, StringComparer.Ordinal)
                .Select(m => $"{m.Key}={ExperimentTable.Number(m.Value)}")),
        ]).ToList(), markdown: true));
        if (report.Gates.Count > 0)
        {
            sb.Append("\n**Gates**\n\n");
            sb.Append(ExperimentTable.Render(["stage", "metric", "value", "required", "result"], report.Gates.Select(g => (IReadOnlyList<string>)
                [g.Stage, g.Gate.Metric, ExperimentTable.Number(g.Value), g.Gate.Condition, g.Passed ? "pass" : "**FAIL**"]).ToList(), markdown: true));
        }
        return sb.Append('\n').ToString();
    }

    /// <summary>Appends the summary to the file <c>$GITHUB_STEP_SUMMARY</c> names; nothing when it is unset.</summary>
    public static void AppendIfSet(LoadedPipeline p, RunReport report)
    {
        if (Environment.GetEnvironmentVariable(Variable) is not { Length: > 0 } path) return;
        File.AppendAllText(path, Markdown(p, report));
    }
}
