using System.Text;
using FineTune.Models.Tests;
using FineTune.Pipeline.Config;

namespace FineTune.Pipeline.Tests;

/// <summary>
/// A fake executor for engine tests: writes out.txt = its kind, its fingerprinted parameters and the content of its
/// upstream outputs, so any change upstream changes its output bytes. Counts executions in a file (works across processes).
/// </summary>
public sealed class FakeStage(StageKind kind, string counterFile, Func<StageContext, IReadOnlyList<string>>? inputs = null,
    Action<StageContext>? during = null) : IStageExecutor
{
    public StageKind Kind { get; } = kind;

    public IReadOnlyList<string> ExternalInputs(StageContext ctx) => inputs?.Invoke(ctx) ?? [];

    public StageResult Execute(StageContext ctx)
    {
        var sb = new StringBuilder();
        sb.AppendLine(StageGraph.Name(Kind));
        sb.AppendLine(Engine.CanonicalJson.Serialize(ctx.Stage is { } stage
            ? Engine.StageFingerprint.ParametersOf(stage, ctx.Pipeline)
            : Engine.StageFingerprint.ParametersOf(Kind, ctx.Pipeline)));
        foreach (var (up, dir) in ctx.UpstreamOutputs.OrderBy(u => u.Key))
            sb.Append(up).Append(": ").AppendLine(File.ReadAllText(Path.Combine(dir, "out.txt")));
        foreach (var input in ExternalInputs(ctx))
            sb.AppendLine(File.ReadAllText(Path.Combine(ctx.PipelineDirectory, input)));
        File.WriteAllText(Path.Combine(ctx.OutputDirectory, "out.txt"), sb.ToString());
        during?.Invoke(ctx);
        lock (typeof(FakeStage))
            File.AppendAllText(counterFile, (ctx.Stage?.Name ?? StageGraph.Name(Kind)) + "\n");
        return new StageResult(new Dictionary<string, double> { ["bytes"] = sb.Length }, []);
    }

    /// <summary>One fake per stage kind; register reads data/identity.json.</summary>
    public static IReadOnlyList<IStageExecutor> All(string counterFile, Action<StageContext>? trainDuring = null) =>
        StageGraph.Order.Select(k => (IStageExecutor)new FakeStage(k, counterFile,
            k == StageKind.Register ? _ => ["data/identity.json"] : null,
            k == StageKind.Train ? trainDuring : null)).ToArray();

    public static string[] Runs(string counterFile) =>
        File.Exists(counterFile) ? File.ReadAllLines(counterFile) : [];
}

public static class TestPipelines
{
    /// <summary>
    /// The top of every small test pipeline: its name, a 32-wide scratch model and the identity dataset of the directory
    /// <see cref="Write"/> fills (with the placeholders Bot and Team, unless <paramref name="placeholders"/> is false).
    /// </summary>
    public static string Scratch(string name, bool placeholders = true) => $"""
        name: {name}
        model:
          source: scratch
          scratch:
            hidden_size: 32
        data:
          dataset_dir: data
          dataset: [identity]
          template: qwen3

        """ + (placeholders ? "  placeholders: {name: Bot, author: Team}\n" : "");

    public static readonly string Full = Scratch("fake") + """
        stages:
          download: {}
          register: {}
          split:
            val_size: 0.1
          train:
            learning_rate: 0.005
            max_steps: 10
          eval:
            max_new_tokens: 16
          merge:
          export:
            formats: [hf]
        """;

    /// <summary>Writes pipeline.yaml (<see cref="Full"/> unless given) and a small data directory; returns the pipeline file.</summary>
    public static string Write(TempDir dir, string? yaml = null)
    {
        dir.Write("data/dataset_info.json", """{"identity": {"file_name": "identity.json"}}""");
        if (!File.Exists(Path.Combine(dir.Path, "data/identity.json")))
            dir.Write("data/identity.json", """[{"instruction": "hi", "input": "", "output": "I am {{name}}"}]""");
        return dir.Write("pipeline.yaml", yaml ?? Full);
    }
}
